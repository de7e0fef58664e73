"""Item 8: the transformers planner with its shared prefix against whole-prompt rows.

One sample, N = 1, 8 and 32 hypotheses, on the Qwen3-VL twin: images through the vision encoder
and tokens prefilled per sample (forward hooks on the vision tower and the language model; a
language-model call on more than one token per row is a prefill), and planner time per sample,
shared prefix against whole rows (models/shared_prefix.py). Time is process CPU time on CPU and
wall time on CUDA, each the median of --repeats runs after one warm-up.

`--planner-shape qwen3-vl-8b` (for a GPU) keeps the twin's tokenizer and processor and gives the
model Qwen3-VL-8B-Instruct's layer sizes, with random weights, and the image 1024 x 1024 px (1,024
image tokens): the prefill cost the issue is about. Answers are noise either way; the answer
grammar keeps their length that of a box (about 25 tokens).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.table import Row
from rescue_eval.core.types import PlanItem

SIZES = (1, 8, 32)
# Qwen3-VL-8B-Instruct's config.json (published checkpoint), the parts that set the compute
QWEN3_VL_8B = {"text_config": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=128),
               "text_rope": dict(mrope_section=[24, 20, 20]),
               "vision_config": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                                     out_hidden_size=4096, deepstack_visual_indexes=[8, 16, 24],
                                     num_position_embeddings=2304)}


@contextmanager
def counted(model):
    """Images encoded and per-call prefill lengths while the block runs."""
    counts = {"images": 0, "prefills": []}

    def on_vision(module, args, kwargs, output):
        counts["images"] += len(kwargs["grid_thw"])

    def on_language(module, args, kwargs, output):
        embeds = kwargs["inputs_embeds"]
        if embeds.shape[1] > 1:
            counts["prefills"].append(int(embeds.shape[0] * embeds.shape[1]))

    hooks = [model.base_model.visual.register_forward_hook(on_vision, with_kwargs=True),
             model.base_model.language_model.register_forward_hook(on_language, with_kwargs=True)]
    try:
        yield counts
    finally:
        for hook in hooks:
            hook.remove()


def shaped_checkpoint(out_dir: Path, device: str) -> str:
    """The twin's files with Qwen3-VL-8B's layer sizes and random bfloat16 weights."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from rescue_eval.models import tiny

    twin = tiny.resolve_checkpoint("tiny:qwen3-vl")
    config = AutoConfig.from_pretrained(twin)
    for key, value in QWEN3_VL_8B["text_config"].items():
        setattr(config.text_config, key, value)
    config.text_config.rope_parameters.update(QWEN3_VL_8B["text_rope"])
    for key, value in QWEN3_VL_8B["vision_config"].items():
        setattr(config.vision_config, key, value)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(twin).save_pretrained(out_dir)
    return str(out_dir)


def run(repeats: int, log, shape: str = "twin", device: str = "cpu") -> list[Row]:
    import torch

    from rescue_eval.models.qwen3_vl import Qwen3VLPlanner
    from rescue_eval.models.shared_prefix import split_plan_prompt

    side = 1024 if shape == "qwen3-vl-8b" else 320
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = shaped_checkpoint(Path(scratch), device) if shape == "qwen3-vl-8b" else "tiny:qwen3-vl"
        dtype = "bfloat16" if shape == "qwen3-vl-8b" else "float32"
        planners = {flag: Qwen3VLPlanner(checkpoint, device=device, dtype=dtype, max_new_tokens=40, share_prefix=flag)
                    for flag in (True, False)}
    model = planners[True].vlm.model
    clock = time.process_time if device == "cpu" else time.perf_counter
    rows, label = [], f"{shape}, {device}, {side}x{side} image"
    for n in SIZES:
        item = PlanItem(image, "the object that could roll, left of the blue triangle", n, 7)
        seconds, counts, answers = {}, {}, {}
        for flag, planner in planners.items():
            [answers[flag]] = planner.propose([item])  # also the warm-up
            runs = []
            for _ in range(repeats):
                with counted(model) as counts[flag]:
                    start = clock()
                    planner.propose([item])
                    if device != "cpu":
                        torch.cuda.synchronize()
                    runs.append(clock() - start)
            seconds[flag] = runs
        shared, whole = counts[True], counts[False]  # of the last run
        head, _ = split_plan_prompt(planners[True].vlm.processor, item.query)
        prefix_length = len(planners[True].vlm.processor(text=[head], images=[image])["input_ids"][0])
        ratio = statistics.median(s / w for s, w in zip(seconds[True], seconds[False]))
        log(f"  N={n}: shared prefix: {shared['images']} image(s) encoded, prefill tokens {shared['prefills']}; "
            f"whole rows: {whole['images']} image(s), {sum(whole['prefills'])} tokens; seconds shared "
            f"{[round(s, 3) for s in seconds[True]]}, whole {[round(s, 3) for s in seconds[False]]}")
        rows += [Row("8", f"{label}, N = {n}: images encoded per sample, shared prefix (whole rows: "
                          f"{whole['images']})", str(shared["images"]), "1", shared["images"] == 1),
                 Row("8", f"{label}, N = {n}: prefix tokens prefilled per sample, shared prefix (then "
                          f"{sum(shared['prefills'][1:])} suffix tokens; whole rows: {sum(whole['prefills'])})",
                     str(shared["prefills"][0]), f"= prefix length {prefix_length}",
                     shared["prefills"][0] == prefix_length),
                 Row("8", f"{label}, N = {n}: answers of the shared prefix equal to whole rows' (same seeds)",
                     f"{sum(a == b for a, b in zip(answers[True], answers[False]))}/{n}", "", None),
                 Row("8", f"{label}, N = {n}: planner s per sample, shared / whole rows = ratio (spread "
                          f"{min(seconds[True]):.3f}-{max(seconds[True]):.3f} / "
                          f"{min(seconds[False]):.3f}-{max(seconds[False]):.3f})",
                     f"{statistics.median(seconds[True]):.3f} / {statistics.median(seconds[False]):.3f} "
                     f"= {ratio:.2f}", "", None)]
    return rows
