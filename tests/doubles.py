"""Test doubles for the four roles. The rule doubles are NOT models: each answers by a fixed rule
so the harness logic (batching, failures, sweep, tournament) can be checked exactly without
weights. AnswerCache stands in front of a real model and replays its earlier answers."""
from __future__ import annotations

import hashlib

import numpy as np

from rescue_eval.core.types import Hypothesis, JudgeAnswer


class ScriptedPlanner:
    """Returns the boxes listed per query (pixel xyxy; None = an unparsable output)."""

    def __init__(self, boxes_by_query: dict[str, list], fail_queries: tuple[str, ...] = ()):
        self.boxes_by_query, self.fail_queries = boxes_by_query, fail_queries
        self.calls = []

    def propose(self, batch):
        self.calls.append(len(batch))
        if any(item.query in self.fail_queries for item in batch):
            raise RuntimeError("scripted planner failure")
        out = []
        for item in batch:
            boxes = self.boxes_by_query[item.query][: item.n]
            out.append([Hypothesis(index=k, strategy="scripted", temperature=1.0, seed=item.seed + k,
                                   raw_text=str(b), status="ok" if b else "parse_error",
                                   box=tuple(b) if b else None) for k, b in enumerate(boxes)])
        return out


class BoxFillSegmenter:
    """The mask of a box is the box filled in."""

    def __init__(self):
        self.calls = []

    def segment(self, batch):
        self.calls.append([len(item.boxes) for item in batch])
        out = []
        for item in batch:
            masks = []
            for x1, y1, x2, y2 in item.boxes:
                m = np.zeros((item.image.height, item.image.width), dtype=bool)
                m[int(y1):int(y2), int(x1):int(x2)] = True
                masks.append(m)
            out.append(masks)
        return out


class AreaScorer:
    """Score = share of the image the mask covers (a fixed rule, so selection is predictable)."""

    def score(self, batch):
        return [[float(m.mean()) for m in item.masks] for item in batch]


class RuleJudge:
    """Rates a mask by its overlap with a reference region; prefers the larger overlap in duels.
    `answer` can force a fixed duel answer ("A", "B" or None for unparsable)."""

    def __init__(self, reference: np.ndarray, answer: str | None | bool = False):
        self.reference, self.answer = reference, answer
        self.rate_calls = self.duel_calls = 0
        self.duels_seen = []

    def _overlap(self, mask):
        return float((mask & self.reference).sum() / max((mask | self.reference).sum(), 1))

    def rate(self, batch):
        self.rate_calls += len(batch)
        return [JudgeAnswer(self._overlap(item.mask), "rule") for item in batch]

    def duel(self, batch):
        self.duel_calls += len(batch)
        out = []
        for item in batch:
            self.duels_seen.append((item.mask_a, item.mask_b))
            if self.answer is not False:
                out.append(JudgeAnswer(self.answer, "forced"))
            else:
                a, b = self._overlap(item.mask_a), self._overlap(item.mask_b)
                out.append(JudgeAnswer("A" if a >= b else "B", "rule"))
        return out


class AnswerCache:
    """A real role backend behind a cache: a question asked before gets the answer the model
    gave then (the demo twins are deterministic), a new one goes to the model. Lets a test
    rerun the search with a deliberate fault without running the models again."""

    METHODS = ("propose", "segment", "score", "rate", "duel")

    def __init__(self, backend):
        self.backend, self.answers, self.misses = backend, {}, 0
        for name in self.METHODS:
            if hasattr(backend, name):
                setattr(self, name, self._cached(name))

    @staticmethod
    def key(name: str, item) -> tuple:
        parts = [name]
        for field_name, value in vars(item).items():
            if hasattr(value, "tobytes"):  # an image or a mask
                value = hashlib.sha1(value.tobytes()).hexdigest()
            elif isinstance(value, list):
                value = tuple(hashlib.sha1(v.tobytes()).hexdigest() if hasattr(v, "tobytes") else tuple(v)
                              for v in value)
            parts.append((field_name, value))
        return tuple(parts)

    def _cached(self, name: str):
        def ask(batch):
            keys = [self.key(name, item) for item in batch]
            missing = [(k, item) for k, item in zip(keys, batch) if k not in self.answers]
            if missing:
                self.misses += len(missing)
                for (k, _), answer in zip(missing, getattr(self.backend, name)([item for _, item in missing])):
                    self.answers[k] = answer
            return [self.answers[k] for k in keys]
        return ask
