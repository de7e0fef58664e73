"""Lenient answer parsers: concrete formats models produce, and property tests over thousands of
generated outputs (random text, JSON fragments, truncation, NaN, inverted and out-of-range
boxes, fences, think blocks): never an exception, and every box returned is valid."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.parsing import parse_box, parse_rating, parse_verdict

W, H = 640, 480  # non-square, so swapped x/y scaling would show


# ---- concrete examples -------------------------------------------------------------------


@pytest.mark.parametrize("text, box", [
    ('{"bbox_2d":[100,200,300,400]}', (64.0, 96.0, 192.0, 192.0)),
    ('{"bbox_2d": [0, 0, 1000, 1000]}', (0.0, 0.0, 640.0, 480.0)),
    ('```json\n{"bbox_2d": [100, 200, 300, 400]}\n```', (64.0, 96.0, 192.0, 192.0)),
    ('The knife is here: {"bbox_2d": [100, 200, 300, 400]} as requested.', (64.0, 96.0, 192.0, 192.0)),
    ('<think>maybe {"bbox_2d":[1,2,3,4]}</think>{"bbox_2d":[100,200,300,400]}', (64.0, 96.0, 192.0, 192.0)),
    ('<think>unclosed reasoning {"bbox_2d":[100,200,300,400]}', (64.0, 96.0, 192.0, 192.0)),
    ('[{"bbox_2d": [100, 200, 300, 400], "label": "knife"}, {"bbox_2d": [0, 0, 10, 10]}]',
     (64.0, 96.0, 192.0, 192.0)),
    ('{"bbox_2d": ["100", "200", "300", "400"]}', (64.0, 96.0, 192.0, 192.0)),
    ('{"bbox": [100, 200, 300, 400]}', (64.0, 96.0, 192.0, 192.0)),
    ('{"box": [100.5, 200, 300, 400]}', (64.32, 96.0, 192.0, 192.0)),
    ('{"bbox_2d": [[100, 200, 300, 400]]}', (64.0, 96.0, 192.0, 192.0)),
    ('[100, 200, 300, 400]', (64.0, 96.0, 192.0, 192.0)),
    ('{"bbox_2d":[100,200,300,40', (64.0, 19.2, 192.0, 96.0)),  # truncated: 4 numbers recovered
    ('{"bbox_2d": ["100", "200", 300, 400', (64.0, 96.0, 192.0, 192.0)),
    ("bbox: (100, 200, 300, 400) is my answer", (64.0, 96.0, 192.0, 192.0)),
    ('{"bbox_2d":[300,400,100,200]}', (64.0, 96.0, 192.0, 192.0)),  # inverted corners are ordered
    ('{"bbox_2d":[-50,200,1300,400]}', (0.0, 96.0, 640.0, 192.0)),  # clamped to the image
])
def test_parse_box_formats(text, box):
    parsed, status = parse_box(text, W, H)
    assert status == "ok"
    assert parsed == pytest.approx(box)


@pytest.mark.parametrize("text, status", [
    ("", "parse_error"),
    ("I cannot find it.", "parse_error"),
    ('{"bbox_2d":[100,200', "parse_error"),
    ('{"bbox_2d": [1, 2, 3]}', "parse_error"),
    ('{"label": "knife"}', "parse_error"),
    ('{"bbox": 5, "x": 1, "y": 2, "z": 3}', "parse_error"),  # numbers outside a box list
    ('{"bbox_2d":[100,200,100,400]}', "degenerate"),  # zero width
    ('{"bbox_2d":[100,200,101,400]}', "degenerate"),  # 0.64 px wide
    ('{"bbox_2d":[NaN,200,300,400]}', "degenerate"),
    ('{"bbox_2d":[Infinity,200,300,400]}', "degenerate"),
    ('{"bbox_2d":[1e999,200,300,400]}', "degenerate"),
    ('{"bbox_2d":[2000,200,3000,400]}', "degenerate"),  # entirely right of the image
])
def test_parse_box_failures(text, status):
    assert parse_box(text, W, H) == (None, status)


@pytest.mark.parametrize("text, value", [
    ('{"score":7}', 0.7), ('{"score": 10}', 1.0), ('```json\n{"score": 3}\n```', 0.3),
    ('{"score": 15}', 1.0), ('{"score": -2}', 0.0), ('{"rating": "8"}', 0.8),
    ("Score: 6", 0.6), ("I'd give it 9/10.", 0.9), ("5", 0.5), ('<think>score 1</think>{"score":4}', 0.4),
    ('{"score":', None), ("no idea", None), ('{"score": NaN}', None), ("", None),
])
def test_parse_rating(text, value):
    assert parse_rating(text) == (pytest.approx(value) if value is not None else None)


@pytest.mark.parametrize("text, verdict", [
    ('{"winner":"A"}', "A"), ('{"winner": "B"}', "B"), ('```json\n{"winner": "Image B"}\n```', "B"),
    ("Winner: A", "A"), ("B", "B"), ('<think>A looks wrong</think>{"winner":"B"}', "B"),
    ('{"winner": "C"}', None), ('{"winner":"', None), ("both are fine", None), ("", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


# ---- properties over generated outputs ---------------------------------------------------

number = st.one_of(
    st.integers(-2000, 3000), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "1000", "0"]),
)
number_text = number.map(lambda n: n if isinstance(n, str) else json.dumps(n))
box_key = st.sampled_from(["bbox_2d", "bbox", "box", "BBOX_2D", "label", "points", ""])
coords = st.one_of(
    st.lists(number_text | number_text.map(lambda n: f'"{n}"'), min_size=0, max_size=6),
    st.lists(st.integers(-100, 1100).map(str), min_size=4, max_size=4),  # near-valid boxes
)
box_json = st.builds(lambda key, cs: '{"%s": [%s]}' % (key, ", ".join(cs)), box_key, coords)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(box_key, children, max_size=3),
    max_leaves=12,
).map(lambda v: json.dumps(v))


@st.composite
def model_output(draw) -> str:
    """Something a (possibly broken) model could answer: a core, maybe truncated, maybe wrapped."""
    core = draw(st.one_of(box_json, json_value, st.text(max_size=60),
                          st.lists(box_json, min_size=1, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")))
    if draw(st.booleans()):
        core = core[:draw(st.integers(0, len(core)))]
    wrap = draw(st.sampled_from(["{}", "```json\n{}\n```", "<think>{}</think>", "<think>x</think>{}",
                                 "<think>{}", "Answer: {} done.", "{}{}"]))
    return wrap.replace("{}", core, 1).replace("{}", draw(st.text(max_size=20)))


def assert_valid_box(box, status, width, height):
    assert status in ("ok", "parse_error", "degenerate")
    if status != "ok":
        assert box is None
        return
    x1, y1, x2, y2 = box
    assert all(math.isfinite(v) for v in box)
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert x2 - x1 >= 1 and y2 - y1 >= 1


@settings(max_examples=3000, deadline=None)
@given(text=model_output(), width=st.integers(1, 5000), height=st.integers(1, 5000))
def test_parse_box_never_raises_and_boxes_are_valid(text, width, height):
    box, status = parse_box(text, width, height)
    assert_valid_box(box, status, width, height)


@settings(max_examples=1000, deadline=None)
@given(text=st.text(max_size=200), width=st.integers(1, 5000), height=st.integers(1, 5000))
def test_parse_box_on_arbitrary_text(text, width, height):
    assert_valid_box(*parse_box(text, width, height), width, height)


@settings(max_examples=1000, deadline=None)
@given(key=st.sampled_from(["bbox_2d", "bbox", "box"]),
       corners=st.lists(st.integers(-500, 1500), min_size=4, max_size=4),
       width=st.integers(1, 4000), height=st.integers(1, 4000))
def test_integer_boxes_convert_order_and_clamp(key, corners, width, height):
    box, status = parse_box(json.dumps({key: corners}), width, height)
    xs = sorted(min(max(c * width / 1000, 0), width) for c in corners[0::2])
    ys = sorted(min(max(c * height / 1000, 0), height) for c in corners[1::2])
    if xs[1] - xs[0] >= 1 and ys[1] - ys[0] >= 1:
        assert status == "ok" and box == pytest.approx((xs[0], ys[0], xs[1], ys[1]))
    else:
        assert (box, status) == (None, "degenerate")


@settings(max_examples=2000, deadline=None)
@given(text=model_output() | st.text(max_size=100))
def test_rating_and_verdict_never_raise(text):
    rating = parse_rating(text)
    assert rating is None or (math.isfinite(rating) and 0.0 <= rating <= 1.0)
    assert parse_verdict(text) in ("A", "B", None)


@settings(max_examples=500, deadline=None)
@given(score=st.integers(-20, 30))
def test_rating_scale(score):
    assert parse_rating(json.dumps({"score": score})) == pytest.approx(min(max(score, 0), 10) / 10)
