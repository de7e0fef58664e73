"""Checks shared by the adapters that load transformers checkpoints."""
from __future__ import annotations

from rescue_eval.core.errors import UsageError


def check_loading_info(role: str, checkpoint: str, info: dict) -> None:
    """`from_pretrained(..., output_loading_info=True)`'s report: weights the model expects but the
    checkpoint lacks (or has in another shape) would be random, so that is an error, not a
    warning (e.g. a Qwen3-VL MoE checkpoint loaded into the dense class)."""
    missing, mismatched = sorted(info.get("missing_keys") or ()), sorted(map(str, info.get("mismatched_keys") or ()))
    if missing or mismatched:
        example = (missing or mismatched)[:3]
        raise UsageError(f"{role}.checkpoint {checkpoint!r} does not fit its model class: {len(missing)} weight(s) "
                         f"missing and {len(mismatched)} of another shape (e.g. {', '.join(example)}); point "
                         f"--{role}.checkpoint at a checkpoint of that role, or pick the role's matching backend.")


QWEN3_VL_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")  # the planner and judge backends load either


def check_model_type(key: str, spec: str, resolved: str, expected: tuple[str, ...]) -> None:
    """A checkpoint of another role (a SigLIP2 folder given to the executor) is one sentence
    before any model loads. `resolved` is a local folder or a hub id; a hub checkpoint not yet
    in the local cache is left to the load, which says to download it."""
    import json
    from pathlib import Path

    config = Path(resolved) / "config.json"
    if not config.is_file():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(resolved, "config.json")
        if not isinstance(cached, str):
            return
        config = Path(cached)
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if model_type not in expected:
        raise UsageError(f"{key} {spec} is a {model_type} checkpoint, which this backend does not load (it takes "
                         f"{', '.join(expected)}): point {key} at that role's checkpoint.")


THINKING_PROBE = [{"role": "user", "content": [{"type": "text", "text": "?"}]}]


def opens_thinking(renderer) -> bool:
    """Whether a chat template (of a processor or tokenizer) opens <think> in its generation
    prompt, as Qwen's Thinking checkpoints do: their answer is what follows </think>."""
    prompt = renderer.apply_chat_template(THINKING_PROBE, add_generation_prompt=True, tokenize=False)
    return prompt.rstrip().endswith("<think>")
