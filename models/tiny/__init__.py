"""Tiny random-weight checkpoints of the real model classes, built offline.

A checkpoint spec `tiny:NAME` in a config means "the locally built tiny NAME checkpoint": it is
built into the cache on first use and then loaded with `from_pretrained`, the same call that
loads a real checkpoint. `trained:NAME` means the demo twin NAME trained on the demo world,
committed under models/trained (`rescue-eval train-demo` retrains them). Anything else is
passed to `from_pretrained` unchanged.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from rescue_eval.core.cache import build_once, cache_root
from rescue_eval.core.errors import UsageError

PREFIX = "tiny:"
TRAINED_PREFIX = "trained:"
TRAINED = ("planner", "executor", "scorer", "judge")
BUILDERS = {  # name -> "module:function", a `function(out_dir: Path) -> None` that writes the checkpoint
    "qwen3-vl": "rescue_eval.models.tiny.qwen3_vl:build",
    "qwen3-vl-moe-thinking": "rescue_eval.models.tiny.qwen3_vl:build_moe_thinking",
    "sam3-tracker": "rescue_eval.models.tiny.sam3_tracker:build",
    "siglip2": "rescue_eval.models.tiny.siglip2:build",
}


def tiny_dir(root: Path | None = None) -> Path:
    return Path(root) if root else cache_root() / "tiny"


def build(name: str, root: Path | None = None, force: bool = False) -> Path:
    if name not in BUILDERS:
        raise ValueError(f"Unknown tiny checkpoint {name!r}; choose one of {sorted(BUILDERS)}.")
    target = tiny_dir(root) / name
    if not target.exists() or force:
        import torch.distributed as dist

        # transformers' save_pretrained writes weights only on rank 0 of an initialised process
        # group: a checkpoint built on another rank would lack them
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            raise RuntimeError(f"tiny checkpoint {name} must be built on rank 0 before other ranks load it.")
    module, function = BUILDERS[name].split(":")
    return build_once(target, getattr(importlib.import_module(module), function), force=force)


def trained_dir() -> Path:
    """Where the trained demo twins are (models/trained, installed as rescue_eval/models/trained)."""
    return Path(__file__).resolve().parent.parent / "trained"


def resolve_checkpoint(spec: str) -> str:
    """A path or hub id for `from_pretrained`; `tiny:NAME` is built on first use."""
    if spec.startswith(PREFIX):
        return str(build(spec[len(PREFIX):]))
    if spec.startswith(TRAINED_PREFIX):
        name = spec[len(TRAINED_PREFIX):]
        if name not in TRAINED:
            raise UsageError(f"Unknown trained demo twin {spec!r}; choose one of "
                             f"{[TRAINED_PREFIX + n for n in TRAINED]}.")
        folder = trained_dir() / name
        if not (folder / "config.json").is_file():
            raise UsageError(f"the demo twin {spec} is missing from {folder}: run `rescue-eval train-demo` to train it.")
        return str(folder)
    return spec
