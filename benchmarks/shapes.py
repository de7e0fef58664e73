"""Test masks for items 4 and 5: the demo's ground truth, and 1024x1024 masks of object shapes.

There is no real segmentation data set on this machine, so the 1024x1024 masks are drawn from
two sources: the demo set's annotation polygons (every labelled shape of every scene) scaled up
to 1024x1024, and object-like blobs (a smooth random outline with a ragged 1-2 px edge, as SAM's
masks have at this size; every third one in two parts, every fourth one with a hole).
"""
from __future__ import annotations

import json

import cv2
import numpy as np

SIZE = 1024


def demo_gt_masks() -> list[np.ndarray]:
    """The demo set's target masks (320x240), read through the harness's ReasonSeg reader."""
    from rescue_eval.datamodules import build_datamodule

    dm = build_datamodule("demo")
    dm.prepare_data()
    dm.setup("predict")
    return [dm.dataset[i].gt_mask == 1 for i in range(len(dm.dataset))]


def demo_polygon_masks(size: int = SIZE) -> list[np.ndarray]:
    """Every polygon of the demo annotations, scaled from 320x240 to size x size, one mask each."""
    from rescue_eval.datamodules.demo import HEIGHT, WIDTH, ensure_demo_set

    masks = []
    for path in sorted((ensure_demo_set() / "val").glob("*.json")):
        for shape in json.loads(path.read_text())["shapes"]:
            points = np.array(shape["points"]) * [size / WIDTH, size / HEIGHT]
            mask = np.zeros((size, size), np.uint8)
            cv2.fillPoly(mask, [points.round().astype(np.int32)], 1)
            masks.append(mask.astype(bool))
    return masks


def _blob(mask: np.ndarray, rng: np.random.Generator, radius: float, center, value: int) -> None:
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    harmonics = np.arange(1, 9)[:, None]
    amplitude = rng.normal(0, 0.25, (8, 1)) / harmonics  # smooth: high harmonics are weak
    outline = 1 + (amplitude * np.cos(harmonics * theta + rng.uniform(0, 2 * np.pi, (8, 1)))).sum(axis=0)
    r = np.maximum(radius * outline, 0.1 * radius) + rng.normal(0, 1.5, theta.size)  # ragged edge
    points = np.stack([center[0] + r * np.cos(theta), center[1] + r * np.sin(theta)], axis=1)
    cv2.fillPoly(mask, [points.round().astype(np.int32)], value)


def blob_masks(count: int, size: int = SIZE, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for i in range(count):
        mask = np.zeros((size, size), np.uint8)
        center = rng.uniform(0.25, 0.75, 2) * size
        radius = rng.uniform(0.08, 0.22) * size
        _blob(mask, rng, radius, center, 1)
        if i % 3 == 2:  # a second part
            _blob(mask, rng, radius / 2, rng.uniform(0.1, 0.9, 2) * size, 1)
        if i % 4 == 3:  # a hole
            _blob(mask, rng, radius / 4, center, 0)
        masks.append(mask.astype(bool))
    return masks
