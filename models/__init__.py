"""Role backends (installed as `rescue_eval.models`). Each is one class behind a role protocol of
`rescue_eval.core.protocols`, registered below under its role and backend name; the model library
it needs is imported only when that backend is built.

An adapter declares its configuration keys by its constructor's parameters: a key of the role's
section that the chosen backend does not take, set to anything but its default, is an error
that names it (never dropped silently); `checkpoint` and `dtype`, which every role's section
has, get a warning instead.

Adding a backend: one module with the class, and one `register` line here.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging

from rescue_eval.core.errors import UsageError
from rescue_eval.core.protocols import ROLE_NAMES
from rescue_eval.core.registry import Registry

log = logging.getLogger("rescue_eval")

BACKENDS = {role: Registry(f"{role} backend", f"{role}.backend") for role in ROLE_NAMES}
BACKENDS["planner"].register("transformers", "rescue_eval.models.qwen3_vl:Qwen3VLPlanner")
BACKENDS["planner"].register("vllm", "rescue_eval.models.vllm_backend:VLLMPlanner")
BACKENDS["planner"].register("openai", "rescue_eval.models.openai_api:OpenAIPlanner")
BACKENDS["planner"].register("gt_box", "rescue_eval.models.gt_box:GroundTruthBoxPlanner")
BACKENDS["executor"].register("transformers", "rescue_eval.models.sam3_tracker:Sam3TrackerSegmenter")
BACKENDS["executor"].register("sam3", "rescue_eval.models.sam3_package:Sam3PackageSegmenter")
BACKENDS["executor"].register("grabcut", "rescue_eval.models.grabcut:GrabCutSegmenter")
BACKENDS["executor"].register("http", "rescue_eval.models.http_roles:HttpSegmenter")
BACKENDS["scorer"].register("transformers", "rescue_eval.models.siglip2:Siglip2Scorer")
BACKENDS["scorer"].register("http", "rescue_eval.models.http_roles:HttpScorer")
BACKENDS["judge"].register("transformers", "rescue_eval.models.qwen3_vl:Qwen3VLJudge")
BACKENDS["judge"].register("vllm", "rescue_eval.models.vllm_backend:VLLMJudge")
BACKENDS["judge"].register("openai", "rescue_eval.models.openai_api:OpenAIJudge")

# keys of a role's section that the harness uses itself, whatever the backend
HARNESS_KEYS = {"backend", "device", "max_batch", "max_n", "dedup_iou"}
# keys every role has: a config file names them for its backend, and switching the backend on the
# command line (to gt_box, grabcut, a remote server) should not mean editing the file, so a backend
# that does not take one says so in a warning instead of refusing
ROLE_KEYS = {"checkpoint", "dtype"}


def adapter_keys(role: str, backend: str) -> set[str]:
    """The configuration keys the backend's adapter takes (its constructor's parameters)."""
    return set(inspect.signature(BACKENDS[role].get(backend)).parameters)


def adapter_kwargs(role: str, section) -> dict:
    """The section's keys for the chosen backend's adapter. A key the adapter does not take,
    set to anything but its default, is a UsageError naming it."""
    accepted = adapter_keys(role, section.backend)
    kwargs = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.name in accepted:
            kwargs[f.name] = value
        elif f.name in ROLE_KEYS and value != _default(f):
            log.warning("%s.%s (%r) is not used by %s.backend %s", role, f.name, value, role, section.backend)
        elif f.name not in HARNESS_KEYS | ROLE_KEYS and value != _default(f):
            users = sorted(b for b in BACKENDS[role].names() if f.name in adapter_keys(role, b))
            raise UsageError(f"{role}.{f.name} is set but {role}.backend {section.backend} does not use it; "
                             f"remove it, or choose a backend that does ({', '.join(users) or 'none'}).")
    return kwargs


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def build_role(role: str, section) -> object:
    """The backend of `role` that the config section names, built (its model loaded)."""
    cls = BACKENDS[role].get(section.backend)
    kwargs = adapter_kwargs(role, section)
    try:
        return cls(**kwargs)
    except OSError as exc:  # from_pretrained: not a folder, not in the Hugging Face cache
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{role}.checkpoint {section.checkpoint!r} could not be loaded ({first_line}); "
                         f"point --{role}.checkpoint at a local checkpoint folder, or download it on a "
                         f"machine with hub access.") from exc
