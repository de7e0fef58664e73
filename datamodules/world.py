"""The demo world: synthetic scenes of coloured shapes with ReasonSeg-style queries.

A scene is a 256 x 192 picture of 3-6 shapes (circles, triangles, squares, pentagons,
hexagons in six colours, of several sizes, some touching or overlapping) on a textured
background, and one query that names exactly one of them, by one of five kinds of reasoning:
naming ("the blue triangle"), a spatial relation ("the shape to the left of the blue
triangle"), a comparison ("the largest red object"), a function ("the one that could roll")
or a property ("the object with the most corners"). Half the scenes phrase the query as a short
noun phrase, half as a sentence (ReasonSeg's `is_sentence`); a third cast shadows, and the
target's shadow is an ignore region, as ReasonSeg marks ambiguous pixels.

Scene `i` of a split comes from the numpy generator seeded with (WORLD_SEED, SPLIT_SEEDS[split],
i): the training scenes and the demo scenes are drawn from different seed sequences and never
coincide (tests/test_world.py checks the pictures). The trained twins (models/trained) learn on
`train`; the demo evaluates on `demo`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rescue_eval.datamodules.reasonseg import GeneratedReasonSegDataModule

WORLD_NAME = "world-v2"  # the cache folder: bump when the generator or DEMO_SCENES changes
WORLD_SEED = 20261129
DEMO_SCENES = 240  # a paired difference of two selections has a standard error of about 2 points
SPLIT_SEEDS = {"train": 1, "demo": 2}
WIDTH, HEIGHT = 256, 192
CORNERS = {"circle": 0, "triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}
COLORS = {  # name -> (RGB, how a sentence describes it)
    "red": ((215, 35, 35), "the color of a ripe tomato"),
    "green": ((40, 160, 60), "the color of fresh grass"),
    "blue": ((50, 110, 235), "the color of a clear sky"),
    "yellow": ((245, 215, 35), "the color of a banana"),
    "orange": ((245, 135, 25), "the color of a pumpkin"),
    "purple": ((135, 60, 180), "the color of a plum"),
}
KIND_PHRASES = {  # how a sentence describes a kind of shape
    "circle": "is perfectly round", "triangle": "has three corners", "square": "has four equal sides",
    "pentagon": "has five corners", "hexagon": "has six corners",
}
DIRECTIONS = {  # relation -> (short phrase, sentence phrase, axis, sign): the nearest shape that way
    "left": ("the shape to the left of", "Which shape is the closest one on the left side of", 0, -1),
    "right": ("the shape to the right of", "Which shape is the closest one on the right side of", 0, 1),
    "above": ("the shape above", "Which shape sits closest above", 1, -1),
    "below": ("the shape below", "Which shape sits closest below", 1, 1),
}
SHADOW_RGB = (95, 90, 85)


@dataclass
class Shape:
    kind: str
    color: str
    cx: float
    cy: float
    size: float  # half extent in pixels
    points: list = field(default_factory=list)  # polygon, one decimal (labelme style)

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"

    @property
    def area(self) -> float:
        xs, ys = np.asarray(self.points).T
        return 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


@dataclass
class Scene:
    image: Image.Image
    shapes: list[Shape]  # in drawing order: the target is drawn last, whole
    target: int
    query: str
    is_sentence: bool
    reasoning: str  # which kind of query: name, relation, comparison, function, property
    ignore: list | None  # the target's shadow polygon, when the scene has shadows

    def instance_map(self) -> np.ndarray:
        """H x W int array: 1 + the index of the shape visible at each pixel, 0 for background."""
        canvas = Image.new("I", (WIDTH, HEIGHT), 0)
        draw = ImageDraw.Draw(canvas)
        for i, shape in enumerate(self.shapes):
            draw.polygon([tuple(p) for p in shape.points], fill=i + 1)
        return np.asarray(canvas, dtype=np.int32)


def outline(kind: str, cx: float, cy: float, size: float, turn: float) -> list[list[float]]:
    corners = CORNERS[kind] or 32  # a circle is a 32-gon
    start = -math.pi / 2 + (turn if kind != "square" else math.pi / 4)
    angles = start + np.arange(corners) * 2 * math.pi / corners
    return [[round(cx + size * math.cos(a), 1), round(cy + size * math.sin(a), 1)] for a in angles]


def shadow(shape: Shape) -> list[list[float]]:
    angles = np.linspace(0.0, 2 * math.pi, 20, endpoint=False)
    return [[round(shape.cx + 0.3 * shape.size + 0.9 * shape.size * math.cos(a), 1),
             round(shape.cy + 0.9 * shape.size + 0.3 * shape.size * math.sin(a), 1)] for a in angles]


def _layout(rng: np.random.Generator) -> list[Shape]:
    """3-6 shapes inside the picture; about one pair in four touches or overlaps."""
    shapes: list[Shape] = []
    for _ in range(int(rng.integers(3, 7))):
        kind, color = str(rng.choice(list(CORNERS))), str(rng.choice(list(COLORS)))
        size = float(rng.uniform(12, 30))
        for _ in range(200):
            cx, cy = rng.uniform(size + 2, WIDTH - size - 2), rng.uniform(size + 2, HEIGHT - size - 2)
            gap = 0.75 if rng.random() < 0.25 else 1.15  # overlap allowed, or clear space
            if all(math.dist((cx, cy), (s.cx, s.cy)) > gap * (size + s.size) for s in shapes):
                shapes.append(Shape(kind, color, float(cx), float(cy), size))
                break
    for s in shapes:
        s.points = outline(s.kind, s.cx, s.cy, s.size, float(rng.uniform(-0.3, 0.3)))
    return shapes


def _name_query(shapes, i):
    s = shapes[i]
    if [t.name for t in shapes].count(s.name) != 1:
        return []
    return [(f"the {s.name}", f"Which object in the picture {KIND_PHRASES[s.kind]} and has {COLORS[s.color][1]}?")]


def _offsets(anchor: Shape, s: Shape, axis: int, sign: int) -> tuple[float, float]:
    """How far `s` lies from `anchor` in the direction (axis, sign), and across it."""
    d = (s.cx - anchor.cx, s.cy - anchor.cy)
    return sign * d[axis], d[1 - axis]


def _relation_query(shapes, i):
    """Shape i is clearly the nearest one in a direction (within 45 degrees of it) from a shape
    with a unique name."""
    names, found = [s.name for s in shapes], []
    for short, sentence, axis, sign in DIRECTIONS.values():
        for a, anchor in enumerate(shapes):
            if a == i or names.count(anchor.name) != 1:
                continue
            ahead = sorted((along, j) for j, s in enumerate(shapes) if j != a
                           for along, across in [_offsets(anchor, s, axis, sign)]
                           if along > max(0.8 * anchor.size, abs(across)))
            if ahead and ahead[0][1] == i and (len(ahead) == 1 or ahead[1][0] - ahead[0][0] > 12):
                found.append((f"{short} the {anchor.name}", f"{sentence} the {anchor.name}?"))
    return found


def _comparison_query(shapes, i):
    color = shapes[i].color
    areas = sorted(s.area for s in shapes if s.color == color)
    if len(areas) < 2:
        return []
    if shapes[i].area == areas[-1] and areas[-1] > 1.3 * areas[-2]:
        return [(f"the largest {color} object", f"Among the {color} objects, which one takes up the most space?")]
    if shapes[i].area == areas[0] and areas[1] > 1.3 * areas[0]:
        return [(f"the smallest {color} object", f"Among the {color} objects, which one is the smallest?")]
    return []


def _function_query(shapes, i):
    if shapes[i].kind != "circle" or sum(s.kind == "circle" for s in shapes) != 1:
        return []
    return [("the one that could roll", "If the table were tilted, which of these objects would roll away?")]


def _property_query(shapes, i):
    corners = sorted((CORNERS[s.kind] for s in shapes), reverse=True)
    if CORNERS[shapes[i].kind] != corners[0] or corners[0] == corners[1]:
        return []
    return [("the object with the most corners", "Which shape has more corners than any other shape in the picture?")]


# kind of query -> every (short, sentence) phrasing of that kind that names shape i alone
QUERIES = {"name": _name_query, "relation": _relation_query, "comparison": _comparison_query,
           "function": _function_query, "property": _property_query}


def _background(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(170, 230, size=3)
    blotches = Image.fromarray(np.clip(128 + rng.normal(0, 16, size=(5, 7, 3)), 0, 255).astype(np.uint8))
    pixels = np.asarray(blotches.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), dtype=np.float64) - 128
    # in place: the same sums as np.clip(base + pixels + noise, 0, 255), and a scene takes 1.6 ms
    # instead of 3.4 (the demo twins' training draws about 60,000 scenes)
    pixels += base
    pixels += rng.normal(0, 5, size=(HEIGHT, WIDTH, 1))
    return np.clip(pixels, 0, 255, out=pixels).astype(np.uint8)


def scene(split: str, index: int) -> Scene:
    """Scene `index` of `split` ("train" or "demo"); the same on every call."""
    rng = np.random.default_rng([WORLD_SEED, SPLIT_SEEDS[split], index])
    reasoning = list(QUERIES)[index % len(QUERIES)]  # every kind equally often
    while True:  # a layout in which the kind of query names exactly one shape
        shapes = _layout(rng)
        found = [(i, q) for i in range(len(shapes)) for q in QUERIES[reasoning](shapes, i)]
        if found:
            break
    target, (short, sentence) = found[int(rng.integers(len(found)))]
    shapes.append(shapes.pop(target))  # drawn last: the target is never hidden
    is_sentence = bool(rng.random() < 0.5)
    pixels = _background(rng)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    with_shadows = rng.random() < 1 / 3
    if with_shadows:
        for s in shapes:
            draw.polygon([tuple(p) for p in shadow(s)], fill=SHADOW_RGB)
    for s in shapes:
        draw.polygon([tuple(p) for p in s.points], fill=COLORS[s.color][0])
    return Scene(image, shapes, len(shapes) - 1, sentence if is_sentence else short, is_sentence, reasoning,
                 shadow(shapes[-1]) if with_shadows else None)


def labelme(scene_: Scene, image_name: str) -> dict:
    """The scene's annotation in LISA's ReasonSeg JSON format."""
    shapes = [{"label": "target", "points": scene_.shapes[scene_.target].points}]
    if scene_.ignore:
        shapes.append({"label": "ignore", "points": scene_.ignore})
    return {"version": "5.0.1", "flags": {"reasoning": scene_.reasoning},
            "shapes": [{**s, "group_id": None, "shape_type": "polygon", "flags": {}} for s in shapes],
            "imagePath": image_name, "imageData": None, "imageHeight": HEIGHT, "imageWidth": WIDTH,
            "text": [scene_.query], "is_sentence": scene_.is_sentence}


def write_split(split: str, count: int, folder: Path) -> None:
    """Scenes 0..count-1 of `split` as <id>.jpg + <id>.json (LISA's folder format)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        scene_, name = scene(split, index), f"{split}_{index:03d}"
        scene_.image.save(folder / f"{name}.jpg", "JPEG", quality=95)
        (folder / f"{name}.json").write_text(json.dumps(labelme(scene_, f"{name}.jpg"), indent=1), encoding="utf-8")


class WorldDataModule(GeneratedReasonSegDataModule):
    """The demo world's held-out split `demo` (DEMO_SCENES scenes), generated into the cache or
    `root` on first use. The training scenes are for `rescue-eval train-demo`, not evaluation."""

    CACHE_NAME, SPLIT, TITLE = WORLD_NAME, "demo", "the demo world"

    def write_split(self, folder: Path) -> None:
        write_split("demo", DEMO_SCENES, folder)
