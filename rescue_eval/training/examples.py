"""What the demo twins learn from: the demo world's training scenes, as each role sees them.

Everything is drawn from seeded generators, so a training run sees the same examples in the
same order every time. Masks are the visible pixels of each shape (the world's instance map);
boxes are tight boxes of those pixels.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from rescue_eval.core.masks import intersection_union, mask_box
from rescue_eval.datamodules import world
from rescue_eval.models.prompts import GRID


@dataclass
class TrainingScene:
    image: Image.Image
    query: str
    masks: list[np.ndarray]  # one visible-pixel mask per shape, in the scene's drawing order
    target: int
    names: list[str]  # each shape's colour and kind, e.g. "blue triangle"
    reasoning: str  # the kind of query (datamodules/world.QUERIES)

    @property
    def target_mask(self) -> np.ndarray:
        return self.masks[self.target]

    @property
    def uniquely_named(self) -> list[int]:
        """The visible shapes whose name ("red circle") no other shape of the scene has, in drawing order."""
        return [i for i, name in enumerate(self.names) if self.names.count(name) == 1 and self.masks[i].any()]


def training_scene(index: int) -> TrainingScene:
    scene = world.scene("train", index)
    instances = scene.instance_map()
    masks = [instances == i + 1 for i in range(len(scene.shapes))]
    return TrainingScene(scene.image, scene.query, masks, scene.target, [s.name for s in scene.shapes], scene.reasoning)


# The demo planner answers on the 0..1000 grid in steps of BOX_STEP: a model this small learns
# which tenth of the picture a shape is in within minutes, and sub-token precision not at all.
# The executor is trained on such loose boxes, as a real SAM gets loose boxes from a real planner.
BOX_STEP = 100


def answer_box(mask: np.ndarray) -> list[int]:
    """The mask's box as the demo planner learns to answer it: on the 0..GRID grid, each side
    rounded outward to a multiple of BOX_STEP."""
    height, width = mask.shape
    x1, y1, x2, y2 = mask_box(mask)
    return [BOX_STEP * math.floor(GRID * x1 / width / BOX_STEP), BOX_STEP * math.floor(GRID * y1 / height / BOX_STEP),
            BOX_STEP * math.ceil(GRID * x2 / width / BOX_STEP), BOX_STEP * math.ceil(GRID * y2 / height / BOX_STEP)]


def box_steps(mask: np.ndarray) -> list[int]:
    """The answer box's sides in steps of BOX_STEP (0 .. GRID / BOX_STEP)."""
    return [side // BOX_STEP for side in answer_box(mask)]


def answer_box_pixels(mask: np.ndarray) -> list[float]:
    height, width = mask.shape
    x1, y1, x2, y2 = answer_box(mask)
    return [x1 * width / GRID, y1 * height / GRID, x2 * width / GRID, y2 * height / GRID]


def jittered_box(mask: np.ndarray, rng: np.random.Generator, spread: float = 0.15) -> list[float]:
    """The mask's box with each side moved by up to `spread` of the box's size: a planner's box
    is rarely tight."""
    height, width = mask.shape
    x1, y1, x2, y2 = mask_box(mask)
    w, h = x2 - x1, y2 - y1
    dx1, dy1, dx2, dy2 = rng.uniform(-spread, spread, size=4)
    box = [x1 + dx1 * w, y1 + dy1 * h, x2 + dx2 * w, y2 + dy2 * h]
    box = [min(max(box[0], 0.0), width - 1.0), min(max(box[1], 0.0), height - 1.0),
           min(max(box[2], 0.0), float(width)), min(max(box[3], 0.0), float(height))]
    return [box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Plain IoU of two masks (LISA's per-sample IoU adds 1e-5 to the union), 0.0 when both are empty."""
    inter, union = intersection_union(a, b)
    return inter / union if union else 0.0


@functools.lru_cache(maxsize=1)
def world_queries(count: int = 2000) -> tuple[str, ...]:
    """The distinct queries of the first `count` training scenes, for the twins' tokenizers."""
    return tuple(sorted({world.scene("train", i).query.lower() for i in range(count)}))


def candidate_masks(scene: TrainingScene, rng: np.random.Generator) -> list[np.ndarray]:
    """Masks a search would propose for this scene: the target, the other shapes (the first
    `whole_shapes(scene)` are whole shapes), the target cut by a box (a part), the target grown
    into its neighbour, and an empty corner patch."""
    target = scene.target_mask
    height, width = target.shape
    x1, y1, x2, y2 = mask_box(target)
    cut = target.copy()
    side = int(rng.integers(4))  # cut away a third to two thirds of one side
    fraction = rng.uniform(0.33, 0.66)
    if side == 0:
        cut[:, : int(x1 + fraction * (x2 - x1))] = False
    elif side == 1:
        cut[:, int(x2 - fraction * (x2 - x1)):] = False
    elif side == 2:
        cut[: int(y1 + fraction * (y2 - y1))] = False
    else:
        cut[int(y2 - fraction * (y2 - y1)):] = False
    others = [m for i, m in enumerate(scene.masks) if i != scene.target and m.any()]
    grown = target | others[int(rng.integers(len(others)))] if others else target
    patch = np.zeros_like(target)
    top, left = int(rng.integers(0, height - 24)), int(rng.integers(0, width - 24))
    patch[top:top + 24, left:left + 24] = True
    return [target, *others, cut, grown, patch & ~target]


def loose_box_masks(scene: TrainingScene, rng: np.random.Generator, count: int = 2) -> list[np.ndarray]:
    """What the executor makes of a planner's loose box: every shape's visible pixels inside it.
    A box on the target and on `count` shapes drawn at random (the target may be among them),
    each either on the planner's grid (BOX_STEP) or jittered. A box on that grid often takes in
    a neighbour, so most of a search's candidates look like these rather than one whole shape."""
    shapes = np.logical_or.reduce(scene.masks)
    picks = [scene.target, *rng.choice(len(scene.masks), size=min(count, len(scene.masks)), replace=False)]
    masks = []
    for i in picks:
        if not scene.masks[i].any():
            continue
        x1, y1, x2, y2 = (answer_box_pixels(scene.masks[i]) if rng.random() < 0.5
                          else jittered_box(scene.masks[i], rng, spread=0.3))
        box = np.zeros_like(shapes)
        box[int(y1):math.ceil(y2), int(x1):math.ceil(x2)] = True
        masks.append(box & shapes)
    return masks


def by_kind(measure: str, outcomes: dict[str, list]) -> dict[str, float]:
    """The mean of each kind of query's outcomes, named "MEASURE, KIND queries" as the cards show them."""
    return {f"{measure}, {kind} queries": float(np.mean(values)) for kind, values in sorted(outcomes.items())}


def whole_shapes(scene: TrainingScene) -> int:
    """How many of `candidate_masks(scene)` come first as whole shapes: the target and the others."""
    return 1 + sum(1 for i, m in enumerate(scene.masks) if i != scene.target and m.any())
