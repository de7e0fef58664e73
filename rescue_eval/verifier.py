"""The Verifier: choose one mask among candidates (plain functions over arrays, no process group).

Per candidate set: "cut the chase" when the masks already agree, else a hybrid score
(VLM rating + SigLIP2 + agreement) and a pyramid tournament of A/B duels judged by the VLM.
The judge is reached through `JudgeMemo`, which asks each question once per sample, so the
per-N sweep reuses pointwise ratings and duels while still counting the calls an N-run makes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from rescue_eval.types import DuelItem, JudgeAnswer, RateItem


@dataclass
class VerifierSettings:
    mode: Literal["comparative", "heuristic"] = "comparative"
    weight_vlm: float = 0.5
    weight_siglip: float = 0.35
    weight_agreement: float = 0.15
    cut_the_chase: float = 0.85  # mean pairwise IoU above which the VLM is skipped
    duel_order: Literal["random", "both"] = "random"


@dataclass
class Selection:
    chosen: int | None  # position in the candidate list, None when there is no candidate
    cut_the_chase: bool = False
    judge_calls: int = 0  # calls an N-run would make (including those the memo saved)
    hybrid: list[float] = field(default_factory=list)


def stable_seed(*parts) -> int:
    """A seed from any printable parts, identical across processes (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class JudgeMemo:
    """The VLM judge for one sample: each rating and each duel is asked at most once."""

    def __init__(self, rate: Callable[[list[RateItem]], list[JudgeAnswer]],
                 duel: Callable[[list[DuelItem]], list[JudgeAnswer]],
                 image, masks: list[np.ndarray], query: str, seed: int, duel_order: str):
        self._rate, self._duel = rate, duel
        self.image, self.masks, self.query, self.seed, self.duel_order = image, masks, query, seed, duel_order
        self.ratings: dict[int, float | None] = {}
        self.duels: dict[tuple[int, int], int | None] = {}
        self.answers: list[dict] = []  # every question asked, for the record
        self.unusable = 0  # answers that could not be parsed (the hybrid score decides instead)

    def rate(self, positions: list[int]) -> list[float | None]:
        missing = [p for p in positions if p not in self.ratings]
        if missing:
            answers = self._rate([RateItem(self.image, self.masks[p], self.query) for p in missing])
            for p, a in zip(missing, answers):
                value = a.value if isinstance(a.value, (int, float)) else None
                self.ratings[p] = value
                self.unusable += value is None
                self._log("rate", [p], a)
        return [self.ratings[p] for p in positions]

    def duel_calls(self) -> int:
        return 2 if self.duel_order == "both" else 1

    def duel(self, i: int, j: int) -> int | None:
        """Winner of i against j, or None when the judge gave no usable or consistent answer."""
        key = (min(i, j), max(i, j))
        if key not in self.duels:
            if self.duel_order == "both":
                orders = [key, key[::-1]]
            else:  # a fair coin per pair, so neither the incumbent nor the lower index is always "A"
                flip = stable_seed(self.seed, "duel", *key) % 2
                orders = [key[::-1] if flip else key]
            items = [DuelItem(self.image, self.masks[a], self.masks[b], self.query) for a, b in orders]
            winners = []
            for (a, b), ans in zip(orders, self._duel(items)):
                self._log("duel", [a, b], ans)
                winners.append({"A": a, "B": b}.get(ans.value))
            self.unusable += sum(w is None for w in winners)
            self.duels[key] = winners[0] if len(set(winners)) == 1 else None
        return self.duels[key]

    def _log(self, kind: str, positions: list[int], a: JudgeAnswer) -> None:
        self.answers.append({"kind": kind, "candidates": positions, "value": a.value, "raw_text": a.raw_text,
                             "tokens_in": a.tokens_in, "tokens_out": a.tokens_out})


def agreement(iou: np.ndarray) -> np.ndarray:
    """Mean IoU of each candidate with the others (1.0 for a lone candidate)."""
    n = len(iou)
    if n < 2:
        return np.ones(n)
    return (iou.sum(axis=1) - np.diag(iou)) / (n - 1)


def mean_pairwise_iou(iou: np.ndarray) -> float:
    n = len(iou)
    if n < 2:
        return 1.0
    return float((iou.sum() - np.trace(iou)) / (n * (n - 1)))


def pyramid_order(n: int) -> list[int]:
    """Ranks that meet the winner so far: 1, 2, 4, 8, ... below n."""
    ranks, r = [], 1
    while r < n:
        ranks.append(r)
        r *= 2
    return ranks


def needs_judge(positions: list[int], iou: np.ndarray, settings: VerifierSettings) -> bool:
    """Whether choosing among these candidates asks the VLM (comparative mode, several
    candidates, and they do not already agree)."""
    if settings.mode != "comparative" or len(positions) < 2:
        return False
    return mean_pairwise_iou(iou[np.ix_(positions, positions)]) <= settings.cut_the_chase


def select(positions: list[int], iou: np.ndarray, siglip: list[float], judge: JudgeMemo | None,
           settings: VerifierSettings) -> Selection:
    """Choose among the candidates at `positions` (the first N of a sample) using only them."""
    if not positions:
        return Selection(None)
    if len(positions) == 1:
        return Selection(positions[0], hybrid=[1.0])
    sub = iou[np.ix_(positions, positions)]
    agree = agreement(sub)
    sig = np.asarray([siglip[p] for p in positions], dtype=np.float64)
    cut = mean_pairwise_iou(sub) > settings.cut_the_chase
    if settings.mode == "heuristic" or cut or judge is None:
        w_s, w_a = settings.weight_siglip, settings.weight_agreement
        hybrid = (w_s * sig + w_a * agree) / max(w_s + w_a, 1e-12)
        best = int(np.argmax(hybrid))  # first maximum: ties go to the earlier hypothesis
        return Selection(positions[best], cut_the_chase=cut, hybrid=hybrid.tolist())

    ratings = judge.rate(positions)
    known = [r for r in ratings if r is not None]
    neutral = float(np.mean(known)) if known else 0.0  # an unusable rating neither helps nor hurts
    vlm = np.asarray([neutral if r is None else r for r in ratings], dtype=np.float64)
    w_v = settings.weight_vlm if known else 0.0
    hybrid = w_v * vlm + settings.weight_siglip * sig + settings.weight_agreement * agree
    calls = len(positions)

    order = sorted(range(len(positions)), key=lambda k: (-hybrid[k], k))
    winner = order[0]
    for rank in pyramid_order(len(order)):
        challenger = order[rank]
        result = judge.duel(positions[winner], positions[challenger])
        calls += judge.duel_calls()
        if result is None:  # no usable verdict: the hybrid score decides, no one "wins" by default
            winner = winner if hybrid[winner] >= hybrid[challenger] else challenger
        else:
            winner = positions.index(result)
    return Selection(positions[winner], judge_calls=calls, hybrid=hybrid.tolist())
