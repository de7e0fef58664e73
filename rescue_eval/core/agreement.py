"""How well a sample's candidates agree: mean mask IoU with the other hypotheses, per N.

A duplicate box (dropped before segmentation, as it would give the same mask) keeps its vote:
each kept candidate stands for itself and the duplicates dropped for it among the first N
hypotheses, so agreement still says how many hypotheses chose the same object, as the original
verifier's consistency over all N hypotheses, duplicates included, did.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


class PrefixAgreement:
    """Agreement among the first N hypotheses, for each N asked for. `weights[N]` holds, for each
    of the k_N candidates among them (always the first k_N of the sample's list), how many of
    those hypotheses it stands for. Built from the IoU matrix one row at a time
    (masks.iou_rows), keeping per-N sums only: memory O(N x len(weights)), never N x N, let
    alone N x H x W."""

    def __init__(self, iou_rows: Iterable[np.ndarray], weights: dict[int, Iterable[float]]):
        self._weights = {n: np.asarray(list(w), dtype=np.float64) for n, w in weights.items()}
        # n -> for each candidate, its IoU with the other candidates, weighted by their votes
        self._sums = {n: np.zeros(len(w)) for n, w in self._weights.items()}
        for i, row in enumerate(iou_rows):
            for n, w in self._weights.items():
                k = len(w)
                if i < k:
                    self._sums[n][i] = row[:k] @ w - w[i] * row[i]

    def size(self, n: int) -> int:
        """Candidates among the first n hypotheses."""
        return len(self._weights[n])

    def agreement(self, n: int) -> np.ndarray:
        """For each candidate among the first n hypotheses, the mean IoU of one of the hypotheses
        it stands for with the other hypotheses (its own duplicates count as full agreement);
        1.0 when it is the only one."""
        w = self._weights[n]
        total = w.sum()
        if total <= 1:
            return np.ones(len(w))
        return (self._sums[n] + (w - 1)) / (total - 1)

    def mean_iou(self, n: int) -> float:
        """Mean IoU over the pairs of hypotheses among the first n (1.0 below two)."""
        w = self._weights[n]
        total = w.sum()
        return float((w * self.agreement(n)).sum() / total) if total > 1 else 1.0
