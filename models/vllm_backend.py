"""Planner and judge on vLLM's offline engine (`vllm.LLM`), in this process, on CUDA GPUs.

They ask exactly what the transformers backend asks (models/vlm_requests.py, models/prompts.py)
and parse answers the same way; only generation differs. Everything that does not need vLLM
(chat messages and sampling settings of a batch) is plain functions, tested without it.

Checked against the vLLM 0.33.0 wheel's sources (entrypoints/llm.py, sampling_params.py,
renderers/chat_utils/chat_message.py, engine/arg_utils.py, v1/worker/gpu_worker.py):
- `LLM(model, dtype=, tensor_parallel_size=, gpu_memory_utilization=, enable_prefix_caching=,
  limit_mm_per_prompt=, device_ids=)`; `LLM.chat(conversations, sampling_params=[one per
  conversation], use_tqdm=False)` returns one RequestOutput per conversation, in order.
- An image goes in a chat message as `{"type": "image_pil", "image_pil": PIL.Image}`.
- `SamplingParams(temperature=, seed=, max_tokens=, structured_outputs=
  StructuredOutputsParams(json=schema, disable_any_whitespace=True))`; temperature 0 is greedy.
  The old `guided_decoding` / `guided_json` arguments are gone. Explicit SamplingParams are not
  merged with the checkpoint's generation_config (only `LLM.get_default_sampling_params` is), so
  a hypothesis is plain temperature sampling over the whole vocabulary, as in the transformers
  backend, seeded per request.
- A Thinking checkpoint (its chat template opens <think>) gets `reasoning_parser="qwen3"`, an
  EngineArgs field (StructuredOutputsConfig.reasoning_parser): structured output then applies
  only after </think>. Offline outputs keep the reasoning in `.text` (no separate field), so the
  answer is parsed after </think>, and text without it is reasoning cut short: unusable.
- Token counts: `len(output.prompt_token_ids)` (image tokens included) and
  `len(output.outputs[0].token_ids)`.
- GPU placement: `device_ids` (vllm-project/vllm PR #45026; in 0.33.0) picks the engine's GPUs
  as indices into the visible ones, without touching CUDA_VISIBLE_DEVICES. `device: cuda:K` with
  `tensor_parallel_size: T` uses GPUs K..K+T-1. A vLLM without `device_ids` can only use
  GPUs 0..T-1 of the visible ones.
- The engine runs in its own process (vLLM's default, VLLM_ENABLE_V1_MULTIPROCESSING=1), so it
  builds its own process group beside the harness's torch.distributed one. vLLM's default start
  method for its workers is fork unless CUDA is initialised, and a forked worker inherits the
  harness's initialised process group: VLLM_WORKER_MULTIPROC_METHOD=spawn is set unless given. With
  VLLM_ENABLE_V1_MULTIPROCESSING=0 under torchrun it would join the rank's group and fail its
  world-size check; that combination is refused.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Sequence

from PIL import Image

from rescue_eval.models.parsing import parse_rating, parse_verdict
from rescue_eval.models.prompts import DUEL_SCHEMA, PLAN_SCHEMA, RATE_SCHEMA, plan_messages
from rescue_eval.models.loading import QWEN3_VL_MODEL_TYPES, opens_thinking
from rescue_eval.models.qwen3_vl import Generation
from rescue_eval.models.tiny import resolve_checkpoint
from rescue_eval.models.vlm_requests import (JUDGE_MAX_PIXELS, PLANNER_MAX_PIXELS, PlanRow, check_plan_settings,
                                             duel_request, fill_image_parts, fit_image, plan_rows, rate_request,
                                             to_hypothesis)
from rescue_eval.core.errors import UsageError
from rescue_eval.core.types import DuelItem, Hypothesis, JudgeAnswer, PlanItem, RateItem

log = logging.getLogger(__name__)

Request = tuple[list[dict], dict]  # chat messages with their images, SamplingParams keyword arguments

REASONING_PARSER = "qwen3"  # vLLM's parser for Qwen3 / Qwen3-VL Thinking checkpoints
MAX_MODEL_LEN = 32768  # the original RESCue served its models with --max-model-len 32768
MAX_IMAGES_PER_PROMPT = 2  # a duel shows two; vLLM reserves memory for this many, and no video


def with_images(messages: list[dict], images: list[Image.Image]) -> list[dict]:
    return fill_image_parts(messages, [{"type": "image_pil", "image_pil": image} for image in images])


def sampling_kwargs(temperature: float, seed: int | None, max_tokens: int, schema: dict | None) -> dict:
    kwargs = {"temperature": temperature, "seed": seed, "max_tokens": max_tokens}
    if schema is not None:
        # compact JSON, as the transformers backend's grammar: no tokens spent on whitespace
        kwargs["structured_outputs"] = {"json": schema, "disable_any_whitespace": True}
    return kwargs


def plan_requests(batch: list[PlanItem], strategies: list[str], temperatures: list[float], max_tokens: int,
                  structured: bool, max_pixels: int = PLANNER_MAX_PIXELS) -> list[tuple[PlanRow, Request]]:
    """One request per hypothesis, in plan_rows order, each with its own temperature and seed."""
    schema = PLAN_SCHEMA if structured else None
    images = [fit_image(item.image, max_pixels) for item in batch]  # once per item
    return [(row, (with_images(plan_messages(batch[row.item].query, row.strategy), [images[row.item]]),
                   sampling_kwargs(row.temperature, row.seed, max_tokens, schema)))
            for row in plan_rows(batch, strategies, temperatures)]


def judge_requests(asked: list[tuple[list[dict], list[Image.Image]]], schema: dict, max_tokens: int,
                   structured: bool) -> list[Request]:
    """`asked`: rate_request / duel_request results. Greedy, so a judge's answer is deterministic."""
    kwargs = sampling_kwargs(0.0, None, max_tokens, schema if structured else None)
    return [(with_images(messages, images), kwargs) for messages, images in asked]


def require_cuda(role: str, backend: str, device: str, count: int = 1) -> list[int]:
    """The indices of the `count` visible GPUs from `device` (cuda or cuda:K) on, or a UsageError."""
    import torch

    if not device.startswith("cuda"):
        raise UsageError(f"{role}.backend {backend} runs on CUDA GPUs but {role}.device is {device!r}; set "
                         f"--{role}.device cuda:K, or use --{role}.backend transformers on the CPU.")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible == 0:
        raise UsageError(f"{role}.backend {backend} needs a CUDA GPU and none is visible; "
                         f"use --{role}.backend transformers --{role}.device cpu on this machine.")
    first = int(device.split(":")[1]) if ":" in device else 0
    if first + count > visible:
        raise UsageError(f"{role} needs {count} GPU(s) from {device} on but {visible} are visible; "
                         f"lower {role}.tensor_parallel_size or pick a lower {role}.device.")
    return list(range(first, first + count))


def to_sampling_params(kwargs: dict):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    if "structured_outputs" in kwargs:
        kwargs = {**kwargs, "structured_outputs": StructuredOutputsParams(**kwargs["structured_outputs"])}
    return SamplingParams(**kwargs)


def thinking_checkpoint(path: str) -> bool:
    """Whether the checkpoint's chat template opens <think>, read with transformers' tokenizer
    from the local folder or cache only (`rescue-eval download` puts it there). A checkpoint not
    there yet is taken as not thinking, with a warning: vLLM may still fetch it itself."""
    from transformers import AutoTokenizer

    try:
        return opens_thinking(AutoTokenizer.from_pretrained(path, local_files_only=True))
    except (OSError, ValueError) as exc:
        log.warning("%s: its chat template could not be read locally (%s); a Thinking checkpoint would get no "
                    "reasoning parser: run `rescue-eval download` first", path, type(exc).__name__)
        return False


class VLLMEngine:
    """One vLLM engine; a planner and a judge on the same checkpoint and GPUs share it."""

    def __init__(self, role: str, path: str, gpus: list[int], dtype: str, gpu_memory_utilization: float,
                 max_model_len: int):
        import vllm

        placement = {}
        if gpus[0] != 0:  # vLLM's default is the first tensor_parallel_size visible GPUs
            if not hasattr(vllm.EngineArgs, "device_ids"):
                raise UsageError(f"vllm {vllm.__version__} cannot run on GPUs {gpus} (no device_ids option); "
                                 f"upgrade vllm (0.33.0 has it), or expose those GPUs first with "
                                 f"CUDA_VISIBLE_DEVICES and set --{role}.device cuda:0.")
            placement["device_ids"] = gpus
        self.settings = (len(gpus), gpu_memory_utilization, max_model_len)
        # Engines are built after the harness's gloo group (and RPC) are up: a worker forked now
        # would inherit that initialised torch.distributed state and skip or hang in its own
        # group set-up, so vLLM's workers are spawned (a user's own choice is kept).
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        self.thinking = thinking_checkpoint(path)
        if self.thinking and hasattr(vllm.EngineArgs, "reasoning_parser"):
            # structured output then starts after </think>, so a Thinking judge keeps its answers constrained
            placement["reasoning_parser"] = REASONING_PARSER
        self.llm = vllm.LLM(model=path, dtype=dtype, tensor_parallel_size=len(gpus),
                            gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True,
                            max_model_len=max_model_len,
                            limit_mm_per_prompt={"image": MAX_IMAGES_PER_PROMPT, "video": 0}, **placement)
        # LLM.chat drives the engine from the calling thread: one call at a time, even when the
        # planner and the judge sharing it are served from different threads.
        self.lock = threading.Lock()

    def generate(self, requests: list[Request]) -> list[Generation]:
        params = [to_sampling_params(kwargs) for _, kwargs in requests]
        with self.lock:
            outputs = self.llm.chat([messages for messages, _ in requests], params, use_tqdm=False)
        return [Generation(out.outputs[0].text, len(out.prompt_token_ids), len(out.outputs[0].token_ids))
                for out in outputs]


_ENGINES: dict[tuple[str, tuple[int, ...], str], VLLMEngine] = {}
_ENGINES_LOCK = threading.Lock()


def load_shared_engine(role: str, checkpoint: str, device: str, dtype: str, tensor_parallel_size: int,
                       gpu_memory_utilization: float, max_model_len: int = MAX_MODEL_LEN) -> VLLMEngine:
    """The engine for (checkpoint, GPUs, dtype), started on first request only."""
    gpus = require_cuda(role, "vllm", device, tensor_parallel_size)
    try:
        import vllm  # noqa: F401  (fail here, in one sentence, before a checkpoint is built)
    except ImportError as exc:
        raise UsageError(f"{role}.backend vllm needs the vllm package, which is not installed; run "
                         f"pip install 'rescue-eval[vllm]' (it pins its own torch and transformers, so "
                         f"best in its own virtual environment).") from exc
    import torch

    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0" and torch.distributed.is_initialized():
        raise UsageError("VLLM_ENABLE_V1_MULTIPROCESSING=0 puts the vLLM engine into this rank's "
                         "torch.distributed group, which it refuses; unset it.")
    with _ENGINES_LOCK:
        key = (resolve_checkpoint(checkpoint), tuple(gpus), dtype)
        if key not in _ENGINES:
            _ENGINES[key] = VLLMEngine(role, key[0], gpus, dtype, gpu_memory_utilization, max_model_len)
        engine = _ENGINES[key]
    if engine.settings != (tensor_parallel_size, gpu_memory_utilization, max_model_len):
        raise UsageError(f"{role} shares one vLLM engine with another role on {checkpoint} and {device}, "
                         f"started with tensor_parallel_size, gpu_memory_utilization, max_model_len = "
                         f"{engine.settings}; "
                         f"give both roles the same values.")
    return engine


class VLLMPlanner:
    """Planner: item.n box hypotheses per item, all of a batch in one LLM.chat call (vLLM batches
    them itself, and prefix caching shares each image's prompt prefix between its hypotheses)."""

    model_types = QWEN3_VL_MODEL_TYPES  # config.json model_type of the checkpoints it loads

    def __init__(self, checkpoint: str, device: str = "cuda", dtype: str = "bfloat16", max_new_tokens: int = 64,
                 structured_output: bool = True, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, strategies: Sequence[str] | None = None,
                 temperatures: Sequence[float] = (0.3, 0.7, 1.0), max_pixels: int = PLANNER_MAX_PIXELS,
                 max_model_len: int = MAX_MODEL_LEN):
        self.strategies, self.temperatures = check_plan_settings(strategies, temperatures)
        self.engine = load_shared_engine("planner", checkpoint, device, dtype, tensor_parallel_size,
                                         gpu_memory_utilization, max_model_len)
        self.max_pixels = max_pixels
        self.max_new_tokens = max_new_tokens
        self.structured_output = structured_output

    def propose(self, batch: list[PlanItem]) -> list[list[Hypothesis]]:
        planned = plan_requests(batch, self.strategies, self.temperatures, self.max_new_tokens,
                                self.structured_output, self.max_pixels)
        generations = self.engine.generate([request for _, request in planned])
        results: list[list[Hypothesis]] = [[] for _ in batch]
        for (row, _), g in zip(planned, generations):
            results[row.item].append(to_hypothesis(row, batch[row.item].image, g.text, g.tokens_in, g.tokens_out))
        return results


class VLLMJudge:
    """Judge: greedy answers about masks drawn in red on the image."""

    model_types = QWEN3_VL_MODEL_TYPES  # config.json model_type of the checkpoints it loads

    def __init__(self, checkpoint: str, device: str = "cuda", dtype: str = "bfloat16", max_new_tokens: int = 16,
                 structured_output: bool = True, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, max_pixels: int = JUDGE_MAX_PIXELS,
                 max_model_len: int = MAX_MODEL_LEN):
        self.engine = load_shared_engine("judge", checkpoint, device, dtype, tensor_parallel_size,
                                         gpu_memory_utilization, max_model_len)
        self.max_pixels = max_pixels
        self.max_new_tokens = max_new_tokens
        self.structured_output = structured_output

    def rate(self, batch: list[RateItem]) -> list[JudgeAnswer]:
        return self._ask([rate_request(item, self.max_pixels) for item in batch], RATE_SCHEMA, parse_rating)

    def duel(self, batch: list[DuelItem]) -> list[JudgeAnswer]:
        return self._ask([duel_request(item, self.max_pixels) for item in batch], DUEL_SCHEMA, parse_verdict)

    def _ask(self, asked, schema, parse) -> list[JudgeAnswer]:
        requests = judge_requests(asked, schema, self.max_new_tokens, self.structured_output)
        return [JudgeAnswer(parse(g.text, thinking=self.engine.thinking), g.text, g.tokens_in, g.tokens_out)
                for g in self.engine.generate(requests)]
