"""gIoU / cIoU against an independent copy of LISA's evaluation (utils.intersectionAndUnionGPU
and the meters of its validate loop), on random masks with ignore regions."""
import numpy as np
import pytest
import torch

from rescue_eval.core.masks import EncodedMask, GroundTruth, encode_rle, intersection_union, sample_iou
from rescue_eval.core.metrics import FAILURE_REASONS, SplitMetrics, SweepIoU

pytestmark = pytest.mark.unit


def lisa_intersection_and_union(output, target, k=2, ignore_index=255):
    # LISA utils/utils.py intersectionAndUnionGPU, verbatim in substance
    output = output.view(-1).clone()
    target = target.view(-1)
    output[target == ignore_index] = ignore_index
    intersection = output[output == target]
    area_intersection = torch.histc(intersection, bins=k, min=0, max=k - 1)
    area_output = torch.histc(output, bins=k, min=0, max=k - 1)
    area_target = torch.histc(target, bins=k, min=0, max=k - 1)
    return area_intersection, area_output + area_target - area_intersection


def lisa_giou_ciou(preds, gts):
    inter_sum = torch.zeros(2, dtype=torch.float64)
    union_sum = torch.zeros(2, dtype=torch.float64)
    acc_iou_sum = torch.zeros(2, dtype=torch.float64)
    for p, g in zip(preds, gts):
        i, u = lisa_intersection_and_union(torch.tensor(p, dtype=torch.float32), torch.tensor(g, dtype=torch.float32))
        i, u = i.double(), u.double()
        acc = i / (u + 1e-5)
        acc[u == 0] += 1.0  # no-object target
        inter_sum += i
        union_sum += u
        acc_iou_sum += acc
    ciou = (inter_sum / (union_sum + 1e-10))[1].item()
    giou = (acc_iou_sum / len(preds))[1].item()
    return giou, ciou


def random_case(rng, h, w):
    gt = np.zeros((h, w), dtype=np.uint8)
    kind = rng.integers(0, 5)
    if kind > 0:  # a target rectangle, sometimes with an ignore band over part of it
        y, x = rng.integers(0, h - 1), rng.integers(0, w - 1)
        gt[y:y + rng.integers(1, h), x:x + rng.integers(1, w)] = 1
    if rng.random() < 0.6:
        y, x = rng.integers(0, h - 1), rng.integers(0, w - 1)
        gt[y:y + rng.integers(1, h // 2 + 1), x:x + rng.integers(1, w // 2 + 1)] = 255
    pred = rng.random((h, w)) < rng.choice([0.0, 0.05, 0.3, 0.7])
    if rng.random() < 0.5:  # a prediction that overlaps the target well
        pred = (gt == 1) ^ (rng.random((h, w)) < 0.05)
    return pred, gt


def scores_of(pred, gt):
    i, u = intersection_union(pred, gt)
    return {"intersection": [i], "union": [u], "iou": [sample_iou(i, u)], "oracle_iou": [sample_iou(i, u)],
            "heuristic_iou": [sample_iou(i, u)], "judge_calls": [0]}


def test_matches_lisa_on_random_masks_with_ignore():
    rng = np.random.default_rng(0)
    cases = [random_case(rng, int(rng.integers(2, 40)), int(rng.integers(2, 40))) for _ in range(400)]
    metric = SweepIoU([1])
    for pred, gt in cases:
        metric.update([scores_of(pred, gt)])
    ours = metric.compute()
    giou, ciou = lisa_giou_ciou([p.astype(np.uint8) for p, _ in cases], [g for _, g in cases])
    assert ours["giou"] == pytest.approx(giou, abs=1e-6)
    assert ours["ciou"] == pytest.approx(ciou, abs=1e-6)
    assert ours["n_samples"] == 400


def test_a_mask_still_in_rle_is_scored_exactly_as_its_pixels():
    """The driver scores masks from a remote executor on their runs (core.masks.EncodedMask)."""
    rng = np.random.default_rng(2)
    for _ in range(400):
        pred, gt = random_case(rng, int(rng.integers(2, 40)), int(rng.integers(2, 40)))
        truth = GroundTruth(gt)
        assert truth.intersection_union(EncodedMask(encode_rle(pred))) == truth.intersection_union(pred)
    with pytest.raises(ValueError, match="cannot be scored"):
        truth.intersection_union(EncodedMask(encode_rle(np.zeros((gt.shape[0] + 1, gt.shape[1]), bool))))


def test_empty_union_scores_one_and_ignore_counts_nowhere():
    gt = np.full((4, 4), 255, dtype=np.uint8)
    pred = np.ones((4, 4), dtype=bool)  # predicting the ignored region costs nothing
    assert intersection_union(pred, gt) == (0, 0)
    assert sample_iou(0, 0) == 1.0
    gt[0, 0] = 1
    assert intersection_union(pred, gt) == (1, 1)


def test_sharded_states_merge_to_identical_results():
    rng = np.random.default_rng(1)
    cases = [random_case(rng, 20, 30) for _ in range(101)]
    whole = SweepIoU([1])
    for c in cases:
        whole.update([scores_of(*c)])
    shards = [SweepIoU([1]) for _ in range(3)]
    for k, c in enumerate(cases):  # the runner's strided sharding
        shards[k % 3].update([scores_of(*c)])
    merged = shards[0]
    for other in shards[1:]:
        merged.merge_state({name: getattr(other, name) for name in merged._defaults})
    assert merged.compute() == whole.compute()  # exact: integer states, any order


def record(subset: str, intersection: int, union: int, failure: str | None = None, sweep=(1, 2)) -> dict:
    """The scored part of a JSONL record (what SplitMetrics reads), the same at every N."""
    row = {"intersection": intersection, "union": union, "iou": sample_iou(intersection, union),
           "oracle_iou": sample_iou(intersection, union), "heuristic_iou": 0.0, "judge_calls": 1}
    return {"subset": subset, "failure": failure, "sweep": {str(n): row for n in sweep}}


def test_failures_counted_and_subsets_split():
    m = SplitMetrics([1, 2], ["short", "long"])
    m.update_record(record("short", 0, 5, failure="planner_error"))
    m.update_record(record("long", 5, 5))
    s = m.compute()
    assert s["n_samples"] == 2 and s["n_failed"] == 1 and s["failures"] == {"planner_error": 1}
    assert s["giou"] == pytest.approx(0.5, abs=1e-5) and s["ciou"] == pytest.approx(0.5)
    assert s["subsets"]["short"]["giou"] == 0.0 and s["subsets"]["long"]["giou"] == pytest.approx(1.0, abs=1e-5)
    assert set(s["per_n"]) == {1, 2}


def test_records_added_in_batches_give_what_one_at_a_time_gives(monkeypatch):
    rng = np.random.default_rng(3)
    records = [record(str(rng.choice(["short", "long", "other"])), int(i), int(i + u),
                      failure=None if rng.random() < 0.8 else str(rng.choice(FAILURE_REASONS)))
               for i, u in rng.integers(0, 50, size=(3 * SplitMetrics.BATCH + 5, 2))]
    batched = SplitMetrics([1, 2], ["short", "long"])
    for r in records:  # crosses three batch boundaries, and leaves 5 records for compute to add
        batched.update_record(r)
    monkeypatch.setattr(SplitMetrics, "BATCH", 1)
    one_by_one = SplitMetrics([1, 2], ["short", "long"])
    for r in records:
        one_by_one.update_record(r)
    summary = batched.compute()
    assert summary == one_by_one.compute()
    assert summary["n_samples"] == len(records)
    assert sum(summary["subsets"][s]["n_samples"] for s in ("short", "long")) == sum(
        r["subset"] != "other" for r in records)


def test_an_unknown_failure_reason_is_an_error_not_an_uncounted_failure():
    m = SweepIoU([1])
    empty = scores_of(np.zeros((2, 2), bool), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError):
        m.update([{**empty, "failure": "planner_error"}, {**empty, "failure": "cosmic_ray"}])
    assert m.compute()["n_samples"] == 0  # the batch with a bad reason added nothing
    m.update([{**empty, "failure": reason} for reason in FAILURE_REASONS])
    assert m.compute()["failures"] == {reason: 1 for reason in FAILURE_REASONS}
