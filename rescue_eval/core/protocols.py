"""The four role protocols and the dataset protocol. Every backend implements one role
protocol, batch-first; every dataset module yields a `Dataset`.

A batch is a list of items, one per sample; the answer is a list of the same length and order.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from rescue_eval.core.types import DuelItem, Hypothesis, JudgeAnswer, PlanItem, RateItem, Sample, ScoreItem, SegmentItem


@runtime_checkable
class Planner(Protocol):
    def propose(self, batch: list[PlanItem]) -> list[list[Hypothesis]]:
        """item.n hypotheses per item, in fixed index order 0..n-1, each parsed to a pixel box or
        marked with why not (the harness removes duplicates afterwards)."""


@runtime_checkable
class Segmenter(Protocol):
    def segment(self, batch: list[SegmentItem]) -> list[list[np.ndarray]]:
        """One bool HxW mask per box, single instance, at the image's size."""


@runtime_checkable
class Scorer(Protocol):
    def score(self, batch: list[ScoreItem]) -> list[list[float]]:
        """One image-text score in [0, 1] per mask (SigLIP2: sigmoid of the logit)."""


@runtime_checkable
class Judge(Protocol):
    def rate(self, batch: list[RateItem]) -> list[JudgeAnswer]:
        """Pointwise: the VLM sees the mask drawn on the image; value is a rating in [0, 1]."""

    def duel(self, batch: list[DuelItem]) -> list[JudgeAnswer]:
        """A/B comparison: value is "A" or "B", None when the answer cannot be parsed."""


ROLE_PROTOCOLS: dict[str, type] = {"planner": Planner, "executor": Segmenter, "scorer": Scorer, "judge": Judge}
ROLE_NAMES = tuple(ROLE_PROTOCOLS)
# the methods a role server may be asked to run, by role
ROLE_METHODS: dict[str, tuple[str, ...]] = {"planner": ("propose",), "executor": ("segment",),
                                            "scorer": ("score",), "judge": ("rate", "duel")}


@runtime_checkable
class Dataset(Protocol):
    """One split, indexable; row i is `ids[i]`. A row that cannot be read is still a Sample
    (with `error` set), so it is scored as a failure and never dropped."""

    ids: list[str]
    subsets: list[str]  # subset names every rank expects (e.g. short / long), fixed up front

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...
