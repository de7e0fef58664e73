"""SYNTHETIC role backends: stand-ins for the GPU models, used by the benchmarks only.

There is no model here. Every call sleeps `fixed + per_item * len(batch)` seconds (sleep
releases the GIL, as GPU work does) and returns protocol-valid, deterministic answers that cost
almost no CPU: random boxes seeded like the real planner's hypotheses, box-shaped masks at the
image's size, and scores and verdicts derived from mask areas. Their CPU time is counted
(`backend_cpu_s`) so that the benchmark can subtract it from a rank's CPU time and keep only
the harness's own.

`install` registers these classes as the `synthetic` backend of each role in the calling process
(`backend_args` chooses them), so the harness builds them through its real code path (role
servers, micro-batching, the transport, JSONL, metrics).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from rescue_eval.models.vlm_requests import hypothesis_seed
from rescue_eval.core.types import DuelItem, Hypothesis, JudgeAnswer, PlanItem, RateItem, ScoreItem, SegmentItem

# Milliseconds per batch + per item, in the proportions of the real roles on a GPU: the planner
# generates N boxes per item and the judge answers one rating or one duel per item (both VLM
# generation, dominant); SAM 3 and SigLIP2 are single forward passes (cheap).
DEFAULT_COSTS = "planner=30+25,executor=5+5,scorer=3+2,judge=20+8"
ROLES = ("planner", "executor", "scorer", "judge")


@dataclass(frozen=True)
class Cost:
    fixed_s: float
    per_item_s: float

    def of(self, items: int) -> float:
        return self.fixed_s + self.per_item_s * items


def parse_costs(spec: str) -> dict[str, Cost]:
    """"planner=30+25,executor=5+5,..." (ms per batch + ms per item) -> {role: Cost}."""
    costs = {}
    for part in spec.split(","):
        role, _, value = part.partition("=")
        fixed, _, per_item = value.partition("+")
        costs[role.strip()] = Cost(float(fixed) / 1000, float(per_item) / 1000)
    if set(costs) != set(ROLES):
        raise ValueError(f"costs must name exactly {', '.join(ROLES)} as ROLE=FIXED_MS+PER_ITEM_MS, got {spec!r}")
    return costs


def format_costs(costs: dict[str, Cost]) -> str:
    return ",".join(f"{r}={costs[r].fixed_s * 1000:g}+{costs[r].per_item_s * 1000:g}" for r in ROLES)


COSTS = parse_costs(DEFAULT_COSTS)  # of this process; `install` sets them before roles are built
_cpu = {"s": 0.0}
_cpu_lock = threading.Lock()


def install(costs: dict[str, Cost]) -> str:
    """Register the synthetic backends (in this process, before the config is read) as each
    role's `synthetic` backend. Returns a line saying so."""
    from rescue_eval.models import BACKENDS

    global COSTS
    COSTS = costs
    for role, cls in SYNTHETIC_CLASSES.items():
        if "synthetic" not in BACKENDS[role]:
            BACKENDS[role].register("synthetic", f"benchmarks.synthetic:{cls.__name__}")
    return f"synthetic backends (sleep only, {format_costs(costs)} ms): " + ", ".join(
        f"{role} -> benchmarks.synthetic.{cls.__name__}" for role, cls in SYNTHETIC_CLASSES.items())


def backend_args() -> list[str]:
    """The run options that choose the synthetic backends (after `install`)."""
    return [arg for role in SYNTHETIC_CLASSES for arg in (f"--{role}.backend", "synthetic")]


def backend_cpu_s() -> float:
    """CPU seconds the synthetic backends of this process spent building answers."""
    with _cpu_lock:
        return _cpu["s"]


class _Synthetic:
    role = ""

    def __init__(self, cost: Cost | None = None):
        self.cost = cost or COSTS[self.role]
        self.slept_s = 0.0  # the model time this backend stood in for

    def _answer(self, batch: list, build) -> list:
        start = time.thread_time()
        answers = [build(item) for item in batch]
        with _cpu_lock:
            _cpu["s"] += time.thread_time() - start
        seconds = self.cost.of(len(batch))
        time.sleep(seconds)
        self.slept_s += seconds
        return answers


def _area(mask: np.ndarray) -> float:
    return np.count_nonzero(mask) / mask.size


class SyntheticPlanner(_Synthetic):
    role = "planner"

    def propose(self, batch: list[PlanItem]) -> list[list[Hypothesis]]:
        return self._answer(batch, lambda item: [_box_hypothesis(item, k) for k in range(item.n)])


def _box_hypothesis(item: PlanItem, k: int) -> Hypothesis:
    """A random box covering 20-60% of each side, from the hypothesis' own seed: distinct boxes,
    so that duplicates are rare and the masks disagree (the judge is used, as on real data)."""
    seed = hypothesis_seed(item.seed, k)
    rng = np.random.default_rng(seed)
    w, h = item.image.width, item.image.height
    bw, bh = rng.uniform(0.2, 0.6) * w, rng.uniform(0.2, 0.6) * h
    x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    box = (float(x1), float(y1), float(x1 + bw), float(y1 + bh))
    return Hypothesis(k, "synthetic", 0.0, seed, "synthetic box", "ok", box, tokens_in=0, tokens_out=0)


class SyntheticSegmenter(_Synthetic):
    role = "executor"

    def segment(self, batch: list[SegmentItem]) -> list[list[np.ndarray]]:
        return self._answer(batch, lambda item: [_box_mask(item.image.height, item.image.width, b) for b in item.boxes])


def _box_mask(height: int, width: int, box) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = True
    return mask


class SyntheticScorer(_Synthetic):
    role = "scorer"

    def score(self, batch: list[ScoreItem]) -> list[list[float]]:
        return self._answer(batch, lambda item: [_area(m) for m in item.masks])


class SyntheticJudge(_Synthetic):
    role = "judge"

    def rate(self, batch: list[RateItem]) -> list[JudgeAnswer]:
        return self._answer(batch, lambda item: JudgeAnswer(round(_area(item.mask), 2), "synthetic rating"))

    def duel(self, batch: list[DuelItem]) -> list[JudgeAnswer]:
        return self._answer(batch, lambda item: JudgeAnswer(
            "A" if _area(item.mask_a) >= _area(item.mask_b) else "B", "synthetic verdict"))


SYNTHETIC_CLASSES = {"planner": SyntheticPlanner, "executor": SyntheticSegmenter, "scorer": SyntheticScorer,
                     "judge": SyntheticJudge}
