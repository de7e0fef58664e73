"""The pictures people look at: which samples the report shows and what their pictures say, the
plots' axes and reference line, `segment`'s overlay and note, all byte-for-byte deterministic."""
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageFont

from rescue_eval import segment
from rescue_eval.config import parse
from rescue_eval.core.masks import contour, encode_rle, hatch
from rescue_eval.core.search import Roles, SearchSettings, search_sample
from rescue_eval.core.selection import VerifierSettings
from rescue_eval.core.types import Sample
from rescue_eval.io.pictures import (GT_COLOR, PANEL_SIDE, PRED_COLOR, caption_lines, fit_lines, iou_figure,
                                     judge_calls_figure, pick_samples, sample_picture)
from rescue_eval.io.report import write_report
from tests.doubles import AreaScorer, BoxFillSegmenter, ScriptedPlanner

pytestmark = pytest.mark.unit

H, W = 60, 80
GT_BOX = (30, 20, 60, 45)  # x1, y1, x2, y2 of the target
# per query, the planner's boxes: the chosen one (largest area) decides the IoU
BOXES = {"exact": [GT_BOX], "half": [(30, 20, 45, 45)], "off": [(0, 0, 20, 15)], "most": [(30, 20, 55, 45)],
         "broken": [(0, 0, 10, 10)], "two": [(0, 0, 20, 15), (30, 20, 55, 45)]}


def png_bytes(color=(90, 120, 150)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (W, H), color).save(buf, "PNG")
    return buf.getvalue()


def gt_mask() -> np.ndarray:
    gt = np.zeros((H, W), np.uint8)
    x1, y1, x2, y2 = GT_BOX
    gt[y1:y2, x1:x2] = 1
    gt[y1:y1 + 4, x1:x2] = 255  # an ignore band along the top
    return gt


class FakeDataset:
    """What the report reads of a dataset: ids and samples by index."""

    def __init__(self, samples):
        self.samples = samples
        self.ids = [s.id for s in samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


def evaluated(queries: dict[str, str], unreadable=()) -> tuple[FakeDataset, dict[str, dict]]:
    """A dataset of `id -> query` and its records from a real search with rule-based doubles;
    the planner fails on "broken", and the ids in `unreadable` have bytes that are no image."""
    samples = [Sample(i, b"not an image" if i in unreadable else png_bytes(), q, gt_mask()) for i, q in queries.items()]
    roles = Roles(ScriptedPlanner(BOXES, fail_queries=("broken",)), BoxFillSegmenter(), AreaScorer(), None)
    settings = SearchSettings(max_n=2, verifier=VerifierSettings(mode="heuristic"))
    records = {s.id: search_sample(s, roles, settings) for s in samples}
    return FakeDataset(samples), records


def summary_of(records, name="demo", headline="giou") -> dict:
    per_n = {"1": {"giou": 0.40, "ciou": 0.35, "oracle_iou": 0.40, "judge_calls": 0},
             "2": {"giou": 0.50, "ciou": 0.45, "oracle_iou": 0.60, "judge_calls": 7}}
    return {"giou": 0.5, "ciou": 0.45, "oracle_iou": 0.6, "n_samples": len(records),
            "n_failed": sum(r["failure"] is not None for r in records.values()), "failures": {}, "per_n": per_n,
            "dataset": {"name": name, "split": "val", "headline": headline}}


# ---- which samples are shown ---------------------------------------------------------------

def test_worst_middle_and_best_by_iou_with_ties_broken_by_id():
    ious = {"k": 0.9, "j": 0.1, "a": 0.1, "e": 0.5, "b": 0.2, "c": 0.5, "d": 0.3, "f": 0.6, "g": 0.7, "h": 0.8,
            "i": 1.0, "l": 0.0}  # ties listed against id order, so only the tie-break puts a before j
    records = {i: {"iou": v} for i, v in ious.items()}
    # ascending: l a j b d c e f g h k i; the median lies between c and e
    assert pick_samples(records, 8) == {"worst": ["l", "a", "j"], "middle": ["c", "e"], "best": ["h", "k", "i"]}
    assert pick_samples(records, 4) == {"worst": ["l", "a"], "middle": ["e"], "best": ["i"]}
    assert pick_samples(records, 1) == {"worst": ["l"], "middle": [], "best": []}
    assert pick_samples(records, 0) == {"worst": [], "middle": [], "best": []}


def test_all_samples_are_shown_when_there_are_no_more_than_the_limit():
    records = {"x": {"iou": 0.5}, "y": {"iou": 0.2}, "z": {"iou": 0.9}}
    assert pick_samples(records, 8) == {"worst": ["y"], "middle": ["x"], "best": ["z"]}


# ---- what a picture says ----------------------------------------------------------------------

def test_caption_names_the_sample_its_iou_the_choice_and_the_query():
    _, records = evaluated({"s1": "half"})
    header, query = caption_lines(records["s1"])
    assert header.startswith("s1") and "IoU 50.00 %" in header  # ignore rows count in neither I nor U
    assert "N = 2: hypothesis 0 chosen (scripted)" in header
    assert query == "query: half"


def test_caption_of_a_failed_sample_says_its_reason_once():
    _, records = evaluated({"s9": "broken"})
    header, _, failure = caption_lines(records["s9"])
    assert "nothing chosen" in header and "IoU 0.00 %" in header
    assert failure == "failed (planner_error): RuntimeError: scripted planner failure"


def test_long_text_wraps_within_the_width_and_ends_in_an_ellipsis_when_cut():
    typeface = ImageFont.load_default(13)
    text = "Which object in the picture has exactly three corners and has the color of a pumpkin " * 4
    lines = fit_lines(text, typeface, 200, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith(" …")
    assert all(typeface.getlength(line) <= 200 for line in lines)
    assert " ".join(lines[:2]).split() == text.split()[:len(" ".join(lines[:2]).split())]
    assert fit_lines("short text", typeface, 200) == ["short text"]
    word = fit_lines("x" * 80, typeface, 100, max_lines=10)
    assert "".join(word) == "x" * 80 and len(word) > 1  # a word wider than a line is cut, not lost


def test_contours_leave_the_inside_alone_and_ignore_pixels_are_hatched():
    image = Image.new("RGB", (W, H), (40, 160, 60))  # the demo's green
    mask = np.zeros((H, W), bool)
    mask[20:40, 20:50] = True
    drawn = np.asarray(contour(image, mask, GT_COLOR, width=2))
    assert tuple(drawn[30, 35]) == (40, 160, 60) and tuple(drawn[5, 5]) == (40, 160, 60)
    assert tuple(drawn[30, 20]) == GT_COLOR and tuple(drawn[30, 19]) == GT_COLOR  # one pixel in, one out
    assert tuple(drawn[30, 18]) == (0, 0, 0) and tuple(drawn[30, 21]) == (0, 0, 0)  # the dark lines beside it
    hatched = np.asarray(hatch(image, mask))[mask]
    colours = {tuple(p) for p in hatched}
    assert {(0, 0, 0), (255, 255, 255), (40, 160, 60)} == colours


def test_sample_picture_puts_both_panels_over_a_caption_strip():
    dataset, records = evaluated({"s1": "half"})
    sample = dataset[0]
    picture = sample_picture(sample.decode_image(), sample.gt_mask, records["s1"])
    pixels = np.asarray(picture)
    assert picture.width >= 2 * W and picture.height > H + 40  # the caption is below, not on the image
    x0 = (picture.width - 2 * W - 8) // 2
    left, right = pixels[:H, x0:x0 + W], pixels[:H, x0 + W + 8:x0 + 2 * W + 8]
    assert (left == GT_COLOR).all(axis=-1).any() and not (left == PRED_COLOR).all(axis=-1).any()
    assert (right == PRED_COLOR).all(axis=-1).any() and not (right == GT_COLOR).all(axis=-1).any()
    assert tuple(left[21, 40]) in {(0, 0, 0), (255, 255, 255), (90, 120, 150)}  # the hatched ignore band
    assert tuple(left[35, 40]) == (90, 120, 150)  # inside the target: the image itself
    strip = pixels[H:]
    assert (strip < 100).all(axis=-1).sum() > 200  # text was written


def test_large_images_are_scaled_down_to_the_panel_size():
    image = Image.new("RGB", (2000, 1000), "gray")
    gt = np.zeros((1000, 2000), np.uint8)
    gt[100:600, 200:900] = 1
    record = {"id": "big", "query": "q", "iou": 0.0, "failure": None, "error": None, "candidates": [],
              "sweep": {"1": {"chosen": None}}, "prediction": encode_rle(gt == 1)}
    assert sample_picture(image, gt, record).width == 2 * PANEL_SIDE + 8


# ---- the report -----------------------------------------------------------------------------

QUERIES = {"s0": "exact", "s1": "half", "s2": "off", "s3": "most", "s4": "broken", "s5": "exact", "s6": "half",
           "s7": "off", "s8": "most", "s9": "exact"}


def test_report_shows_worst_middle_and_best_with_failures_and_unreadable_images(tmp_path):
    dataset, records = evaluated(QUERIES, unreadable=("s7",))
    (tmp_path / "overlays").mkdir()
    (tmp_path / "overlays" / "old_first_sample.png").write_bytes(png_bytes())  # an earlier selection's
    write_report(tmp_path, summary_of(records), records, dataset, overlays=5)
    report = (tmp_path / "report.md").read_text()
    # ascending IoU, ties by id: s2 s4 s7 (0) < s1 s6 (half) < s3 s8 (most) < s0 s5 s9 (exact)
    assert "## Samples by IoU at the largest N: 2 worst, 1 in the middle, 2 best of 10" in report
    worst = report.index("### Worst")
    assert worst < report.index("![s2](overlays/s2.png)") < report.index("![s4](overlays/s4.png)")
    assert report.index("### Middle") < report.index("![s6](overlays/s6.png)") < report.index("### Best")
    assert report.index("### Best") < report.index("![s5](overlays/s5.png)") < report.index("![s9](overlays/s9.png)")
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["s2.png", "s4.png", "s5.png", "s6.png",
                                                                           "s9.png"]
    failed = np.asarray(Image.open(tmp_path / "overlays" / "s4.png"))[:H]
    assert not (failed == PRED_COLOR).all(axis=-1).any()  # an empty prediction draws no contour
    assert "![IoU against N](plots/iou_vs_n.png)" in report
    assert "![Judge calls against N](plots/judge_calls_vs_n.png)" in report
    assert (tmp_path / "plots" / "judge_calls_vs_n.png").is_file()


def test_a_sample_whose_picture_cannot_be_drawn_is_listed_without_one(tmp_path):
    dataset, records = evaluated({"a": "off", "b": "exact"}, unreadable=("a",))
    write_report(tmp_path, summary_of(records), records, dataset, overlays=2)
    report = (tmp_path / "report.md").read_text()
    assert "- a (IoU 0.00): no picture (" in report and "![b](overlays/b.png)" in report
    assert [p.name for p in (tmp_path / "overlays").iterdir()] == ["b.png"]


def test_the_same_inputs_give_the_same_bytes(tmp_path):
    dataset, records = evaluated(QUERIES)
    for run in ("one", "two"):
        write_report(tmp_path / run, summary_of(records), records, dataset, overlays=8)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.*"))
    assert len(files) == 1 + 2 + 8  # report.md, two plots, eight overlays
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


# ---- the plots ------------------------------------------------------------------------------

@pytest.mark.parametrize("headline, value", [("giou", 40.0), ("ciou", 35.0)])
def test_iou_plot_starts_at_zero_with_the_n1_baseline_and_a_title(headline, value):
    fig = iou_figure(summary_of({}, name="reasonseg", headline=headline), headline)
    (ax,) = fig.axes
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 60  # the oracle IoU at N = 2 fits
    assert ax.get_title() == "IoU against N: reasonseg / val"
    baseline = [line for line in ax.get_lines() if line.get_label().startswith("N = 1 baseline")]
    assert len(baseline) == 1 and set(baseline[0].get_ydata()) == {value}
    assert {"gIoU", "cIoU", "oracle IoU"} <= {line.get_label() for line in ax.get_lines()}


def test_judge_calls_plot_starts_at_zero():
    fig = judge_calls_figure(summary_of({}))
    (ax,) = fig.axes
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1, 2] and list(line.get_ydata()) == [0, 7]
    assert ax.get_ylim()[0] == 0 and "Judge calls against N: demo / val" == ax.get_title()


# ---- segment --------------------------------------------------------------------------------

class NothingSegmenter:
    """Every box gets an empty mask."""

    def segment(self, batch):
        return [[np.zeros((item.image.height, item.image.width), bool) for _ in item.boxes] for item in batch]


def yellow(pixels: np.ndarray) -> np.ndarray:
    """Where the (antialiased) text of a note is."""
    return (pixels[..., 0] > 200) & (pixels[..., 1] > 200) & (pixels[..., 2] < 80)


def run_segment(monkeypatch, tmp_path, query, executor):
    roles = Roles(ScriptedPlanner(BOXES, fail_queries=("broken",)), executor, AreaScorer(), None)
    monkeypatch.setattr(segment, "prepare_checkpoints", lambda cfg: None)
    monkeypatch.setattr(segment, "start_servers", lambda *args, **kwargs: {})
    monkeypatch.setattr(segment, "clients", lambda *args, **kwargs: roles)
    image = tmp_path / "scene.png"
    image.write_bytes(png_bytes((40, 160, 60)))
    cfg, out = parse(["--output", str(tmp_path / "seg"), "--mode", "heuristic", "--max_n", "2"])
    record = segment.segment_image(cfg, image, query, out)
    return record, out


def test_segment_says_when_the_chosen_mask_is_empty(monkeypatch, tmp_path):
    record, out = run_segment(monkeypatch, tmp_path, "half", NothingSegmenter())
    assert record["failure"] is None
    assert record["note"] == "The chosen mask is empty (0 pixels): the segmenter found nothing in hypothesis 0's box."
    assert json.loads((out / "candidates.json").read_text())["note"] == record["note"]
    overlay = np.asarray(Image.open(out / "overlay.png"))
    assert overlay.shape == (H, W, 3)
    assert yellow(overlay[H - 20:]).sum() > 20  # the note, in yellow along the bottom


def test_segment_says_when_the_search_failed(monkeypatch, tmp_path):
    record, _ = run_segment(monkeypatch, tmp_path, "broken", BoxFillSegmenter())
    assert record["note"] == "No mask: the search failed (planner_error: RuntimeError: scripted planner failure)."


def test_segment_marks_the_chosen_box_apart_with_the_scores(monkeypatch, tmp_path):
    record, out = run_segment(monkeypatch, tmp_path, "two", BoxFillSegmenter())
    assert record["note"] is None and record["sweep"]["2"]["chosen"] == 1  # the larger box scores higher
    overlay = np.asarray(Image.open(out / "overlay.png"))
    assert not yellow(overlay).any()  # no note
    assert tuple(overlay[35, 53]) == PRED_COLOR  # the chosen box (30, 20, 55, 45): 3 pixels wide, magenta
    assert tuple(overlay[15, 10]) == (255, 255, 255) and tuple(overlay[16, 10]) == (0, 0, 0)  # the other: 1, white
    hybrid = record["sweep"]["2"]["hybrid"]
    first, chosen = record["candidates"]
    assert segment.candidate_tag(chosen, hybrid[1], chosen=True) == \
        f"#1 chosen h{hybrid[1]:.2f} s{chosen['siglip']:.2f} a0.00"
    assert segment.candidate_tag({**first, "vlm": 0.8}, None, chosen=False) == f"#0 s{first['siglip']:.2f} a0.00 v0.80"
