"""The Verifier: choose one mask among candidates (plain functions over arrays, no process group).

Selection strategies are registered in `STRATEGIES` (`verifier.mode` picks one) and implement
`SelectionStrategy.select_sweep`: choose for every N of the sweep at once, each N using only
its own candidates (the first N hypotheses').
- `heuristic`: the best hybrid of SigLIP2 and agreement, no VLM.
- `comparative`: "cut the chase" when the masks already agree, else a hybrid score (VLM rating
  + SigLIP2 + agreement) and a pyramid tournament of A/B duels judged by the VLM.
The judge is reached through `JudgeMemo`, which asks each question once per sample, so the
per-N sweep reuses pointwise ratings and duels while still counting the calls an N-run makes:
one judge call for all the ratings, then one per tournament round for the duels of every N.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

import numpy as np

from rescue_eval.core.agreement import PrefixAgreement
from rescue_eval.core.errors import FatalError
from rescue_eval.core.registry import Registry
from rescue_eval.core.types import DuelItem, JudgeAnswer, RateItem

STRATEGIES = Registry("selection strategy", "verifier.mode")
STRATEGIES.register("comparative", "rescue_eval.core.selection:ComparativeSelection")
STRATEGIES.register("heuristic", "rescue_eval.core.selection:HeuristicSelection")


@dataclass
class VerifierSettings:
    """Verifier: how one mask is chosen among the candidates.

    Attributes:
        mode: comparative (a judge tournament) or heuristic (the hybrid score alone) (RESCue's --mode)
        weight_vlm: the hybrid score's weight of the judge's rating
        weight_siglip: the hybrid score's weight of the SigLIP2 score
        weight_agreement: the hybrid score's weight of the candidate's agreement with the others
        cut_the_chase: mean pairwise mask IoU above which the judge is skipped
        duel_order: random: one duel per pair, the sides drawn at random; both: each pair judged both ways
        siglip_scaling: minmax: SigLIP2 scores min-max scaled within each candidate set, as the original; raw: not
    """

    mode: Literal[STRATEGIES.names()] = "comparative"
    weight_vlm: float = 0.5
    weight_siglip: float = 0.35
    weight_agreement: float = 0.15
    cut_the_chase: float = 0.85
    duel_order: Literal["random", "both"] = "random"
    siglip_scaling: Literal["minmax", "raw"] = "minmax"


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
        self.duels_won: dict[tuple[int, int], int | None] = {}  # (i, j), i < j -> winner
        self.answers: list[dict] = []  # every question asked, for the record
        self.unusable = 0  # answers that could not be parsed or asked (the hybrid score decides instead)
        self.errors = 0  # questions whose call raised (counted in `unusable` too)

    def _ask(self, fn, items: list) -> list[JudgeAnswer]:
        """fn(items); when that raises, each question alone, and one that still raises is an
        unusable answer (counted) rather than the sample's failure: the hybrid decides it."""
        try:
            return fn(items)
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - a judge error costs this question only
            if len(items) > 1:
                return [answer for item in items for answer in self._ask(fn, [item])]
            self.errors += 1
            return [JudgeAnswer(None, f"judge error: {type(exc).__name__}: {exc}")]

    def rate(self, positions: list[int]) -> list[float | None]:
        missing = [p for p in positions if p not in self.ratings]
        if missing:
            answers = self._ask(self._rate, [RateItem(self.image, self.masks[p], self.query) for p in missing])
            if len(answers) != len(missing):
                raise RuntimeError(f"the judge gave {len(answers)} ratings for {len(missing)} masks")
            for p, a in zip(missing, answers):
                value = a.value if isinstance(a.value, (int, float)) else None
                self.ratings[p] = value
                self.unusable += value is None
                self._log("rate", [p], a)
        return [self.ratings[p] for p in positions]

    def duel_calls(self) -> int:
        return 2 if self.duel_order == "both" else 1

    def duels(self, pairs: list[tuple[int, int]]) -> list[int | None]:
        """Winner of each (i, j), or None when the judge gave no usable or consistent answer.
        The pairs not asked before go to the judge in one call."""
        asked: dict[tuple[int, int], list[tuple[int, int]]] = {}  # pair -> the orders shown
        for i, j in pairs:
            key = (min(i, j), max(i, j))
            if key in self.duels_won or key in asked:
                continue
            if self.duel_order == "both":
                asked[key] = [key, key[::-1]]
            else:  # a fair coin per pair, so neither the incumbent nor the lower index is always "A"
                asked[key] = [key[::-1] if stable_seed(self.seed, "duel", *key) % 2 else key]
        shown = [order for orders in asked.values() for order in orders]
        verdicts = self._ask(self._duel, [DuelItem(self.image, self.masks[a], self.masks[b], self.query)
                                          for a, b in shown]) if shown else []
        if len(verdicts) != len(shown):
            raise RuntimeError(f"the judge gave {len(verdicts)} verdicts for {len(shown)} duels")
        answers = iter(verdicts)
        for key, orders in asked.items():
            winners = []
            for a, b in orders:
                answer = next(answers)
                self._log("duel", [a, b], answer)
                winners.append({"A": a, "B": b}.get(answer.value))
            self.unusable += sum(w is None for w in winners)
            self.duels_won[key] = winners[0] if len(set(winners)) == 1 else None
        return [self.duels_won[(min(i, j), max(i, j))] for i, j in pairs]

    def _log(self, kind: str, positions: list[int], a: JudgeAnswer) -> None:
        self.answers.append({"kind": kind, "candidates": positions, "value": a.value, "raw_text": a.raw_text,
                             "tokens_in": a.tokens_in, "tokens_out": a.tokens_out})


def pyramid_order(n: int) -> list[int]:
    """Ranks that meet the winner so far: 1, 2, 4, 8, ... below n."""
    ranks, r = [], 1
    while r < n:
        ranks.append(r)
        r *= 2
    return ranks


class SelectionStrategy(Protocol):
    uses_judge: bool  # whether the job needs a judge role for it

    def select_sweep(self, sizes: dict[int, int], agree: PrefixAgreement, siglip: list[float],
                     judge: JudgeMemo | None, settings: VerifierSettings) -> dict[int, Selection]:
        """A Selection for every N of `sizes` (N -> candidates among the first N hypotheses, always
        the first k of the sample's list), each made from those k candidates alone."""


def strategy(settings: VerifierSettings) -> SelectionStrategy:
    return STRATEGIES.get(settings.mode)()


def select_sweep(sizes: dict[int, int], agree: PrefixAgreement, siglip: list[float], judge: JudgeMemo | None,
                 settings: VerifierSettings) -> dict[int, Selection]:
    """The configured strategy's selections for every N of the sweep."""
    return strategy(settings).select_sweep(sizes, agree, siglip, judge, settings)


# Scores are compared at this resolution, ties going to the earlier hypothesis, so that candidates
# scored equal but for float noise (the same mask twice, another thread count) compare as equal.
# Rounding only narrows a flip by noise (a value at a rounding boundary still rounds either way,
# and min-max scaling magnifies it), which is why the executor and the scorer compute each sample
# in passes of its own: their outputs do not move with the batch mix at all.
RESOLUTION = 1e-6


def resolved(scores) -> np.ndarray:
    """Scores as integer multiples of RESOLUTION, for every comparison a selection makes."""
    return np.rint(np.asarray(scores, dtype=np.float64) / RESOLUTION).astype(np.int64)


def agrees(agree: PrefixAgreement, n: int, settings: VerifierSettings) -> bool:
    """Cut the chase: the hypotheses among the first n agree above the threshold."""
    return int(resolved(agree.mean_iou(n))) > int(resolved(settings.cut_the_chase))


def siglip_scores(siglip: list[float], k: int, settings: VerifierSettings) -> np.ndarray:
    """The first k candidates' SigLIP2 scores as the hybrid uses them. `minmax` (the original
    verifier's) rescales them to [0, 1] within the candidate set: raw sigmoid scores of masked
    crops against long queries are tiny and nearly equal, so unscaled they barely move the
    hybrid. Equal scores carry no preference: all 0."""
    sig = np.asarray(siglip[:k], dtype=np.float64)
    if settings.siglip_scaling == "raw" or k == 0:
        return sig
    spread = sig.max() - sig.min()
    return (sig - sig.min()) / spread if spread > 0 else np.zeros(k)


def heuristic_selection(n: int, agree: PrefixAgreement, siglip: list[float], settings: VerifierSettings) -> Selection:
    """Among the candidates of the first n hypotheses, the best hybrid of SigLIP2 and agreement, no VLM."""
    k = agree.size(n)
    if k == 0:
        return Selection(None)
    if k == 1:
        return Selection(0, hybrid=[1.0])
    w_s, w_a = settings.weight_siglip, settings.weight_agreement
    hybrid = (w_s * siglip_scores(siglip, k, settings) + w_a * agree.agreement(n)) / max(w_s + w_a, 1e-12)
    best = int(np.argmax(resolved(hybrid)))  # first maximum: ties go to the earlier hypothesis
    return Selection(best, cut_the_chase=agrees(agree, n, settings), hybrid=hybrid.tolist())


class HeuristicSelection:
    uses_judge = False

    def select_sweep(self, sizes: dict[int, int], agree: PrefixAgreement, siglip: list[float],
                     judge: JudgeMemo | None, settings: VerifierSettings) -> dict[int, Selection]:
        return {n: heuristic_selection(n, agree, siglip, settings) for n in sorted(sizes)}


class ComparativeSelection:
    """The VLM decides where the candidates disagree: a hybrid score with its ratings, then a
    pyramid tournament of duels; sets that agree (or have under two candidates) are chosen as
    the heuristic would, without the VLM."""

    uses_judge = True

    @staticmethod
    def needs_judge(n: int, agree: PrefixAgreement, settings: VerifierSettings) -> bool:
        return agree.size(n) >= 2 and not agrees(agree, n, settings)

    def select_sweep(self, sizes: dict[int, int], agree: PrefixAgreement, siglip: list[float],
                     judge: JudgeMemo | None, settings: VerifierSettings) -> dict[int, Selection]:
        judged = {n: judge is not None and self.needs_judge(n, agree, settings) for n in sizes}
        if any(judged.values()):
            judge.rate(list(range(max(k for n, k in sizes.items() if judged[n]))))
        selections, tournaments = {}, {}
        for n, k in sizes.items():
            if judged[n]:
                tournaments[n] = _Tournament(_judged_hybrid(n, agree, siglip, judge, settings))
            else:
                selections[n] = heuristic_selection(n, agree, siglip, settings)
        while live := [t for t in tournaments.values() if not t.done]:
            for t, result in zip(live, judge.duels([t.next_pair() for t in live])):
                t.play(result)
        for n, t in tournaments.items():
            calls = len(t.hybrid) + len(t.challengers) * judge.duel_calls()
            selections[n] = Selection(t.winner, judge_calls=calls, hybrid=t.hybrid.tolist())
        return dict(sorted(selections.items()))


def _judged_hybrid(n: int, agree: PrefixAgreement, siglip: list[float], judge: JudgeMemo,
                   settings: VerifierSettings) -> np.ndarray:
    """VLM rating, SigLIP2 and agreement, weighted; an unusable rating neither helps nor hurts."""
    k = agree.size(n)
    ratings = judge.rate(list(range(k)))
    known = [r for r in ratings if r is not None]
    neutral = float(np.mean(known)) if known else 0.0
    vlm = np.asarray([neutral if r is None else r for r in ratings], dtype=np.float64)
    w_v = settings.weight_vlm if known else 0.0
    sig = siglip_scores(siglip, k, settings)
    return w_v * vlm + settings.weight_siglip * sig + settings.weight_agreement * agree.agreement(n)


class _Tournament:
    """The pyramid over candidates 0..k-1: the hybrid leader so far meets the candidates at
    hybrid ranks 1, 2, 4, 8, ..."""

    def __init__(self, hybrid: np.ndarray):
        self.hybrid = hybrid
        self.resolved = resolved(hybrid)
        order = sorted(range(len(hybrid)), key=lambda i: (-self.resolved[i], i))
        self.challengers = [order[rank] for rank in pyramid_order(len(hybrid))]
        self.winner, self.round = order[0], 0

    @property
    def done(self) -> bool:
        return self.round == len(self.challengers)

    def next_pair(self) -> tuple[int, int]:
        return self.winner, self.challengers[self.round]

    def play(self, result: int | None) -> None:
        challenger = self.challengers[self.round]
        if result is None:  # no usable verdict: the hybrid score decides, no one "wins" by default
            self.winner = self.winner if self.resolved[self.winner] >= self.resolved[challenger] else challenger
        else:
            self.winner = result
        self.round += 1
