"""Masks: COCO RLE encoding, IoU under LISA's ignore policy, pairwise agreement, drawing.

Masks are bool HxW numpy arrays inside the harness, except that a mask which arrived over the
wire stays an `EncodedMask` on the rank that asked for it until a backend needs its pixels; on
disk and on the wire they are COCO RLE (pycocotools), which is lossless and small for the
blobby shapes SAM produces, and the candidates' pairwise IoU is computed on the RLE.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask

from rescue_eval.core.types import IGNORE, Box

UNION_EPS = 1e-5  # LISA: iou = intersection / (union + 1e-5)


# The RLE of every read-only mask that was decoded or encoded here and is still alive. Such an
# array cannot change, so its RLE cannot go stale: a sample's masks cross several times (scorer,
# judge ratings, duels, JSONL) and are encoded once (`freeze` makes a backend's masks read-only).
_KNOWN_RLE: dict[int, tuple[weakref.ref, dict]] = {}


class EncodedMask:
    """A mask as the COCO RLE it arrived in, decoded only when something needs its pixels.

    A search's driver scores a candidate against the ground truth on its runs (`GroundTruth`),
    records its RLE and sends it on as RLE, so it never needs the pixels of masks that a remote
    executor made: decoding them took a tenth of its CPU per sample (benchmarks/RESULTS.md,
    item 3). A backend gets pixels (`with_pixels`), decoded once per mask."""

    __slots__ = ("rle", "_pixels")

    def __init__(self, rle: dict):
        self.rle, self._pixels = rle, None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.rle["size"])

    def pixels(self) -> np.ndarray:
        if self._pixels is None:  # two threads may both decode; either result is the same mask
            self._pixels = decode_rle(self.rle)
        return self._pixels


def with_pixels(item):
    """A role request (a dataclass of core.types) with its EncodedMasks decoded, as backends take them."""
    if not dataclasses.is_dataclass(item):
        return item
    changes = {}
    for f in dataclasses.fields(item):
        value = getattr(item, f.name)
        if isinstance(value, EncodedMask):
            changes[f.name] = value.pixels()
        elif isinstance(value, list) and any(isinstance(v, EncodedMask) for v in value):
            changes[f.name] = [v.pixels() if isinstance(v, EncodedMask) else v for v in value]
    return dataclasses.replace(item, **changes) if changes else item


def encode_rle(mask: np.ndarray | EncodedMask) -> dict:
    """Bool HxW -> {"size": [h, w], "counts": str} (COCO compressed RLE, JSON-ready)."""
    if isinstance(mask, EncodedMask):
        return mask.rle
    known = _KNOWN_RLE.get(id(mask))
    if known is not None and known[0]() is mask:
        return known[1]
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    if _frozen(mask):
        _remember(mask, rle)
    return rle


def _coco(rle: dict) -> dict:
    """Our JSON-ready RLE as pycocotools takes it."""
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """RLE -> bool HxW, read-only (encode_rle gives its RLE back without encoding it again)."""
    owner = coco_mask.decode([_coco(rle)])  # h x w x 1
    owner.flags.writeable = False  # then no view of it can be made writable again
    mask = owner[:, :, 0].view(bool)  # 0/1 bytes viewed as bool: no second copy
    _remember(mask, rle)
    return mask


def freeze(mask) -> np.ndarray | EncodedMask:
    """A bool mask that nothing can change (a read-only copy unless it already is one), so that
    its RLE is encoded once however often it is sent or recorded."""
    if isinstance(mask, EncodedMask):
        return mask
    if isinstance(mask, np.ndarray) and mask.dtype == bool and _frozen(mask):
        return mask
    frozen = np.array(mask, dtype=bool)  # a copy that owns its data
    frozen.flags.writeable = False
    return frozen


def _frozen(mask: np.ndarray) -> bool:
    return not mask.flags.writeable and (mask.base is None or not getattr(mask.base, "flags", mask.flags).writeable)


def _remember(mask: np.ndarray, rle: dict) -> None:
    key = id(mask)
    # the entry goes when the array does, before its id can be reused
    _KNOWN_RLE[key] = (weakref.ref(mask, lambda _, key=key: _KNOWN_RLE.pop(key, None)), rle)


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Foreground intersection and union; gt pixels labelled 255 count in neither (LISA)."""
    return GroundTruth(gt).intersection_union(pred)


class GroundTruth:
    """A ground-truth mask's parts computed once, for scoring the candidates of a sample."""

    def __init__(self, gt: np.ndarray):
        valid = gt != IGNORE
        self.valid = None if valid.all() else valid  # most masks have no ignore pixels
        self.target = (gt == 1) & valid
        self.target_area = int(np.count_nonzero(self.target))
        self._runs = None  # the target's and the valid pixels' RLE, made for the first EncodedMask

    def intersection_union(self, pred: np.ndarray | EncodedMask) -> tuple[int, int]:
        if isinstance(pred, EncodedMask):
            return self._on_runs(pred)
        pred = pred.astype(bool, copy=False)
        if self.valid is not None:
            pred = pred & self.valid
        inter = int(np.count_nonzero(pred & self.target))
        return inter, int(np.count_nonzero(pred)) + self.target_area - inter

    def _on_runs(self, pred: EncodedMask) -> tuple[int, int]:
        """The same counts from the runs, without decoding the mask."""
        if pred.shape != self.target.shape:
            raise ValueError(f"a {pred.shape} mask cannot be scored against a {self.target.shape} ground truth")
        if self._runs is None:
            parts = [self.target] if self.valid is None else [self.target, self.valid]
            self._runs = [_coco(encode_rle(part)) for part in parts]
        runs = _coco(pred.rle)
        inter = int(coco_mask.area(coco_mask.merge([runs, self._runs[0]], intersect=True)))
        valid = runs if self.valid is None else coco_mask.merge([runs, self._runs[1]], intersect=True)
        return inter, int(coco_mask.area(valid)) + self.target_area - inter


def sample_iou(inter: int, union: int) -> float:
    """Per-sample IoU as LISA computes it; a sample whose union is empty scores 1.0."""
    return 1.0 if union == 0 else inter / (union + UNION_EPS)


def box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mask_box(mask: np.ndarray) -> Box | None:
    """Tight pixel xyxy box of a mask (x2, y2 exclusive), None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def iou_rows(rles: list[dict], rows_per_call: int = 16) -> Iterator[np.ndarray]:
    """The rows of the N x N IoU matrix of masks given as RLE, computed on the runs by
    pycocotools without decoding a mask, `rows_per_call` rows per call (each call parses every
    RLE again): memory O(rows_per_call x N). Two empty masks agree fully (1.0)."""
    coco = [_coco(r) for r in rles]
    empty = np.array([coco_mask.area(c) == 0 for c in coco], dtype=bool)
    for start in range(0, len(coco), rows_per_call):
        rows = np.asarray(coco_mask.iou(coco[start:start + rows_per_call], coco, [0] * len(coco)), dtype=np.float64)
        for i, row in enumerate(rows.reshape(-1, len(coco)), start=start):
            if empty[i]:
                row[empty] = 1.0  # pycocotools gives 0 for 0/0
            yield row


def overlay(image: Image.Image, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.45,
            outline: bool = True) -> Image.Image:
    """The image with `mask` tinted in `color` and its outline drawn (what a VLM judge sees)."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    m = mask.astype(bool)
    tint = np.array(color, dtype=np.float32)
    base[m] = (1 - alpha) * base[m] + alpha * tint
    out = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    if outline and m.any():
        edge = m & ~_erode(m)
        arr = np.asarray(out).copy()
        arr[edge] = color
        out = Image.fromarray(arr)
    return out


def contour(image: Image.Image, mask: np.ndarray, color, width: int = 2, halo=(0, 0, 0)) -> Image.Image:
    """The image with the mask's boundary drawn as a `width`-pixel line in `color` between two
    1-pixel lines in `halo`, so it reads on any content; the pixels inside are left as they are."""
    m = mask.astype(bool)
    arr = np.asarray(image.convert("RGB")).copy()
    if m.any():
        outward, inward = width // 2, width - width // 2
        line = _grow(m, outward) & ~_shrink(m, inward)
        arr[_grow(m, outward + 1) & ~_shrink(m, inward + 1) & ~line] = halo
        arr[line] = color
    return Image.fromarray(arr)


def hatch(image: Image.Image, mask: np.ndarray, period: int = 6) -> Image.Image:
    """The image with black and white diagonal stripes over `mask`: a pattern no photo region
    looks like, for pixels that are neither target nor background (ignore labels)."""
    arr = np.asarray(image.convert("RGB")).copy()
    ys, xs = np.indices(mask.shape)
    phase = ((xs + ys) // 2) % period
    m = mask.astype(bool)
    arr[m & (phase == 0)] = (255, 255, 255)
    arr[m & (phase == 1)] = (0, 0, 0)
    return Image.fromarray(arr)


def draw_box(image: Image.Image, box: Box, color=(255, 255, 0), width: int = 2, halo=None) -> Image.Image:
    """The image with `box` outlined inwards from its edge; `halo` adds a 1-pixel line of that
    colour on both sides of the outline."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    if halo is not None:
        x1, y1, x2, y2 = box
        draw.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=halo, width=width + 2)
    draw.rectangle(box, outline=color, width=width)
    return out


def _erode(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1)
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _dilate(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1)
    return p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def _grow(m: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        m = _dilate(m)
    return m


def _shrink(m: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        m = _erode(m)
    return m
