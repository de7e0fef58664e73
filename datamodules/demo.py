"""The embedded demo set: 16 synthetic scenes in LISA's ReasonSeg folder format.

Each scene is a 320x240 JPEG (textured background, 3-5 colored circles, rectangles and
triangles) with a labelme-style JSON whose `text[0]` names one target by color and shape,
half as short phrases ("the blue triangle"), half as sentences. Some scenes carry an "ignore"
polygon (the target's shadow), some a "flag" polygon (which readers must skip), and one
has a target made of two polygons. Everything comes from seeded numpy RNGs, so the set is the
same each time (same JSON; same pixels given the same Pillow). It is generated once into
`cache_root()/demo-v1/val` and read back through the real folder reader.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rescue_eval.datamodules.reasonseg import GeneratedReasonSegDataModule

DEMO_NAME = "demo-v1"  # bump when the generator changes, so old caches are not reused
NUM_SCENES = 16
WIDTH, HEIGHT = 320, 240
SEED = 20240601
TWO_TARGET_SCENE = 4  # a short-query scene ("the two ... "): target made of two polygons
FLAG_SCENES = (2, 7)

COLORS = {  # name -> (RGB, how a sentence query describes it)
    "red": ((215, 35, 35), "the color of a ripe tomato"),
    "green": ((40, 160, 60), "the color of fresh grass"),
    "blue": ((60, 130, 235), "the color of the sky"),
    "yellow": ((245, 215, 35), "the color of a ripe banana"),
    "orange": ((245, 135, 25), "the color of a pumpkin"),
    "purple": ((135, 60, 180), "the color of a ripe plum"),
}
SHAPES = {  # name -> how a sentence query describes it
    "circle": "is round",
    "rectangle": "has four straight sides and square corners",
    "triangle": "has exactly three corners",
}
SHADOW_RGB = (95, 90, 85)


def _outline(shape: str, cx: float, cy: float, size: float, rng: np.random.Generator) -> list[list[float]]:
    """Polygon points (labelme style, one decimal) of a shape of half-extent `size` centred at (cx, cy)."""
    if shape == "circle":
        angles = np.linspace(0.0, 2 * math.pi, 40, endpoint=False)
        points = [(cx + size * math.cos(a), cy + size * math.sin(a)) for a in angles]
    elif shape == "rectangle":
        half_height = size * rng.uniform(0.45, 0.65)  # clearly not a square
        points = [(cx - size, cy - half_height), (cx + size, cy - half_height),
                  (cx + size, cy + half_height), (cx - size, cy + half_height)]
    else:  # an upright triangle
        points = [(cx, cy - size), (cx + 0.95 * size, cy + 0.75 * size), (cx - 0.95 * size, cy + 0.75 * size)]
    return [[round(float(x), 1), round(float(y), 1)] for x, y in points]


def _shadow(cx: float, cy: float, size: float) -> list[list[float]]:
    """A flat ellipse at the foot of a shape, overlapping its lower edge."""
    angles = np.linspace(0.0, 2 * math.pi, 24, endpoint=False)
    return [[round(cx + 0.25 * size + 0.9 * size * math.cos(a), 1), round(cy + 0.85 * size + 0.28 * size * math.sin(a), 1)]
            for a in angles]


def _place(sizes: list[float], rng: np.random.Generator) -> list[tuple[float, float]]:
    """Centres such that shapes and their shadows (radius ~1.25 * size) neither overlap nor leave the image."""
    centres: list[tuple[float, float]] = []
    for size in sizes:
        reach = 1.25 * size
        for _ in range(500):
            x, y = rng.uniform(reach + 4, WIDTH - reach - 4), rng.uniform(reach + 4, HEIGHT - reach - 4)
            if all(math.dist((x, y), c) > reach + 1.25 * s + 6 for c, s in zip(centres, sizes)):
                centres.append((float(x), float(y)))
                break
        else:
            raise RuntimeError("demo scene layout failed: change SEED or the shape sizes")
    return centres


def _background(rng: np.random.Generator) -> Image.Image:
    """A pale, blotchy, grainy texture, so the scene is not trivially flat."""
    base = rng.uniform(180, 225, size=3)
    blotches = Image.fromarray(np.clip(128 + rng.normal(0, 14, size=(6, 8, 3)), 0, 255).astype(np.uint8))
    blotches = np.asarray(blotches.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), dtype=np.float64) - 128
    grain = rng.normal(0, 5, size=(HEIGHT, WIDTH, 1))
    return Image.fromarray(np.clip(base + blotches + grain, 0, 255).astype(np.uint8))


def _scene(index: int) -> tuple[Image.Image, dict]:
    rng = np.random.default_rng([SEED, index])
    is_sentence = index % 2 == 1
    with_shadows = index % 3 == 0
    color_names, shape_names = list(COLORS), list(SHAPES)
    target = (shape_names[int(rng.integers(len(shape_names)))], color_names[int(rng.integers(len(color_names)))])
    num_targets = 2 if index == TWO_TARGET_SCENE else 1
    num_distractors = int(rng.integers(2, 5)) - (num_targets - 1)  # 3-5 shapes in all
    distractors: list[tuple[str, str]] = []
    while len(distractors) < num_distractors:
        candidate = (shape_names[int(rng.integers(len(shape_names)))], color_names[int(rng.integers(len(color_names)))])
        if candidate != target:  # the query must name exactly the target
            distractors.append(candidate)
    objects = [target] * num_targets + distractors
    sizes = [float(rng.uniform(20, 34)) for _ in objects]
    centres = _place(sizes, rng)

    image = _background(rng)
    draw = ImageDraw.Draw(image)
    outlines = [_outline(shape, cx, cy, size, rng) for (shape, _), (cx, cy), size in zip(objects, centres, sizes)]
    if with_shadows:
        for (cx, cy), size in zip(centres, sizes):
            draw.polygon([tuple(p) for p in _shadow(cx, cy, size)], fill=SHADOW_RGB)
    for (_, color), points in zip(objects, outlines):
        draw.polygon([tuple(p) for p in points], fill=COLORS[color][0])

    shapes = []
    if index in FLAG_SCENES:  # a deprecated box around a distractor: readers must skip it
        (cx, cy), reach = centres[-1], 1.2 * sizes[-1]
        shapes.append({"label": "flag", "points": [[round(cx - reach, 1), round(cy - reach, 1)], [round(cx + reach, 1), round(cy - reach, 1)],
                                                   [round(cx + reach, 1), round(cy + reach, 1)], [round(cx - reach, 1), round(cy + reach, 1)]]})
    if with_shadows:  # the target's shadow is ambiguous: smaller than the target, so it wins the overlap
        shapes.append({"label": "ignore", "points": _shadow(*centres[0], sizes[0])})
    shapes += [{"label": "target", "points": outlines[i]} for i in range(num_targets)]

    shape, color = target
    short = f"the two {color} {shape}s" if num_targets == 2 else f"the {color} {shape}"
    long = f"Which object in the picture {SHAPES[shape]} and has {COLORS[color][1]}?"
    annotation = {
        "version": "5.0.1", "flags": {},
        "shapes": [{**s, "group_id": None, "shape_type": "polygon", "flags": {}} for s in shapes],
        "imagePath": f"demo_{index:02d}.jpg", "imageData": None, "imageHeight": HEIGHT, "imageWidth": WIDTH,
        "text": [long, short] if is_sentence else [short, f"{color} {shape}"],
        "is_sentence": is_sentence,
    }
    return image, annotation


def write_demo_split(folder: Path) -> None:
    """Write the demo scenes into `folder` as <id>.jpg + <id>.json (LISA's folder format)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(NUM_SCENES):
        image, annotation = _scene(index)
        image.save(folder / f"demo_{index:02d}.jpg", "JPEG", quality=90)
        with open(folder / f"demo_{index:02d}.json", "w", encoding="utf-8") as file:
            json.dump(annotation, file, indent=2)


def ensure_demo_set(root: str | Path | None = None) -> Path:
    """The demo root (holding val/), generated on first use; by default under `cache_root()`."""
    return DemoDataModule(root=str(root) if root else None).ensure()


class DemoDataModule(GeneratedReasonSegDataModule):
    """The demo set (one split, val), generated into the cache or `root` on first use."""

    CACHE_NAME, SPLIT, TITLE = DEMO_NAME, "val", "the demo set"

    def write_split(self, folder: Path) -> None:
        write_demo_split(folder)
