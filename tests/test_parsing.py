"""Lenient answer parsers: concrete formats models produce, and property tests over more than
10,000 generated outputs (truncated JSON, prose, think blocks, wrong key names, numbers as
strings, NaN, negative, inverted and out-of-range boxes, 0-1 / 0-1000 / pixel coordinates, empty
output): never an exception, and every box returned is valid for its image."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rescue_eval.models.parsing import parse_box, parse_rating, parse_verdict

pytestmark = pytest.mark.unit

W, H = 640, 480  # non-square, so swapped x/y scaling would show


# ---- concrete examples -------------------------------------------------------------------


@pytest.mark.parametrize("text, box", [
    ('{"bbox_2d":[100,200,300,400]}', (64.0, 96.0, 192.0, 192.0)),
    ('{"bbox_2d": [0, 0, 1000, 1000]}', (0.0, 0.0, 640.0, 480.0)),
    ('```json\n{"bbox_2d": [100, 200, 300, 400]}\n```', (64.0, 96.0, 192.0, 192.0)),
    ('The knife is here: {"bbox_2d": [100, 200, 300, 400]} as requested.', (64.0, 96.0, 192.0, 192.0)),
    ('<think>maybe {"bbox_2d":[1,2,3,4]}</think>{"bbox_2d":[100,200,300,400]}', (64.0, 96.0, 192.0, 192.0)),
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
    ('{"bbox_2d": [0.1, 0.4, 0.3, 0.8]}', (64.0, 192.0, 192.0, 384.0)),  # 0-1 fractions of the image
    ('{"bbox_2d": [0, 0, 1, 1]}', (0.0, 0.0, 640.0, 480.0)),  # all within [0, 1]: fractions too
    ('{"bbox_2d": [0, 0, 10, 20]}', (0.0, 0.0, 6.4, 9.6)),  # one value over 1: the grid
    ('{"x1": 100, "y1": 200, "x2": 300, "y2": 400}', (64.0, 96.0, 192.0, 192.0)),
    ('{"bbox": {"xmin": "100", "ymin": 200, "xmax": 300, "ymax": 400}}', (64.0, 96.0, 192.0, 192.0)),
    ('{"bbox_2d": [[100, 200], [300, 400]]}', (64.0, 96.0, 192.0, 192.0)),  # two corner points
    ('<thinking>{"bbox_2d":[1,2,3,4]}</thinking> {"bbox_2d":[100,200,300,400]}', (64.0, 96.0, 192.0, 192.0)),
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
# Families of what a broken or unconstrained model answers. The max_examples below add up to
# more than 10,000 generated outputs (4,000 + 1,000 + 1,000 + 1,000 + 500 + 3,000).

grid_value = st.integers(-200, 1200)  # the 0-1000 grid, overshooting both ways
fraction_value = st.floats(-0.1, 1.1)  # 0-1 coordinates
pixel_value = st.integers(-100, 6000)  # absolute pixels of a large image
extreme_value = st.integers() | st.floats(allow_nan=True, allow_infinity=True)  # json.dumps writes NaN, Infinity
coordinate = st.one_of(grid_value, fraction_value, pixel_value, extreme_value)
coordinate_text = st.one_of(
    coordinate.map(json.dumps),
    coordinate.map(lambda n: json.dumps(str(n))),  # numbers as strings
    st.sampled_from(['"NaN"', "NaN", "-Infinity", "1e999", "-0", '"12px"', "null", "true", '""', '"1,000"']),
)
one_convention = st.one_of(  # the four values of one box, all in one coordinate system
    *(st.lists(value, min_size=4, max_size=4) for value in (grid_value, fraction_value, pixel_value))
).map(lambda values: [json.dumps(v) for v in values])
box_key = st.sampled_from(["bbox_2d", "bbox", "box", "BBOX_2D", "bounding_box",  # names the parser knows
                           "label", "points", "point_2d", "bbx", "coords", "", "box_3d"])  # and others
corner_keys = st.sampled_from([("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax"), ("x", "y", "w", "h"),
                               ("left", "top", "width", "height")])
box_list = (one_convention | st.lists(coordinate_text, max_size=6)).map(lambda cs: "[" + ", ".join(cs) + "]")
box_object = st.one_of(
    st.builds(lambda key, box: '{"%s": %s}' % (key, box), box_key, box_list),
    st.builds(lambda keys, cs: "{" + ", ".join(f'"{k}": {c}' for k, c in zip(keys, cs)) + "}",
              corner_keys, one_convention | st.lists(coordinate_text, min_size=4, max_size=4)),
    st.builds(lambda key, a, b: '{"%s": [[%s, %s], [%s, %s]]}' % (key, *a, *b), box_key,
              st.lists(coordinate_text, min_size=2, max_size=2), st.lists(coordinate_text, min_size=2, max_size=2)),
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(box_key, children, max_size=3),
    max_leaves=12,
).map(json.dumps)
judge_core = st.one_of(
    st.builds(lambda key, v: '{"%s": %s}' % (key, v), st.sampled_from(["score", "rating", "Score", "grade", "points"]),
              coordinate_text),
    coordinate_text.map(lambda v: f"Score: {v}"), coordinate_text.map(lambda v: f"I'd say {v}/10."),
    st.builds(lambda key, v: '{"%s": "%s"}' % (key, v), st.sampled_from(["winner", "answer", "choice", "pick"]),
              st.sampled_from(["A", "B", "Image A", "mask b", "C", "", "both", "A or B"])),
    st.sampled_from(["A", "B", "Winner: B", "answer A", "AB", "neither"]),
)
WRAPPERS = ["{}", "```json\n{}\n```", "<think>{}</think>", "<think>let me look... {}</think>{}", "<think>{}",
            "<thinking>hmm</thinking>\n{}", "Sure! Here is the answer: {} Hope this helps.", "{}{}", "{}\n{}"]


@st.composite
def model_output(draw, core=None) -> str:
    """Something a (possibly broken) model could answer: a core, maybe truncated, maybe wrapped."""
    core = draw(core if core is not None else st.one_of(
        box_object, box_object, json_value, st.text(max_size=60), st.just(""),  # twice: boxes weigh more
        st.lists(box_object, min_size=1, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")))
    if draw(st.booleans()):  # stopped at the token limit
        core = core[:draw(st.integers(0, len(core)))]
    wrap = draw(st.sampled_from(WRAPPERS))
    return wrap.replace("{}", core, 1).replace("{}", draw(st.text(max_size=20) | box_object))


def assert_valid_box(box, status, width, height):
    assert status in ("ok", "parse_error", "degenerate")
    if status != "ok":
        assert box is None
        return
    x1, y1, x2, y2 = box
    assert all(isinstance(v, float) and math.isfinite(v) for v in box)
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert x2 - x1 >= 1 and y2 - y1 >= 1


image_side = st.integers(1, 5000)


@settings(max_examples=4000, deadline=None)
@given(text=model_output(), width=image_side, height=image_side)
def test_parse_box_never_raises_and_boxes_are_valid(text, width, height):
    assert_valid_box(*parse_box(text, width, height), width, height)


@settings(max_examples=1000, deadline=None)
@given(key=st.sampled_from(["bbox_2d", "bbox", "box", "Bbox_2d"]), coords=one_convention,
       wrap=st.sampled_from(WRAPPERS[:2] + WRAPPERS[5:7] + ["<think>the box is {}</think>{}"]),
       width=image_side, height=image_side)
def test_whole_boxes_in_any_convention_are_found(key, coords, wrap, width, height):
    text = wrap.replace("{}", '{"%s": [%s]}' % (key, ", ".join(coords)))
    box, status = parse_box(text, width, height)
    assert status != "parse_error"
    assert_valid_box(box, status, width, height)


@settings(max_examples=1000, deadline=None)
@given(text=st.text(max_size=200), width=image_side, height=image_side)
def test_parse_box_on_arbitrary_text(text, width, height):
    assert_valid_box(*parse_box(text, width, height), width, height)


def expected_box(corners, width, height, scale):
    xs = sorted(min(max(c * width / scale, 0), width) for c in corners[0::2])
    ys = sorted(min(max(c * height / scale, 0), height) for c in corners[1::2])
    return (xs[0], ys[0], xs[1], ys[1]) if xs[1] - xs[0] >= 1 and ys[1] - ys[0] >= 1 else None


@settings(max_examples=1000, deadline=None)
@given(key=st.sampled_from(["bbox_2d", "bbox", "box"]), corners=st.lists(st.integers(-500, 1500), min_size=4, max_size=4),
       width=st.integers(1, 4000), height=st.integers(1, 4000))
def test_grid_boxes_convert_order_and_clamp(key, corners, width, height):
    box, status = parse_box(json.dumps({key: corners}), width, height)
    scale = 1 if all(0 <= c <= 1 for c in corners) else 1000  # four values within [0, 1] are fractions
    expected = expected_box(corners, width, height, scale)
    assert (box, status) == ((pytest.approx(expected), "ok") if expected else (None, "degenerate"))


@settings(max_examples=500, deadline=None)
@given(corners=st.lists(st.floats(0, 1), min_size=4, max_size=4), width=image_side, height=image_side)
def test_fraction_boxes_scale_by_the_image(corners, width, height):
    box, status = parse_box(json.dumps({"bbox_2d": corners}), width, height)
    expected = expected_box(corners, width, height, 1)
    assert (box, status) == ((pytest.approx(expected), "ok") if expected else (None, "degenerate"))


@settings(max_examples=3000, deadline=None)
@given(text=model_output(judge_core) | model_output() | st.text(max_size=100))
def test_rating_and_verdict_never_raise(text):
    rating = parse_rating(text)
    assert rating is None or (math.isfinite(rating) and 0.0 <= rating <= 1.0)
    assert parse_verdict(text) in ("A", "B", None)


@settings(max_examples=200, deadline=None)
@given(score=st.integers(-20, 30))
def test_rating_scale(score):
    assert parse_rating(json.dumps({"score": score})) == pytest.approx(min(max(score, 0), 10) / 10)


@pytest.mark.parametrize("text, thinking", [
    ('<think>The format is {"winner": "A"} or {"winner": "B"}; A looks', False),  # cut short, opened here
    ('The format is {"winner": "A"} or {"winner": "B"}; A looks', True),  # cut short, opened by the template
    ('Score: 0 would mean the wrong object, so', True),
    ('<think>{"bbox_2d":[100,200,300,400]} seems right</think>', False),  # nothing after the reasoning
])
def test_reasoning_cut_short_is_no_answer(text, thinking):
    assert parse_verdict(text, thinking=thinking) is None
    assert parse_rating(text, thinking=thinking) is None
    assert parse_box(text, 640, 480, thinking=thinking) == (None, "parse_error")


def test_the_answer_after_the_reasoning_is_read_in_thinking_mode():
    text = 'Score: 0 would mean no match; {"winner": "A"} is the format. The mask fits.</think>\n{"score": 7}'
    assert parse_rating(text, thinking=True) == 0.7
    assert parse_verdict('A or B? A is cut off.</think>{"winner":"B"}', thinking=True) == "B"
