"""The demo world (datamodules/world.py): deterministic scenes whose query names exactly one
shape, training and demo splits that never share a picture, and a demo split that the harness
reads through its ReasonSeg folder reader."""
from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rescue_eval.datamodules import build_datamodule, world

pytestmark = pytest.mark.unit


def picture_hash(scene: world.Scene) -> str:
    return hashlib.sha256(np.asarray(scene.image).tobytes()).hexdigest()


@settings(max_examples=60, deadline=None)
@given(split=st.sampled_from(["train", "demo"]), index=st.integers(0, 10**6))
def test_the_query_names_exactly_the_target(split, index):
    scene = world.scene(split, index)
    ask = world.QUERIES[scene.reasoning]
    named = [j for j in range(len(scene.shapes)) if any(scene.query in pair for pair in ask(scene.shapes, j))]
    assert named == [scene.target], (scene.query, [s.name for s in scene.shapes])
    # the target is drawn last, so all of its polygon is visible
    visible = scene.instance_map() == scene.target + 1
    assert visible.sum() > 0.9 * scene.shapes[scene.target].area


def test_scenes_are_deterministic_and_the_splits_disjoint():
    again = world.scene("demo", 3)
    assert picture_hash(again) == picture_hash(world.scene("demo", 3))
    assert world.labelme(again, "x.jpg") == world.labelme(world.scene("demo", 3), "x.jpg")
    demo = {picture_hash(world.scene("demo", i)) for i in range(world.DEMO_SCENES)}
    train = {picture_hash(world.scene("train", i)) for i in range(1500)}
    assert len(demo) == world.DEMO_SCENES and not demo & train


def test_every_kind_of_query_and_both_phrasings_occur():
    scenes = [world.scene("train", i) for i in range(100)]
    assert Counter(s.reasoning for s in scenes) == {kind: 20 for kind in world.QUERIES}
    assert 30 < sum(s.is_sentence for s in scenes) < 70
    assert 15 < sum(s.ignore is not None for s in scenes) < 55
    sizes = [shape.size for s in scenes for shape in s.shapes]
    assert min(sizes) < 15 and max(sizes) > 27
    touching = sum(any(np.hypot(a.cx - b.cx, a.cy - b.cy) < a.size + b.size for a in s.shapes for b in s.shapes
                       if a is not b) for s in scenes)
    assert touching > 10


def test_the_demo_split_reads_through_the_reasonseg_reader(tmp_path):
    module = build_datamodule("world", root=str(tmp_path), split="demo")
    module.prepare_data()
    module.setup()
    samples = [module.dataset[i] for i in range(len(module.dataset))]
    assert len(samples) == world.DEMO_SCENES
    assert not [s.error for s in samples if s.error]
    assert {s.query for s in samples} == {world.scene("demo", i).query for i in range(world.DEMO_SCENES)}
    assert all((s.gt_mask == 1).sum() > 100 for s in samples)
    assert any((s.gt_mask == 255).any() for s in samples)  # the shadows' ignore pixels
