"""The RESCue search of one sample: plan, execute, score, verify, select, record.

Plain functions over data: the roles are any objects that implement the protocols in
`core/protocols.py`, local or remote. Each stage is one role call with this sample's one item;
the role server batches the items of the samples in flight, and a stage that fails fails this
sample alone, which is scored and counted as a failure.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from rescue_eval.core.errors import FatalError, is_transient
from rescue_eval.core.masks import (GroundTruth, box_iou, encode_rle, freeze, iou_rows, mask_box,
                                    sample_iou)
from rescue_eval.core.types import Hypothesis, PlanItem, Sample, ScoreItem, SegmentItem
from rescue_eval.core.agreement import PrefixAgreement
from rescue_eval.core.selection import (JudgeMemo, VerifierSettings, heuristic_selection, select_sweep, stable_seed,
                                       strategy)


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
    """A role call failed for this sample (the backend raised, or answered wrongly)."""


def call_role(role: str, fn, item):
    """fn([item]) -> the one answer; any failure but a fatal one becomes a RoleError. Batching,
    and keeping one request's failure from the others of its batch, is the role server's job."""
    try:
        answers = fn([item])
        if len(answers) != 1:
            raise RuntimeError(f"returned {len(answers)} answers for 1 item")
        return answers[0]
    except FatalError:
        raise
    except Exception as exc:  # noqa: BLE001 - any backend failure becomes a counted failure
        error = RoleError(f"{type(exc).__name__}: {exc}")
        error.transient = is_transient(exc)
        raise error from exc


def remove_duplicates(hypotheses: list[Hypothesis], iou_threshold: float) -> None:
    """Mark as duplicate every box too close to an earlier kept one, in index order.

    Greedy in the planner's fixed order keeps the result prefix-consistent: the kept set among
    the first N hypotheses is what an N-hypothesis run would keep. A duplicate names the kept
    hypothesis it repeats (`duplicate_of`), whose vote it adds to.
    """
    kept = []
    for h in hypotheses:
        if h.status != "ok":
            continue
        same = next((k for k in kept if box_iou(h.box, k.box) > iou_threshold), None)
        if same is not None:
            h.status, h.duplicate_of = "duplicate", same.index
        else:
            kept.append(h)


def votes(kept: list[Hypothesis], duplicates: list[Hypothesis], n: int) -> list[int]:
    """For each kept hypothesis among the first n, the hypotheses among the first n it stands for:
    itself and its duplicates."""
    return [1 + sum(d.duplicate_of == h.index and d.index < n for d in duplicates) for h in kept if h.index < n]


@dataclass
class _Work:
    """One sample on its way through the stages."""

    sample: Sample
    record: dict
    image: object = None
    all_hypotheses: list = None  # every planner output, in index order
    hypotheses: list = None  # those kept as candidates
    masks: list = None
    siglip: list = None

    @functools.cached_property
    def truth(self) -> GroundTruth | None:
        """The ground truth's parts, computed once for scoring the candidates and the empty prediction."""
        return GroundTruth(self.sample.gt_mask) if self.sample.gt_mask is not None else None

    @property
    def failed(self) -> bool:
        return self.record["failure"] is not None

    def stage(self, name: str, role: str, fn, item):
        """One role call, timed into the record; None (and the sample failed) when it fails."""
        start = time.perf_counter()
        try:
            return call_role(role, fn, item)
        except RoleError as exc:
            fail(self.record, f"{role}_error", str(exc), exc.transient)
            return None
        finally:
            self.record["timing"][name] = time.perf_counter() - start


def search_sample(sample: Sample, roles: Roles, settings: SearchSettings) -> dict:
    """Run the whole search for one sample and return its record."""
    w = _Work(sample, new_record(sample, settings.oracle_boxes))
    if sample.error is None:
        try:
            w.image = sample.decode_image()
            w.record["image_size"] = [w.image.height, w.image.width]
            gt = sample.gt_mask
            if settings.scored and (gt is None or gt.shape != (w.image.height, w.image.width)):
                sample.error = "gt_size_mismatch: ground truth missing or not the image's size"
        except Exception as exc:  # noqa: BLE001 - unreadable input is a counted failure
            sample.error = f"image_unreadable: {exc}"
    if sample.error is not None:
        fail(w.record, "bad_input", sample.error)
    if not w.failed:
        gt_box = mask_box(sample.gt_mask == 1) if settings.oracle_boxes else None
        hypotheses = w.stage("plan", "planner", roles.planner.propose,
                             PlanItem(w.image, sample.query, settings.max_n,
                                      stable_seed(settings.seed, sample.id), gt_box=gt_box))
        if hypotheses is not None:
            store_hypotheses(w, hypotheses, settings)
    if not w.failed:
        masks = w.stage("execute", "executor", roles.executor.segment,
                        SegmentItem(w.image, [h.box for h in w.hypotheses]))
        if masks is not None:
            w.masks = [freeze(m) for m in masks]  # read-only: each encoded to RLE once
    if not w.failed:
        scores = w.stage("score", "scorer", roles.scorer.score, ScoreItem(w.image, w.masks, sample.query))
        if scores is not None:
            w.siglip = [float(x) for x in scores]
    if not w.failed:
        start = time.perf_counter()
        try:
            verify(w, roles, settings)
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - a judge that raises fails this sample only
            fail(w.record, "judge_error", f"{type(exc).__name__}: {exc}", is_transient(exc))
        w.record["timing"]["verify"] = time.perf_counter() - start
    finish_record(w, settings)
    return w.record


def store_hypotheses(w: _Work, hs: list[Hypothesis], settings: SearchSettings) -> None:
    hs = sorted(hs, key=lambda h: h.index)  # the protocol's order, which prefixes rely on
    remove_duplicates(hs, settings.dedup_iou)
    w.all_hypotheses = hs
    w.hypotheses = [h for h in hs if h.status == "ok"]
    if not w.hypotheses:
        fail(w.record, "no_hypothesis", f"none of {len(hs)} planner outputs gave a usable box")
    w.record["hypotheses"] = [dict(vars(h)) for h in hs]  # flat: no deep copy (asdict) needed
    w.record["vlm"]["planner_tokens_in"] = sum(h.tokens_in for h in hs)
    w.record["vlm"]["planner_tokens_out"] = sum(h.tokens_out for h in hs)


def new_record(sample: Sample, oracle_boxes: bool = False) -> dict:
    return {"oracle_boxes": oracle_boxes, "warnings": list(sample.meta.get("warnings", [])),
        "id": sample.id, "query": sample.query, "subset": sample.subset,
        "source": dict(sample.meta.get("source", {})),  # the dataset's own keys for the row (RefCOCO: ref_id, ...)
        "failure": None, "error": None, "transient": False, "image_size": None,
        "hypotheses": [], "candidates": [], "judge": [], "sweep": {},
        "timing": {}, "vlm": {"judge_calls": 0, "judge_unusable": 0},
    }


def fail(record: dict, reason: str, message: str, transient: bool = False) -> None:
    """The first failure is the sample's; its error starts with a reason prefix ("planner_error:
    ...", or the dataset's own such as "image_unreadable: ..."), which the summary counts.
    `transient`: it may pass by itself (see `is_transient`), so the next run retries the sample."""
    if record["failure"] is None:
        record["failure"], record["transient"] = reason, transient
        record["error"] = message if reason == "bad_input" else f"{reason}: {message}"


def verify(w: _Work, roles: Roles, settings: SearchSettings) -> None:
    """Score every candidate against the ground truth (for the record and the oracle only, never
    for choosing) and run the verifier for each N of the sweep on the first N hypotheses."""
    gt = w.truth
    rles = [encode_rle(m) for m in w.masks]  # encoded once per mask, and not at all for masks from the wire
    # candidates are in hypothesis order, so the first N hypotheses' candidates are a prefix
    duplicates = [h for h in w.all_hypotheses if h.status == "duplicate"]
    agree = PrefixAgreement(iou_rows(rles), {n: votes(w.hypotheses, duplicates, n) for n in settings.sweep})
    sizes = {n: agree.size(n) for n in settings.sweep}
    with_all = agree.agreement(settings.max_n)
    for p, (h, mask) in enumerate(zip(w.hypotheses, w.masks)):
        candidate = {"index": h.index, "box": list(h.box), "strategy": h.strategy, "mask": rles[p],
                     "siglip": w.siglip[p], "agreement": float(with_all[p])}
        if gt is not None:
            inter, union = gt.intersection_union(mask)
            candidate.update(intersection=inter, union=union, iou=sample_iou(inter, union))
        w.record["candidates"].append(candidate)
    memo = None
    if roles.judge is not None and strategy(settings.verifier).uses_judge:
        memo = JudgeMemo(roles.judge.rate, roles.judge.duel, w.image, w.masks, w.sample.query,
                         stable_seed(settings.seed, w.sample.id, "judge"), settings.verifier.duel_order)
    for n, sel in select_sweep(sizes, agree, w.siglip, memo, settings.verifier).items():
        # the heuristic's choice too (no VLM; the same as `chosen` in heuristic mode): what the judge buys
        w.record["sweep"][str(n)] = {"chosen": sel.chosen, "cut_the_chase": sel.cut_the_chase,
                                     "judge_calls": sel.judge_calls, "hybrid": sel.hybrid,
                                     "heuristic": heuristic_selection(n, agree, w.siglip, settings.verifier).chosen}
    if memo is not None:
        for p, candidate in enumerate(w.record["candidates"]):
            candidate["vlm"] = memo.ratings.get(p)
        w.record["judge"] = memo.answers
        w.record["vlm"].update(judge_calls=len(memo.answers), judge_unusable=memo.unusable, judge_errors=memo.errors,
                               judge_tokens_in=sum(a["tokens_in"] for a in memo.answers),
                               judge_tokens_out=sum(a["tokens_out"] for a in memo.answers))


def finish_record(w: _Work, settings: SearchSettings) -> None:
    """Score the selection of every N against the ground truth; a failed sample is an empty
    prediction at every N. A sample whose ground truth is unreadable scores 0 and adds nothing
    to cIoU (its area is unknown)."""
    rec, gt = w.record, w.sample.gt_mask
    empty_scores = (0, w.truth.target_area) if gt is not None else None  # an empty prediction's counts
    for n in settings.sweep:
        entry = rec["sweep"].setdefault(str(n), {"chosen": None, "cut_the_chase": False, "judge_calls": 0})
        chosen = entry["chosen"] if not w.failed else None
        if chosen is not None:
            entry["index"] = w.hypotheses[chosen].index
        if not settings.scored:
            continue
        if gt is None:
            entry.update(intersection=0, union=0, iou=0.0, oracle_iou=0.0, heuristic_iou=0.0)
            continue
        # the chosen candidate was scored against the ground truth in verify
        inter, union = ((rec["candidates"][chosen]["intersection"], rec["candidates"][chosen]["union"])
                        if chosen is not None else empty_scores)
        prefix = [c["iou"] for c in rec["candidates"] if c["index"] < n] if not w.failed else []
        heuristic = entry.get("heuristic") if not w.failed else None
        entry.update(intersection=inter, union=union, iou=sample_iou(inter, union),
                     oracle_iou=max(prefix, default=sample_iou(*empty_scores)),
                     heuristic_iou=rec["candidates"][heuristic]["iou"] if heuristic is not None
                     else sample_iou(*empty_scores))
    top = rec["sweep"][str(settings.max_n)]
    if settings.scored:
        rec.update({k: top[k] for k in ("intersection", "union", "iou", "oracle_iou")})
    chosen = top["chosen"] if not w.failed else None
    rec["prediction"] = rec["candidates"][chosen]["mask"] if chosen is not None else (
        encode_rle(np.zeros(gt.shape, dtype=bool)) if gt is not None else None)
