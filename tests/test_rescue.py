"""The search over a batch with rule-based role doubles: failures stay with their sample, the
first N' hypotheses of an N-run select exactly as an N'-run does."""
import io

import numpy as np
import pytest
from PIL import Image

from tests.doubles import AreaScorer, BoxFillSegmenter, RuleJudge, ScriptedPlanner
from rescue_eval.core.masks import decode_rle
from rescue_eval.core.search import Roles, SearchSettings, search_sample, sweep_values
from rescue_eval.core.types import Sample
from rescue_eval.core.selection import VerifierSettings

pytestmark = pytest.mark.unit

H, W = 48, 64
BOXES = [(0, 0, 20, 20), (30, 20, 60, 45), (0, 0, 21, 20), None, (10, 10, 40, 40), (32, 22, 58, 44),
         (5, 30, 25, 47), (40, 0, 63, 15)]


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (W, H), (90, 120, 150)).save(buf, "JPEG")
    return buf.getvalue()


def gt_mask():
    gt = np.zeros((H, W), dtype=np.uint8)
    gt[20:45, 30:60] = 1
    gt[20:25, 30:60] = 255  # an ignore band
    return gt


def sample(i, query="q", **kw):
    return Sample(id=f"s{i}", image_bytes=jpeg(), query=query, gt_mask=gt_mask(), subset="short", **kw)


def roles(judge_answer=False, fail_queries=()):
    ref = gt_mask() == 1
    return Roles(ScriptedPlanner({"q": BOXES, "bad": BOXES, "none": [None, None]}, fail_queries),
                 BoxFillSegmenter(), AreaScorer(), RuleJudge(ref, judge_answer))


def settings(max_n, mode="comparative"):
    return SearchSettings(max_n=max_n, dedup_iou=0.9, seed=0, verifier=VerifierSettings(mode=mode))


def test_sweep_values():
    assert sweep_values(1) == [1] and sweep_values(8) == [1, 2, 4, 8] and sweep_values(6) == [1, 2, 4, 6]


@pytest.mark.parametrize("mode", ["comparative", "heuristic"])
def test_first_n_of_a_big_run_equal_a_small_run(mode):
    big = search_sample(sample(0), roles(), settings(8, mode))
    for n in (1, 2, 4):
        small = search_sample(sample(0), roles(), settings(n, mode))
        assert small["sweep"][str(n)] == big["sweep"][str(n)]
        assert small["iou"] == big["sweep"][str(n)]["iou"]


def test_hypotheses_out_of_order_are_put_back_in_index_order():
    """The sweep's first N hypotheses must be the planner's first N, whatever order it answers in."""
    class ReversedPlanner(ScriptedPlanner):
        def propose(self, batch):
            return [hs[::-1] for hs in super().propose(batch)]

    in_order = search_sample(sample(0), roles(), settings(8))
    shuffled = roles()
    shuffled.planner = ReversedPlanner({"q": BOXES})
    reversed_rec = search_sample(sample(0), shuffled, settings(8))
    assert reversed_rec["sweep"] == in_order["sweep"] and reversed_rec["hypotheses"] == in_order["hypotheses"]


def test_record_contents_and_duplicates():
    rec = search_sample(sample(0), roles(), settings(8))
    statuses = [h["status"] for h in rec["hypotheses"]]
    assert statuses[2] == "duplicate" and statuses[3] == "parse_error"
    assert rec["hypotheses"][2]["duplicate_of"] == 0  # its vote goes to hypothesis 0
    assert [c["index"] for c in rec["candidates"]] == [0, 1, 4, 5, 6, 7]
    assert rec["failure"] is None and rec["iou"] == pytest.approx(1.0, abs=1e-6)  # the judge finds box 1
    assert decode_rle(rec["prediction"]).shape == (H, W)
    assert rec["sweep"]["8"]["oracle_iou"] == max(c["iou"] for c in rec["candidates"])
    assert rec["vlm"]["judge_calls"] == len(rec["judge"]) > 0
    assert set(rec["timing"]) == {"plan", "execute", "score", "verify"}
    # the heuristic's choice is recorded beside the judge's, with its IoU: here the judge's differs
    top = rec["sweep"]["8"]
    assert top["heuristic"] != top["chosen"] and top["heuristic_iou"] == rec["candidates"][top["heuristic"]]["iou"] < 0.9


def test_failures_stay_with_their_sample_and_score_as_empty():
    batch = [sample(0), sample(1, query="bad"), sample(2, query="none"),
             sample(3, error="image_unreadable: truncated"), sample(4)]
    r = roles(fail_queries=("bad",))
    recs = [search_sample(s, r, settings(4)) for s in batch]
    assert [x["failure"] for x in recs] == [None, "planner_error", "no_hypothesis", "bad_input", None]
    assert r.planner.calls == [1, 1, 1, 1]  # one item per call; the unreadable sample is not sent
    for x in recs[1:4]:
        assert x["intersection"] == 0 and x["iou"] == 0.0 and x["error"]
    assert recs[1]["union"] == int((gt_mask() == 1).sum())  # an empty prediction against the target
    assert recs[0]["iou"] == recs[4]["iou"] > 0.9


def test_unusable_judge_falls_back_to_the_hybrid_score():
    """Unusable duel verdicts make no one win by default: each duel goes to the better hybrid
    score, so the hybrid's leader is chosen, where a judge that always says "A" picks otherwise."""
    rec = search_sample(sample(0), roles(judge_answer=None), settings(8))
    duels = sum(a["kind"] == "duel" for a in rec["judge"])
    assert rec["failure"] is None and rec["vlm"]["judge_unusable"] == duels > 0
    top = rec["sweep"]["8"]
    assert top["chosen"] == int(np.argmax(top["hybrid"]))
    always_a = search_sample(sample(0), roles(judge_answer="A"), settings(8))
    assert always_a["sweep"]["8"]["hybrid"] == top["hybrid"] and always_a["sweep"]["8"]["chosen"] != top["chosen"]


def test_a_failed_write_leaves_no_half_line_and_says_why(tmp_path, monkeypatch):
    import errno
    import os

    from rescue_eval.core.errors import FatalError
    from rescue_eval.io.results import ResultWriter, load_records

    writer = ResultWriter(tmp_path, rank=0)
    writer.append({"id": "a", "x": 1})
    real_fsync = os.fsync

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(FatalError, match="No space left on device.*rerun to resume"):
        writer.append({"id": "b", "x": 2})
    monkeypatch.setattr(os, "fsync", real_fsync)
    writer.close()
    assert (tmp_path / "results" / "rank-0.jsonl").read_text() == '{"id":"a","x":1}\n'
    assert list(load_records(tmp_path)) == ["a"]


def test_an_unwritable_output_directory_is_one_sentence(tmp_path):
    from rescue_eval.core.errors import UsageError
    from rescue_eval.io.results import ResultWriter

    (tmp_path / "results").write_text("a file where the folder should be")
    with pytest.raises(UsageError, match="choose a writable --output"):
        ResultWriter(tmp_path, rank=0)
