"""Lenient parsers for VLM answers: boxes, ratings and A/B verdicts. They never raise.

Models wrap JSON in ```json fences, prose or <think> blocks (only what follows the block is the
answer; reasoning cut short by the token limit is no answer), stop mid-answer at the token
limit, quote numbers, rename keys and return lists of objects; a random-weight or unconstrained
model returns anything at all. Each parser tries real JSON first, then a regex over the text,
and reports what it could not use instead of raising.

Box coordinates are read on Qwen3-VL's 0..1000 grid (what the planner prompt asks for), with one
exception: four values all within [0, 1] are taken as fractions of the image, since as grid
values they would span at most 1/1000 of it, which no model means. Pixel coordinates are not
guessed: a 400-pixel box on a 2000-pixel image is a valid grid box too, so no rule tells them
apart; values over 1000 are out of the grid and clamped. Every box returned is finite, ordered,
inside the image and at least 1 px wide and high (`clean_pixel_box`).
"""
from __future__ import annotations

import json
import math
import re
from typing import Iterator, Literal

from rescue_eval.core.types import Box

GRID = 1000  # Qwen3-VL boxes: integers on a 0..1000 grid relative to width and height
BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box", "bounding_box", "bbox2d")
CORNER_KEYS = (("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax"), ("left", "top", "right", "bottom"))
SCORE_KEYS = ("score", "rating", "grade", "value")
VERDICT_KEYS = ("winner", "answer", "choice", "better", "verdict")
SCORE_MAX = 10
MAX_JSON_STARTS = 64  # bounds the work on long garbage: each start is one raw_decode attempt

NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)\b"
_NUMBER_RE = re.compile(NUMBER, re.IGNORECASE)
# a box key, then the text inside the bracket that opens after it (up to its close or the end)
_BOX_LIST_RE = re.compile(r"(?:%s)[\"']?\s*[:=]?\s*[\[(]+([^\])]{0,200})" % "|".join(BOX_KEYS), re.IGNORECASE)
_SCORE_RE = re.compile(r"(?:score|rating|grade)\W{0,4}(" + NUMBER + ")", re.IGNORECASE)
_OUT_OF_TEN_RE = re.compile(r"(" + NUMBER + r")\s*/\s*10\b")
_VERDICT_RE = re.compile(r"(?i:winner|answer|better|verdict)\W{0,4}(?i:image |mask )?([AB])\b")
_THINK_END_RE = re.compile(r"</think(?:ing)?>", re.IGNORECASE)
_THINK_START_RE = re.compile(r"<think(?:ing)?>", re.IGNORECASE)
_DECODER = json.JSONDecoder()

BoxStatus = Literal["ok", "parse_error", "degenerate"]


def parse_box(text: str, width: int, height: int, thinking: bool = False) -> tuple[Box | None, BoxStatus]:
    """A pixel xyxy box from an answer on the 0..1000 grid (or in 0..1 fractions), or None and why not.

    "parse_error": no four coordinates found; "degenerate": found, but not finite or under
    1 px wide or high once ordered and clamped to the image.
    """
    for candidate in _answer_candidates(text, thinking):
        for value in _json_values(candidate):
            coords = _box_from_json(value)
            if coords is not None:
                return _to_pixels(coords, width, height)
        coords = _box_from_regex(candidate)
        if coords is not None:
            return _to_pixels(coords, width, height)
    return None, "parse_error"


def parse_rating(text: str, thinking: bool = False) -> float | None:
    """A 0..10 score as a value in [0, 1] (clamped), None when no finite score is found."""
    for candidate in _answer_candidates(text, thinking):
        score = _score_from_text(candidate)
        if score is not None and math.isfinite(score):
            return min(max(score, 0.0), SCORE_MAX) / SCORE_MAX
    return None


def parse_verdict(text: str, thinking: bool = False) -> Literal["A", "B"] | None:
    for candidate in _answer_candidates(text, thinking):
        for value in _json_values(candidate):
            if isinstance(value, dict):
                for key in VERDICT_KEYS:
                    verdict = _as_verdict(_get_key(value, key))
                    if verdict:
                        return verdict
        match = _VERDICT_RE.search(candidate)
        if match:
            return match.group(1)  # type: ignore[return-value]
        verdict = _as_verdict(candidate)
        if verdict:
            return verdict
    return None


# ---- shared helpers ----------------------------------------------------------------------


def _answer_candidates(text: str, thinking: bool = False) -> list[str]:
    """Where the answer is: after the last </think> (or </thinking>) when there is one, since
    reasoning mentions other boxes and echoes the answer format ('{"winner": "A"} or ...').
    Reasoning that never closed (an opening <think> without its end, or `thinking`: a model
    whose template opened the block in the prompt) was cut short: there is no answer in it."""
    text = text if isinstance(text, str) else str(text)
    ends = list(_THINK_END_RE.finditer(text))
    if ends:
        return [text[ends[-1].end():]]
    if thinking or _THINK_START_RE.search(text):
        return []
    return [text]


def _json_values(text: str) -> Iterator[object]:
    """Every JSON object or array that decodes at a '{' or '[' of the text, outermost first."""
    pos, starts = 0, 0
    while starts < MAX_JSON_STARTS:
        brace, bracket = text.find("{", pos), text.find("[", pos)
        start = min(i for i in (brace, bracket, len(text)) if i >= 0)
        if start >= len(text):
            return
        starts += 1
        try:
            value, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):  # malformed or truncated here: try the next start
            pos = start + 1
            continue
        yield value
        pos = end


def _get_key(obj: dict, key: str) -> object:
    for k, v in obj.items():
        if isinstance(k, str) and k.strip().lower() == key:
            return v
    return None


def _to_float(value: object) -> float | None:
    """A number, or a string holding one; booleans are not numbers here."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int):
            return float(value) if abs(value) < 10**300 else (math.inf if value > 0 else -math.inf)
        if isinstance(value, (float, str)):
            return float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        return None
    return None


# ---- boxes -------------------------------------------------------------------------------


def _four_numbers(value: object) -> list[float] | None:
    """[x1, y1, x2, y2], or two corner points [[x1, y1], [x2, y2]], as four numbers."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) and len(v) == 2 for v in value):
        value = value[0] + value[1]
    if not isinstance(value, list) or len(value) != 4:
        return None
    numbers = [_to_float(v) for v in value]
    return None if any(n is None for n in numbers) else numbers  # type: ignore[return-value]


def _corners(obj: dict) -> list[float] | None:
    """{"x1": .., "y1": .., "x2": .., "y2": ..} and the like."""
    for keys in CORNER_KEYS:
        numbers = [_to_float(_get_key(obj, key)) for key in keys]
        if all(n is not None for n in numbers):
            return numbers  # type: ignore[return-value]
    return None


def _box_from_json(value: object, depth: int = 0) -> list[float] | None:
    """Coordinates from a box-keyed object, a corner-keyed object, a bare [x1, y1, x2, y2], or
    the first such inside a list (Qwen lists one object per instance: the first is taken)."""
    if depth > 8:
        return None
    if isinstance(value, dict):
        for key in BOX_KEYS:
            inner = _get_key(value, key)
            coords = _four_numbers(inner)
            if coords is None and isinstance(inner, (list, dict)):  # {"bbox": [[...]]}, {"bbox": {"x1": ...}}
                coords = _box_from_json(inner, depth + 1)
            if coords is not None:
                return coords
        return _corners(value)
    if isinstance(value, list):
        coords = _four_numbers(value)
        if coords is not None:
            return coords
        for element in value:
            coords = _box_from_json(element, depth + 1)
            if coords is not None:
                return coords
    return None


def _box_from_regex(text: str) -> list[float] | None:
    """The first four numbers in the list after a box key: recovers truncated or malformed JSON
    ('{"bbox_2d": [12, 34, 56, 78' or 'bbox: (12, 34, 56, 78)')."""
    for match in _BOX_LIST_RE.finditer(text):
        numbers = _NUMBER_RE.findall(match.group(1))[:4]
        if len(numbers) == 4:
            return [_to_float(n) for n in numbers]  # type: ignore[misc]
    return None


def _to_pixels(coords: list[float], width: int, height: int) -> tuple[Box | None, BoxStatus]:
    """Grid (or, all four within [0, 1], fraction) coordinates to a clean pixel box."""
    if not all(math.isfinite(c) for c in coords):
        return None, "degenerate"
    scale = 1.0 if all(0.0 <= c <= 1.0 for c in coords) else GRID
    return clean_pixel_box([coords[0] * width / scale, coords[1] * height / scale,
                            coords[2] * width / scale, coords[3] * height / scale], width, height)


def clean_pixel_box(coords: list[float], width: int, height: int) -> tuple[Box | None, BoxStatus]:
    """Order, clamp to the image and reject boxes under 1 px wide or high (or not finite)."""
    if not all(math.isfinite(c) for c in coords):
        return None, "degenerate"
    xs, ys = sorted((coords[0], coords[2])), sorted((coords[1], coords[3]))
    x1, x2 = (min(max(x, 0.0), float(width)) for x in xs)
    y1, y2 = (min(max(y, 0.0), float(height)) for y in ys)
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:
        return None, "degenerate"
    return (x1, y1, x2, y2), "ok"


# ---- ratings and verdicts ----------------------------------------------------------------


def _score_from_text(text: str) -> float | None:
    for value in _json_values(text):
        if isinstance(value, dict):
            for key in SCORE_KEYS:
                score = _to_float(_get_key(value, key))
                if score is not None:
                    return score
    for pattern in (_SCORE_RE, _OUT_OF_TEN_RE):
        match = pattern.search(text)
        if match:
            return _to_float(match.group(1))
    return _to_float(text.strip().strip("`\"'."))  # a bare number


def _as_verdict(value: object) -> Literal["A", "B"] | None:
    if not isinstance(value, str):
        return None
    word = value.strip().strip("`\"'.*:()[] ").upper()
    for prefix in ("IMAGE ", "MASK ", "CANDIDATE "):
        word = word.removeprefix(prefix)
    return word if word in ("A", "B") else None  # type: ignore[return-value]
