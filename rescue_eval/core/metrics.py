"""gIoU, cIoU and oracle IoU as torchmetrics Metrics with sum-reduced states.

Policy (LISA's): ignore pixels (255) count in neither intersection nor union; per-sample
IoU = I / (U + 1e-5), 1.0 when U == 0; gIoU = mean per-sample IoU; cIoU = sum I / sum U.
A failed sample is scored as an empty prediction and counted by reason.

Every state is an int64 sum. Per-sample IoUs are summed in fixed point (2**-32 resolution,
far below 1e-6), because integer sums do not depend on the order of addition: the result is
bit-identical whatever the world size and however samples are sharded.
"""
from __future__ import annotations

import warnings

import torch
from torchmetrics import Metric

FIXED_POINT = 2 ** 32
CIOU_EPS = 1e-10  # LISA: iou_class = intersection_sum / (union_sum + 1e-10)

# the summed columns of SweepIoU, each an int64 per N
COLUMNS = ("intersection", "union", "iou_fixed", "oracle_fixed", "heuristic_fixed", "judge_calls")
FAILURE_REASONS = (
    "bad_input",        # the dataset row could not be read
    "no_hypothesis",    # the planner gave no usable box
    "planner_error",    # a role raised
    "executor_error",
    "scorer_error",
    "judge_error",
)


def to_fixed(values: list[float]) -> list[int]:
    return [int(round(v * FIXED_POINT)) for v in values]


class SweepIoU(Metric):
    """Scores of one split (or one subset of it) for every N of the sweep.

    `update` takes a batch of samples (`record_scores` dicts).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, sweep: list[int], **kwargs):
        super().__init__(**kwargs)
        self.sweep = list(sweep)
        # one row per summed column and one column per N: an update is one tensor added, where a
        # state per column cost a dozen small torch operations per sample on the driver
        self.add_state("sums", torch.zeros(len(COLUMNS), len(self.sweep), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("n_samples", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("failures", torch.zeros(len(FAILURE_REASONS), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, samples: list[dict]) -> None:
        """A batch of samples, each a `record_scores` dict: its intersection, union, IoU, oracle IoU
        and the heuristic selection's IoU for each N (same order as `sweep`), the judge calls an
        N-run would make, and its failure reason if any. Summed in Python's exact integers, then
        one tensor operation per state: each torch call releases the GIL, and on a busy rank each
        release can cost a thread switch (benchmarks/RESULTS.md, item 3)."""
        if not samples:
            return
        reasons = [FAILURE_REASONS.index(s["failure"]) for s in samples if s.get("failure") is not None]
        rows = [(s["intersection"], s["union"], to_fixed(s["iou"]), to_fixed(s["oracle_iou"]),
                 to_fixed(s["heuristic_iou"]), s["judge_calls"]) for s in samples]
        total = [[sum(per_n) for per_n in zip(*column)] for column in zip(*rows)]  # COLUMNS x sweep
        self.sums += torch.tensor(total, dtype=torch.int64)
        self.n_samples += len(samples)
        if reasons:
            self.failures += torch.bincount(torch.tensor(reasons), minlength=len(FAILURE_REASONS))

    def compute(self) -> dict:
        n = int(self.n_samples)
        per_n = {}
        for k, big_n in enumerate(self.sweep):
            intersection, union, iou, oracle, heuristic, calls = (int(v) for v in self.sums[:, k])
            per_n[big_n] = {
                "giou": iou / FIXED_POINT / n if n else 0.0,
                "ciou": intersection / (union + CIOU_EPS),
                "oracle_iou": oracle / FIXED_POINT / n if n else 0.0,
                "heuristic_giou": heuristic / FIXED_POINT / n if n else 0.0,
                "judge_calls": calls,
                "intersection": intersection,
                "union": union,
            }
        top = per_n[self.sweep[-1]]
        failures = {r: int(c) for r, c in zip(FAILURE_REASONS, self.failures) if int(c)}
        return {
            "giou": top["giou"], "ciou": top["ciou"], "oracle_iou": top["oracle_iou"],
            "n_samples": n, "n_failed": sum(failures.values()), "failures": failures,
            "per_n": per_n,
        }


class SplitMetrics:
    """One SweepIoU for the whole split and one per subset (e.g. short / long queries).

    The subsets are fixed up front so that every rank holds the same states to sync. Records are
    added to the states `BATCH` at a time, and the rest when the metrics are computed: the
    records on disk, not these states, are what a resumed run starts from."""

    BATCH = 64

    def __init__(self, sweep: list[int], subsets: list[str]):
        self.all = SweepIoU(sweep)
        self.subsets = {name: SweepIoU(sweep) for name in subsets}
        self._pending: list[tuple[str, dict]] = []  # (subset, record_scores) not yet in the states

    def update_record(self, record: dict) -> None:
        self._pending.append((record["subset"], record_scores(record, self.all.sweep)))
        if len(self._pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self.all.update([scores for _, scores in pending])
        for name, metric in self.subsets.items():
            if mine := [scores for subset, scores in pending if subset == name]:
                metric.update(mine)

    def compute(self) -> dict:
        self._flush()
        with warnings.catch_warnings():
            # a rank whose shard had no sample of a subset still syncs its zero states: expected
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method")
            summary = self.all.compute()
            summary["subsets"] = {name: m.compute() for name, m in self.subsets.items()}
        return summary


def record_scores(record: dict, sweep: list[int]) -> dict:
    """The metric inputs of one JSONL record (see rescue.finish_record)."""
    rows = [record["sweep"][str(n)] for n in sweep]
    return {"intersection": [r["intersection"] for r in rows], "union": [r["union"] for r in rows],
            "iou": [r["iou"] for r in rows], "oracle_iou": [r["oracle_iou"] for r in rows],
            # records written before the heuristic baseline was recorded: their own selection
            "heuristic_iou": [r.get("heuristic_iou", r["iou"]) for r in rows],
            "judge_calls": [r["judge_calls"] for r in rows], "failure": record["failure"]}


def record_counts(records) -> dict:
    """Counts that explain the scores: planner outputs by status (parse errors, degenerate and
    duplicate boxes), judge answers that could not be used, and VLM tokens."""
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}  # failed samples by the reason prefix of their error
    warnings: dict[str, int] = {}  # loaded, but worth knowing (e.g. gt_empty, polygon_short)
    transient: dict[str, int] = {}  # failed for a reason that may pass: the next run retries them
    vlm = {"judge_calls": 0, "judge_unusable": 0, "judge_errors": 0, "planner_tokens_in": 0, "planner_tokens_out": 0,
           "judge_tokens_in": 0, "judge_tokens_out": 0}
    for rec in records:
        for h in rec["hypotheses"]:
            statuses[h["status"]] = statuses.get(h["status"], 0) + 1
        if rec["error"]:
            prefix = rec["error"].split(":")[0]
            errors[prefix] = errors.get(prefix, 0) + 1
        if rec["failure"] and rec.get("transient"):
            transient[rec["failure"]] = transient.get(rec["failure"], 0) + 1
        for warning in rec.get("warnings", []):
            prefix = warning.split(":")[0]
            warnings[prefix] = warnings.get(prefix, 0) + 1
        for key in vlm:
            vlm[key] += rec["vlm"].get(key, 0)
    return {"hypotheses": dict(sorted(statuses.items())), "errors": dict(sorted(errors.items())),
            "warnings": dict(sorted(warnings.items())), "transient_failures": dict(sorted(transient.items())),
            "vlm": vlm}
