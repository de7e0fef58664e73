"""The gt_box planner: an oracle ablation that proposes jittered ground-truth boxes.

It answers "how good would RESCue be with a perfect planner?". Every output of a run that uses
it says so (summary `oracle_boxes`, a note in the report, `oracle_boxes` in every record).
Hypothesis 0 is the exact box; hypothesis k > 0 moves each corner by up to `gt_jitter` of the
box's width or height, drawn from its own seed, so hypothesis k is the same whatever n is.
"""
from __future__ import annotations

import numpy as np

from rescue_eval.models.parsing import clean_pixel_box
from rescue_eval.models.vlm_requests import hypothesis_seed
from rescue_eval.core.types import Hypothesis, PlanItem


class GroundTruthBoxPlanner:
    def __init__(self, gt_jitter: float = 0.1):
        if gt_jitter < 0:
            raise ValueError("planner.gt_jitter must be non-negative.")
        self.jitter = gt_jitter

    def propose(self, batch: list[PlanItem]) -> list[list[Hypothesis]]:
        return [[self._hypothesis(item, k) for k in range(item.n)] for item in batch]

    def _hypothesis(self, item: PlanItem, k: int) -> Hypothesis:
        seed = hypothesis_seed(item.seed, k)
        if item.gt_box is None:  # an empty ground truth has no box to propose
            return Hypothesis(k, "gt_box", 0.0, seed, "no ground-truth target", "parse_error", None)
        x1, y1, x2, y2 = item.gt_box
        if k == 0:
            coords = [x1, y1, x2, y2]
        else:
            shift = np.random.default_rng(seed).uniform(-self.jitter, self.jitter, 4)
            w, h = x2 - x1, y2 - y1
            coords = [x1 + shift[0] * w, y1 + shift[1] * h, x2 + shift[2] * w, y2 + shift[3] * h]
        box, status = clean_pixel_box(coords, item.image.width, item.image.height)
        return Hypothesis(k, "gt_box", 0.0, seed, f"ground truth box, jitter {self.jitter if k else 0}",
                          status, box)
