"""The four role protocols. Every backend implements one of them, batch-first.

A batch is a list of items, one per sample; the answer is a list of the same length and order.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from rescue_eval.types import DuelItem, Hypothesis, JudgeAnswer, PlanItem, RateItem, ScoreItem, SegmentItem


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
