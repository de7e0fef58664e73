"""Typed run configuration: YAML files plus dotted command-line overrides (jsonargparse).

`rescue-eval run --config configs/demo.yaml --planner.max_n 16` loads the file, applies the
override and validates every key and type; an unknown or mistyped key is an error that names
it. The options of the original RESCue scripts (`--fraction`, `--parallel_requests`, `--mode`,
`--max_n`) are kept as aliases of their dotted keys.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, Optional

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from rescue_eval.core.errors import UsageError
from rescue_eval.core.protocols import ROLE_NAMES
from rescue_eval.core.selection import VerifierSettings, strategy
from rescue_eval.datamodules import DATASETS, SPLIT_BY
from rescue_eval.dist.placement import PlacementConfig
from rescue_eval.dist.transport import DistConfig
from rescue_eval.io.tracking import WandbConfig
from rescue_eval.models import BACKENDS, adapter_kwargs


def shipped_config(name: str) -> Path:
    """A config shipped with the package (the repository's configs/, installed as package data)."""
    return Path(str(resources.files("rescue_eval.configs") / name))


DEMO_CONFIG = shipped_config("demo.yaml")


# the choices of each `backend` key are the registered backends of its role
PlannerBackend = Literal[BACKENDS["planner"].names()]
ExecutorBackend = Literal[BACKENDS["executor"].names()]
ScorerBackend = Literal[BACKENDS["scorer"].names()]
JudgeBackend = Literal[BACKENDS["judge"].names()]

LEGACY_FLAGS = {  # original RESCue option -> dotted key
    "--fraction": "--data.fraction",
    "--parallel_requests": "--run.parallel_requests",
    "--mode": "--verifier.mode",
    "--max_n": "--planner.max_n",
    "--limit": "--data.limit",  # lmms-eval's and VLMEvalKit's name
}

# Keys that change how a run goes but not its results: a resumed run may change them freely
# (placement included: results do not depend on the world size or the layout).
RESUME_FREE_KEYS = {"run.force", "run.progress", "run.overlays", "run.parallel_requests", "run.max_wait_ms",
                    "run.strict", "data.limit", "run.retry_failed", "run.transient_stop_share",
                    "run.transient_stop_window"}
RESUME_FREE_SECTIONS = {"placement", "dist", "wandb"}


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
    """

    backend: PlannerBackend = "transformers"
    checkpoint: str = "tiny:qwen3-vl"
    max_n: int = 8
    temperatures: list[float] = field(default_factory=lambda: [0.3, 0.7, 1.0])
    strategies: Optional[list[str]] = None
    dedup_iou: float = 0.9
    gt_jitter: float = 0.1
    max_pixels: int = 1024 * 1024


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
        overlays: overlay pictures in the report
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


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    verifier: VerifierSettings = field(default_factory=VerifierSettings)
    run: RunConfig = field(default_factory=RunConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def parser(prog: str = "rescue-eval run") -> ArgumentParser:
    aliases = ", ".join(f"{old} (= {new})" for old, new in LEGACY_FLAGS.items())
    p = ArgumentParser(prog=prog, exit_on_error=False, usage=f"{prog} --output OUT [--config FILE] [--SECTION.KEY VALUE ...]",
                       description="Evaluate a reasoning-segmentation benchmark with the RESCue search. Every key "
                                   "below can be set in a --config YAML file or on the command line; later ones win.",
                       epilog=f"Short forms (the original RESCue options, and lmms-eval's --limit): {aliases}.")
    p.add_argument("--config", action=ActionConfigFile,
                   help="YAML run configuration; without one, the defaults are configs/demo.yaml")
    p.add_argument("--output", required=True, help="output directory (an existing one is resumed)")
    if prog == "rescue-eval run":
        p.add_argument("--suite", help="a suite file (configs/suite_lisa.yaml): evaluate each of its splits into "
                                       "OUTPUT/<dataset>-<split>/ with the models loaded once")
    p.add_class_arguments(Config, None)
    return p


def expand_legacy_flags(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        out.append(LEGACY_FLAGS.get(name, name) + eq + value if name in LEGACY_FLAGS else arg)
    return out


def parse(argv: list[str]) -> tuple[Config, Path]:
    """Config and output directory from command-line arguments; raises UsageError naming the
    bad key or value."""
    p = parser()
    try:
        ns = p.parse_args(expand_legacy_flags(argv))
    except Exception as exc:  # jsonargparse raises ArgumentError with the key in its message
        raise UsageError(f"Invalid configuration: {exc}".strip()) from None
    init = p.instantiate(ns)
    cfg = Config(**{k: getattr(init, k) for k in Config.__dataclass_fields__})
    validate(cfg)
    return cfg, Path(ns.output)


def tiny_roles_note(cfg: Config) -> str | None:
    """The sentence a run with tiny random-weight checkpoints says, at start and end."""
    tiny = [r for r in ROLE_NAMES if getattr(cfg, r).checkpoint.startswith("tiny:") and r in needed_roles(cfg)]
    return (f"{', '.join(tiny)} use tiny random-weight checkpoints: the scores test the harness, not a model."
            if tiny else None)


def needed_roles(cfg: Config) -> list[str]:
    """The roles this config's job builds: the judge only when the selection strategy uses it."""
    uses_judge = strategy(cfg.verifier).uses_judge
    return [r for r in ROLE_NAMES if r != "judge" or uses_judge]


def role_sections(cfg: Config) -> dict:
    """role -> its config section, for the roles the job builds."""
    return {role: getattr(cfg, role) for role in needed_roles(cfg)}


def validate(cfg: Config) -> None:
    """Checks that need more than one key or a range: one sentence each, naming the fix."""
    for role, section in role_sections(cfg).items():
        adapter_kwargs(role, section)  # a key the chosen backend does not take is an error
    if not 0 < cfg.data.fraction <= 1:
        raise UsageError(f"data.fraction is {cfg.data.fraction}; give a share in (0, 1], e.g. --fraction 0.1.")
    if cfg.data.limit is not None and cfg.data.limit < 1:
        raise UsageError(f"data.limit is {cfg.data.limit}; give at least 1 sample, or leave it out for the whole split.")
    if cfg.planner.max_n < 1:
        raise UsageError(f"planner.max_n is {cfg.planner.max_n}; give at least 1 hypothesis per sample.")
    if cfg.run.parallel_requests < 1:
        raise UsageError("run.parallel_requests must be at least 1.")
    if cfg.data.split_by and cfg.data.split_by not in SPLIT_BY.get(cfg.data.name, ()):
        raise UsageError(f"data.split_by {cfg.data.split_by!r} does not apply to {cfg.data.name}; "
                         + (f"use one of {list(SPLIT_BY[cfg.data.name])}." if cfg.data.name in SPLIT_BY
                            else "leave it out (only the refcoco datasets have one)."))
    if cfg.data.name != "demo" and not cfg.data.root:
        raise UsageError(f"data.name is {cfg.data.name!r} but data.root is empty; pass --data.root PATH.")
    w = cfg.verifier
    if min(w.weight_vlm, w.weight_siglip, w.weight_agreement) < 0:
        raise UsageError("verifier weights must be non-negative.")
    if not cfg.planner.temperatures or min(cfg.planner.temperatures) <= 0:
        raise UsageError("planner.temperatures must be a non-empty list of positive numbers.")


def to_dict(cfg: Config) -> dict:
    return asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def load_yaml(path: Path) -> Config:
    """A resolved config written by a run (OUT/config.yaml)."""
    cfg, _ = parse(["--config", str(path), "--output", "unused"])
    return cfg


def result_hash(cfg: Config) -> str:
    """12 hex digits naming the result-affecting part of a config: every record carries the hash
    of the config that made it, so a directory resumed with --run.force shows what it mixes."""
    def affecting(d: dict, prefix: str = "") -> dict:
        return {k: affecting(v, f"{prefix}{k}.") if isinstance(v, dict) else v for k, v in d.items()
                if f"{prefix}{k}" not in RESUME_FREE_KEYS and (prefix or k not in RESUME_FREE_SECTIONS)}
    return hashlib.sha256(json.dumps(affecting(to_dict(cfg)), sort_keys=True).encode()).hexdigest()[:12]


def result_affecting_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, ignoring RESUME_FREE_KEYS."""
    diffs = []
    for key in sorted(set(a) | set(b)):
        dotted = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += result_affecting_diff(va, vb, dotted + ".")
        elif va != vb and dotted not in RESUME_FREE_KEYS and dotted.split(".")[0] not in RESUME_FREE_SECTIONS:
            diffs.append(dotted)
    return diffs
