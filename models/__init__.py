"""Role backends. Each is one class behind a protocol of `models/protocols.py`; the model
library it needs is imported only when that backend is built."""
from __future__ import annotations

import importlib
import inspect
from dataclasses import asdict

from rescue_eval.errors import UsageError

ADAPTERS = {  # (role, backend) -> "module:Class"
    ("planner", "transformers"): "models.qwen3_vl:Qwen3VLPlanner",
    ("judge", "transformers"): "models.qwen3_vl:Qwen3VLJudge",
    ("executor", "transformers"): "models.sam3_tracker:Sam3TrackerSegmenter",
    ("scorer", "transformers"): "models.siglip2:Siglip2Scorer",
    ("planner", "vllm"): "models.vllm_backend:VLLMPlanner",
    ("judge", "vllm"): "models.vllm_backend:VLLMJudge",
    ("planner", "openai"): "models.openai_api:OpenAIPlanner",
    ("judge", "openai"): "models.openai_api:OpenAIJudge",
    ("executor", "http"): "models.http_roles:HttpSegmenter",
    ("scorer", "http"): "models.http_roles:HttpScorer",
    ("executor", "sam3"): "models.sam3_package:Sam3PackageSegmenter",
    ("executor", "grabcut"): "models.grabcut:GrabCutSegmenter",
    ("planner", "gt_box"): "models.gt_box:GroundTruthBoxPlanner",
}
HARNESS_KEYS = {"backend", "max_n", "dedup_iou"}  # config keys the harness uses, not the backend


def check_device(role: str, device: str) -> None:
    """Fail early, in one sentence, when a role is placed on a device that is not there."""
    if not device.startswith("cuda"):
        return
    import torch

    index = int(device.split(":")[1]) if ":" in device else 0
    visible = torch.cuda.device_count()
    if index >= visible:
        raise UsageError(f"{role}.device is {device!r} but {visible} CUDA device(s) are visible; "
                         f"set --{role}.device cpu or a device below cuda:{visible}.")


def build_role(role: str, cfg) -> object:
    key = (role, cfg.backend)
    if key not in ADAPTERS:
        choices = sorted(b for r, b in ADAPTERS if r == role)
        raise UsageError(f"{role}.backend {cfg.backend!r} is not available; choose one of {choices}.")
    check_device(role, cfg.device)
    module, name = ADAPTERS[key].split(":")
    cls = getattr(importlib.import_module(module), name)
    accepted = inspect.signature(cls).parameters
    # keys an adapter does not take (e.g. the role server's max_batch) are the harness's
    kwargs = {k: v for k, v in asdict(cfg).items() if k not in HARNESS_KEYS and k in accepted}
    try:
        return cls(**kwargs)
    except OSError as exc:  # from_pretrained: not a folder, not in the Hugging Face cache
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{role}.checkpoint {cfg.checkpoint!r} could not be loaded ({first_line}); "
                         f"point --{role}.checkpoint at a local checkpoint folder, or download it on a "
                         f"machine with hub access.") from exc
