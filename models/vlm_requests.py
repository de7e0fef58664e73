"""What a VLM backend is asked and how its answers become results, shared by every backend
(transformers, vLLM, OpenAI-compatible servers) so they differ only in how they generate.

Planner: item.n hypotheses per item; hypothesis k uses strategy k % S, temperature
(k // S) % T (`plan_setting`: every strategy meets every temperature) and seed
hypothesis_seed(item.seed, k), so hypothesis k is the same whatever n is. Judge: the masks are drawn in red on the image (rescue_eval.core.masks.overlay).
"""
from __future__ import annotations

import hashlib
import math
from typing import NamedTuple, Sequence

from PIL import Image

from rescue_eval.models.parsing import parse_box
from rescue_eval.models.prompts import STRATEGIES, duel_messages, rate_messages
from rescue_eval.core.masks import overlay
from rescue_eval.core.types import DuelItem, Hypothesis, PlanItem, RateItem


def hypothesis_seed(item_seed: int, index: int) -> int:
    """A 63-bit seed for hypothesis `index` of an item; stable across processes and runs
    (Python's hash() is salted per process)."""
    digest = hashlib.sha256(f"rescue-plan:{item_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class PlanRow(NamedTuple):
    """One hypothesis to generate."""
    item: int  # index in the request batch
    index: int  # k, the hypothesis index within its item
    strategy: str
    temperature: float
    seed: int


def check_plan_settings(strategies: Sequence[str] | None, temperatures: Sequence[float]) -> tuple[list, list]:
    chosen = list(strategies) if strategies else list(STRATEGIES)
    unknown = [s for s in chosen if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"Unknown planner strategies {unknown}; choose from {list(STRATEGIES)}.")
    temps = [float(t) for t in temperatures]
    if not temps:
        raise ValueError("temperatures must not be empty")
    return chosen, temps


def plan_setting(k: int, strategies: list[str], temperatures: list[float]) -> tuple[str, float]:
    """Strategy and temperature of hypothesis k, crossed: the strategies take turns, and each
    round through them uses the next temperature, so the first S x T hypotheses cover every pair
    (k % S and k % T together would lock each strategy to one temperature when S is a multiple of T)."""
    return strategies[k % len(strategies)], temperatures[(k // len(strategies)) % len(temperatures)]


def plan_rows(batch: list[PlanItem], strategies: list[str], temperatures: list[float]) -> list[PlanRow]:
    return [PlanRow(i, k, *plan_setting(k, strategies, temperatures), hypothesis_seed(item.seed, k))
            for i, item in enumerate(batch) for k in range(item.n)]  # (item, k) order


def to_hypothesis(row: PlanRow, image: Image.Image, text: str, tokens_in: int = 0, tokens_out: int = 0) -> Hypothesis:
    box, status = parse_box(text, image.width, image.height)
    return Hypothesis(index=row.index, strategy=row.strategy, temperature=row.temperature, seed=row.seed,
                      raw_text=text, status=status, box=box, tokens_in=tokens_in, tokens_out=tokens_out)


# The original RESCue resized images to at most 1024 px for planning and 768 px for judging: real
# Qwen3-VL processors accept up to ~16M pixels (thousands of tokens) per image.
PLANNER_MAX_PIXELS = 1024 * 1024
JUDGE_MAX_PIXELS = 768 * 768


def fit_image(image: Image.Image, max_pixels: int) -> Image.Image:
    """The image itself when it has at most `max_pixels` pixels, else scaled down (aspect kept)
    to fit. Boxes are read on the 0..1000 grid relative to the image, so a planner's answer
    means the same box on the original."""
    if image.width * image.height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (image.width * image.height))
    size = (max(1, math.floor(image.width * scale)), max(1, math.floor(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def rate_request(item: RateItem, max_pixels: int = JUDGE_MAX_PIXELS) -> tuple[list[dict], list[Image.Image]]:
    return rate_messages(item.query), [fit_image(overlay(item.image, item.mask), max_pixels)]


def duel_request(item: DuelItem, max_pixels: int = JUDGE_MAX_PIXELS) -> tuple[list[dict], list[Image.Image]]:
    return duel_messages(item.query), [fit_image(overlay(item.image, item.mask_a), max_pixels),
                                       fit_image(overlay(item.image, item.mask_b), max_pixels)]


def fill_image_parts(messages: list[dict], parts: list[dict]) -> list[dict]:
    """The prompts' {"type": "image"} placeholders replaced, in order, by a backend's own image
    parts (vLLM's image_pil, OpenAI's image_url)."""
    slots = sum(part.get("type") == "image" for m in messages for part in m["content"])
    if slots != len(parts):
        raise ValueError(f"{len(parts)} image(s) for {slots} image part(s)")
    remaining = iter(parts)
    return [{**m, "content": [next(remaining) if part.get("type") == "image" else part for part in m["content"]]}
            for m in messages]
