"""The typed sections of a run's configuration that belong to the app: the dataset, the four
roles and the run. (The verifier's, placement's, distribution's and W&B's sections live with the
layer that uses them.) Each docstring's Attributes are the keys' descriptions in `--help`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from rescue_eval.datamodules import DATASETS
from rescue_eval.models import BACKENDS

# the choices of each `backend` key are the registered backends of its role
PlannerBackend = Literal[BACKENDS["planner"].names()]
ExecutorBackend = Literal[BACKENDS["executor"].names()]
ScorerBackend = Literal[BACKENDS["scorer"].names()]
JudgeBackend = Literal[BACKENDS["judge"].names()]


@dataclass
class DataConfig:
    """Dataset: which split of which benchmark to evaluate.

    Attributes:
        name: the dataset (datamodules/__init__.py registers them)
        root: the dataset folder (LISA's ReasonSeg layout, a parquet file or folder, or the folder holding refer_seg/)
        split: the split, e.g. val, test, testA
        fraction: evaluate a deterministic random subset of this share of the split
        fraction_seed: the seed of that subset
        limit: only the first N samples, in dataset order (after fraction); resume-free
        split_by: refer datasets' partition: unc (refcoco, refcoco+), umd (default) or google (refcocog)
    """

    name: Literal[DATASETS.names()] = "demo"
    root: Optional[str] = None
    split: str = "val"
    fraction: float = 1.0
    fraction_seed: int = 0
    limit: Optional[int] = None
    split_by: Optional[str] = None


@dataclass
class RoleConfig:
    """A role's backend and where it runs.

    Attributes:
        backend: the implementation (models/__init__.py registers them)
        checkpoint: hub id, local checkpoint folder, or tiny:NAME (a random-weight twin built offline)
        device: cpu, cuda:K, or cuda (this rank's own GPU, cuda:LOCAL_RANK)
        dtype: the weights' dtype
        max_batch: the most requests the role server batches into one model call
        url: remote backends (openai, http): the server; unset, the original RESCue variable or default
        max_concurrency: remote backends: requests in flight to the server
        timeout_s: remote backends: seconds one request may take
        retries: remote backends: retries after a timeout, a refused connection, HTTP 429 or 5xx (backoff with jitter)
    """

    backend: str = "transformers"
    checkpoint: str = ""
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_batch: int = 16
    url: Optional[str] = None
    max_concurrency: int = 8
    timeout_s: float = 120.0
    retries: int = 3


@dataclass
class VLMConfig(RoleConfig):
    """A vision-language model role.

    Attributes:
        max_new_tokens: the longest answer generated
        structured_output: the JSON schema enforced by the backend where it can
        tensor_parallel_size: vllm: one engine over this many GPUs of the hosting rank
        gpu_memory_utilization: vllm: the share of GPU memory the engine takes
        max_model_len: vllm: context length (the original RESCue served with 32768)
        extra_body: openai: the server's own request fields, e.g. {"top_k": -1} for vLLM
        device_map: transformers: "auto" spreads a model too big for one GPU over the visible ones
    """

    max_new_tokens: int = 40
    structured_output: bool = True
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    max_model_len: int = 32768
    extra_body: Optional[dict] = None
    device_map: Optional[str] = None


@dataclass
class PlannerConfig(VLMConfig):
    """Planner: the VLM that proposes N box hypotheses per sample.

    Attributes:
        max_n: hypotheses per sample; the sweep reports N = 1, 2, 4, ..., max_n (RESCue's --max_n)
        temperatures: sampling temperatures, crossed with the strategies
        strategies: prompting strategies (models/prompts.py); unset, every one
        dedup_iou: a box with a higher IoU than this with an earlier one is a duplicate (it keeps its vote)
        gt_jitter: gt_box backend: box corners moved by up to this share of the box size
        max_pixels: images larger than this are scaled down before planning (original: 1024 px)
        share_prefix: transformers: the image and query prefilled once per sample and the N strategy suffixes decoded from that cache (false: whole prompts, the image N times)
    """

    backend: PlannerBackend = "transformers"
    checkpoint: str = "tiny:qwen3-vl"
    max_n: int = 8
    temperatures: list[float] = field(default_factory=lambda: [0.3, 0.7, 1.0])
    strategies: Optional[list[str]] = None
    dedup_iou: float = 0.9
    gt_jitter: float = 0.1
    max_pixels: int = 1024 * 1024
    share_prefix: bool = True


@dataclass
class ExecutorConfig(RoleConfig):
    """Executor: SAM 3, which segments each box."""

    backend: ExecutorBackend = "transformers"
    checkpoint: str = "tiny:sam3-tracker"


@dataclass
class ScorerConfig(RoleConfig):
    """Scorer: SigLIP2, which scores each masked candidate against the query."""

    backend: ScorerBackend = "transformers"
    checkpoint: str = "tiny:siglip2"
    max_batch: int = 32


@dataclass
class JudgeConfig(VLMConfig):
    """Judge: the VLM that rates candidates and picks the better of two (comparative mode).

    Attributes:
        max_pixels: the judge's overlays are scaled down to this (original: 768 px)
    """

    backend: JudgeBackend = "transformers"
    checkpoint: str = "tiny:qwen3-vl"
    max_new_tokens: int = 16
    max_pixels: int = 768 * 768


@dataclass
class RunConfig:
    """How the job runs.

    Attributes:
        seed: the seed of every sample's hypotheses and duels
        parallel_requests: samples in flight on each rank; their role calls are micro-batched (RESCue's --parallel_requests)
        max_wait_ms: how long a role server waits to fill a batch
        overlays: overlay pictures in the report: the worst, middle and best samples by IoU
        progress: a progress bar on rank 0
        force: resume into an output directory made with a different config
        strict: stop at the first bad input sample instead of scoring it as a failure
        retry_failed: failed samples a rerun evaluates again, the old records kept in results/attempts.jsonl: transient (a service down, a timeout, out of memory), all, or none
        transient_stop_share: stop the job when one transient reason fails more than this share of a rank's first samples
        transient_stop_window: how many first samples of a rank that share is counted over
    """

    seed: int = 0
    parallel_requests: int = 4
    max_wait_ms: float = 5.0
    overlays: int = 8
    progress: bool = True
    force: bool = False
    strict: bool = False
    retry_failed: Literal["transient", "all", "none"] = "transient"
    transient_stop_share: float = 0.2
    transient_stop_window: int = 50
