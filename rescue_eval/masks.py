"""Masks: COCO RLE encoding, IoU under LISA's ignore policy, pairwise agreement, drawing.

Masks are bool HxW numpy arrays everywhere inside the harness; on disk and on the wire they
are COCO RLE (pycocotools), which is lossless and small for the blobby shapes SAM produces.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask

from rescue_eval.types import IGNORE, Box

UNION_EPS = 1e-5  # LISA: iou = intersection / (union + 1e-5)


def encode_rle(mask: np.ndarray) -> dict:
    """Bool HxW -> {"size": [h, w], "counts": str} (COCO compressed RLE, JSON-ready)."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Foreground intersection and union; gt pixels labelled 255 count in neither (LISA)."""
    valid = gt != IGNORE
    target = (gt == 1) & valid
    pred = pred.astype(bool) & valid
    inter = int(np.count_nonzero(pred & target))
    union = int(np.count_nonzero(pred)) + int(np.count_nonzero(target)) - inter
    return inter, union


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


def pairwise_iou(masks: list[np.ndarray], chunk_bytes: int = 8 << 20) -> np.ndarray:
    """N x N mask IoU without an N x H*W matrix.

    Only the image rows that some mask touches are visited, a block of rows at a time: each block
    is an N x (rows * W) float32 matrix of at most `chunk_bytes`, and its Gram matrix adds the
    block's intersections. Extra memory is O(chunk_bytes + N^2) whatever N and the image size.
    """
    n = len(masks)
    if n == 0:
        return np.zeros((0, 0))
    width = masks[0].shape[1]
    areas = np.array([np.count_nonzero(m) for m in masks], dtype=np.float64)
    touched = np.zeros(masks[0].shape[0], dtype=bool)
    for m in masks:
        touched |= m.any(axis=1)
    rows = np.flatnonzero(touched)
    step = max(1, chunk_bytes // (4 * n * width))
    inter = np.zeros((n, n), dtype=np.float64)
    block = np.empty((n, min(step, max(len(rows), 1)) * width), dtype=np.float32)
    for start in range(0, len(rows), step):
        chosen = rows[start:start + step]
        view = block[:, :len(chosen) * width]
        for i, m in enumerate(masks):
            view[i] = m[chosen].reshape(-1)
        inter += view @ view.T  # exact: float32 holds integer counts up to 2**24 per block
    union = areas[:, None] + areas[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 1.0)


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


def draw_box(image: Image.Image, box: Box, color=(255, 255, 0), width: int = 2) -> Image.Image:
    out = image.copy()
    ImageDraw.Draw(out).rectangle(box, outline=color, width=width)
    return out


def _erode(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1)
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
