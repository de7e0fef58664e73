"""The RESCue search over a batch of samples: plan, execute, score, verify, select, record.

Plain functions over data: the roles are any objects that implement the protocols in
`models/protocols.py`, local or remote. Each stage is one batched call for the whole batch;
a batch call that raises is retried item by item so the error lands on the sample that caused
it, and that sample alone is scored as a failure.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from rescue_eval.errors import FatalError
from rescue_eval.masks import box_iou, encode_rle, intersection_union, iou_rows, mask_box, sample_iou
from rescue_eval.types import Hypothesis, PlanItem, Sample, ScoreItem, SegmentItem
from rescue_eval.verifier import JudgeMemo, PrefixAgreement, VerifierSettings, select_sweep, stable_seed


@dataclass
class Roles:
    planner: object
    executor: object
    scorer: object
    judge: object | None  # None in heuristic mode


@dataclass
class SearchSettings:
    max_n: int = 8
    dedup_iou: float = 0.9  # a box this close to an earlier kept box is a duplicate
    seed: int = 0
    verifier: VerifierSettings = None
    oracle_boxes: bool = False  # the planner sees the ground-truth box (gt_box ablation)
    scored: bool = True  # False: no ground truth (`rescue-eval segment`), nothing is scored

    @property
    def sweep(self) -> list[int]:
        return sweep_values(self.max_n)


def sweep_values(max_n: int) -> list[int]:
    """N = 1, 2, 4, ... up to max_n, and max_n itself."""
    values, n = [], 1
    while n < max_n:
        values.append(n)
        n *= 2
    return values + [max_n]


class RoleError(Exception):
    def __init__(self, role: str, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.role = role


def call_batched(role: str, fn, items: list) -> list:
    """fn(items), falling back to one call per item when the batch raises; an item that still
    fails gets a RoleError in place of its answer."""
    if not items:
        return []
    try:
        answers = fn(items)
        if len(answers) == len(items):
            return answers
        error: Exception = RuntimeError(f"returned {len(answers)} answers for {len(items)} items")
    except FatalError:
        raise
    except Exception as exc:  # noqa: BLE001 - any backend failure becomes a counted failure
        error = exc
    if len(items) == 1:
        return [RoleError(role, error)]
    return [call_batched(role, fn, [item])[0] for item in items]


def remove_duplicates(hypotheses: list[Hypothesis], iou_threshold: float) -> None:
    """Mark as duplicate every box too close to an earlier kept one, in index order.

    Greedy in the planner's fixed order keeps the result prefix-consistent: the kept set among
    the first N hypotheses is what an N-hypothesis run would keep.
    """
    kept = []
    for h in hypotheses:
        if h.status != "ok":
            continue
        if any(box_iou(h.box, k.box) > iou_threshold for k in kept):
            h.status = "duplicate"
        else:
            kept.append(h)


@dataclass
class _Work:
    """One sample on its way through the stages."""

    sample: Sample
    record: dict
    image: object = None
    hypotheses: list = None
    masks: list = None
    siglip: list = None

    @property
    def failed(self) -> bool:
        return self.record["failure"] is not None


def _stage(works: list[_Work], name: str, role: str, fn, make_item, store) -> None:
    """One batched role call for every sample still in the running."""
    live = [w for w in works if not w.failed]
    start = time.perf_counter()
    answers = call_batched(role, fn, [make_item(w) for w in live])
    per_sample = (time.perf_counter() - start) / max(len(live), 1)
    for w, answer in zip(live, answers):
        w.record["timing"][name] = per_sample  # a batched stage's wall time, shared by the batch
        if isinstance(answer, RoleError):
            fail(w.record, f"{role}_error", str(answer))
        else:
            store(w, answer)


def search_batch(samples: list[Sample], roles: Roles, settings: SearchSettings) -> list[dict]:
    """Run the whole search for a batch of samples and return one record per sample."""
    works = [_Work(s, new_record(s, settings.oracle_boxes)) for s in samples]
    for w in works:
        if w.sample.error is None:
            try:
                w.image = w.sample.decode_image()
                w.record["image_size"] = [w.image.height, w.image.width]
                gt = w.sample.gt_mask
                if settings.scored and (gt is None or gt.shape != (w.image.height, w.image.width)):
                    w.sample.error = "gt_size_mismatch: ground truth missing or not the image's size"
            except Exception as exc:  # noqa: BLE001 - unreadable input is a counted failure
                w.sample.error = f"image_unreadable: {exc}"
        if w.sample.error is not None:
            fail(w.record, "bad_input", w.sample.error)

    def store_hypotheses(w: _Work, hs: list[Hypothesis]) -> None:
        hs = sorted(hs, key=lambda h: h.index)  # the protocol's order, which prefixes rely on
        remove_duplicates(hs, settings.dedup_iou)
        w.hypotheses = [h for h in hs if h.status == "ok"]
        if not w.hypotheses:
            fail(w.record, "no_hypothesis", f"none of {len(hs)} planner outputs gave a usable box")
        w.record["hypotheses"] = [dict(vars(h)) for h in hs]  # flat: no deep copy (asdict) needed
        w.record["vlm"]["planner_tokens_in"] = sum(h.tokens_in for h in hs)
        w.record["vlm"]["planner_tokens_out"] = sum(h.tokens_out for h in hs)

    _stage(works, "plan", "planner", roles.planner.propose,
           lambda w: PlanItem(w.image, w.sample.query, settings.max_n, stable_seed(settings.seed, w.sample.id),
                              gt_box=mask_box(w.sample.gt_mask == 1) if settings.oracle_boxes else None),
           store_hypotheses)
    _stage(works, "execute", "executor", roles.executor.segment,
           lambda w: SegmentItem(w.image, [h.box for h in w.hypotheses]),
           lambda w, masks: setattr(w, "masks", [np.asarray(m, dtype=bool) for m in masks]))
    _stage(works, "score", "scorer", roles.scorer.score,
           lambda w: ScoreItem(w.image, w.masks, w.sample.query),
           lambda w, scores: setattr(w, "siglip", [float(x) for x in scores]))
    for w in works:
        if not w.failed:
            start = time.perf_counter()
            try:
                verify(w, roles, settings)
            except FatalError:
                raise
            except Exception as exc:  # noqa: BLE001 - a judge that raises fails this sample only
                fail(w.record, "judge_error", f"{type(exc).__name__}: {exc}")
            w.record["timing"]["verify"] = time.perf_counter() - start
        finish_record(w, settings)
    return [w.record for w in works]


def new_record(sample: Sample, oracle_boxes: bool = False) -> dict:
    return {"oracle_boxes": oracle_boxes, "warnings": list(sample.meta.get("warnings", [])),
        "id": sample.id, "query": sample.query, "subset": sample.subset,
        "failure": None, "error": None, "image_size": None,
        "hypotheses": [], "candidates": [], "judge": [], "sweep": {},
        "timing": {}, "vlm": {"judge_calls": 0, "judge_unusable": 0},
    }


def fail(record: dict, reason: str, message: str) -> None:
    """The first failure is the sample's; its error starts with a reason prefix ("planner_error:
    ...", or the dataset's own such as "image_unreadable: ..."), which the summary counts."""
    if record["failure"] is None:
        record["failure"] = reason
        record["error"] = message if reason == "bad_input" else f"{reason}: {message}"


def verify(w: _Work, roles: Roles, settings: SearchSettings) -> None:
    """Score every candidate against the ground truth (for the record and the oracle only, never
    for choosing) and run the verifier for each N of the sweep on the first N hypotheses."""
    gt = w.sample.gt_mask
    rles = [encode_rle(m) for m in w.masks]  # free for masks that came over the wire
    # candidates are in hypothesis order, so the first N hypotheses' candidates are a prefix
    sizes = {n: sum(h.index < n for h in w.hypotheses) for n in settings.sweep}
    agree = PrefixAgreement(iou_rows(rles), [*sizes.values(), len(rles)])
    with_all = agree.agreement(len(rles))
    for p, (h, mask) in enumerate(zip(w.hypotheses, w.masks)):
        candidate = {"index": h.index, "box": list(h.box), "strategy": h.strategy, "mask": rles[p],
                     "siglip": w.siglip[p], "agreement": float(with_all[p])}
        if gt is not None:
            inter, union = intersection_union(mask, gt)
            candidate.update(intersection=inter, union=union, iou=sample_iou(inter, union))
        w.record["candidates"].append(candidate)
    memo = None
    if roles.judge is not None and settings.verifier.mode == "comparative":
        memo = JudgeMemo(roles.judge.rate, roles.judge.duel, w.image, w.masks, w.sample.query,
                         stable_seed(settings.seed, w.sample.id, "judge"), settings.verifier.duel_order)
    for n, sel in select_sweep(sizes, agree, w.siglip, memo, settings.verifier).items():
        w.record["sweep"][str(n)] = {"chosen": sel.chosen, "cut_the_chase": sel.cut_the_chase,
                                     "judge_calls": sel.judge_calls, "hybrid": sel.hybrid}
    if memo is not None:
        for p, candidate in enumerate(w.record["candidates"]):
            candidate["vlm"] = memo.ratings.get(p)
        w.record["judge"] = memo.answers
        w.record["vlm"].update(judge_calls=len(memo.answers), judge_unusable=memo.unusable,
                               judge_tokens_in=sum(a["tokens_in"] for a in memo.answers),
                               judge_tokens_out=sum(a["tokens_out"] for a in memo.answers))


def finish_record(w: _Work, settings: SearchSettings) -> None:
    """Score the selection of every N against the ground truth; a failed sample is an empty
    prediction at every N. A sample whose ground truth is unreadable scores 0 and adds nothing
    to cIoU (its area is unknown)."""
    rec, gt = w.record, w.sample.gt_mask
    empty = np.zeros(gt.shape, dtype=bool) if gt is not None else None
    empty_scores = intersection_union(empty, gt) if gt is not None else None
    for n in settings.sweep:
        entry = rec["sweep"].setdefault(str(n), {"chosen": None, "cut_the_chase": False, "judge_calls": 0})
        chosen = entry["chosen"] if not w.failed else None
        if chosen is not None:
            entry["index"] = w.hypotheses[chosen].index
        if not settings.scored:
            continue
        if gt is None:
            entry.update(intersection=0, union=0, iou=0.0, oracle_iou=0.0)
            continue
        # the chosen candidate was scored against the ground truth in verify
        inter, union = ((rec["candidates"][chosen]["intersection"], rec["candidates"][chosen]["union"])
                        if chosen is not None else empty_scores)
        prefix = [c["iou"] for c in rec["candidates"] if c["index"] < n] if not w.failed else []
        entry.update(intersection=inter, union=union, iou=sample_iou(inter, union),
                     oracle_iou=max(prefix, default=sample_iou(*empty_scores)))
    top = rec["sweep"][str(settings.max_n)]
    if settings.scored:
        rec.update({k: top[k] for k in ("intersection", "union", "iou", "oracle_iou")})
    chosen = top["chosen"] if not w.failed else None
    rec["prediction"] = rec["candidates"][chosen]["mask"] if chosen is not None else (
        encode_rle(empty) if empty is not None else None)
