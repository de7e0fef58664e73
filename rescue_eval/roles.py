"""Building the four roles from the config, and metering what each one does."""
from __future__ import annotations

import time

from rescue_eval.config import Config
from rescue_eval.rescue import Roles

PROTOCOL_METHODS = {"propose", "segment", "score", "rate", "duel"}


class MeteredRole:
    """A backend with counters: requests (items), batches (calls) and busy seconds."""

    def __init__(self, name: str, backend: object):
        self.name, self.backend = name, backend
        self.requests = self.batches = 0
        self.busy_s = 0.0

    def __getattr__(self, method: str):
        fn = getattr(self.backend, method)
        if method not in PROTOCOL_METHODS:
            return fn

        def metered(batch):
            start = time.perf_counter()
            try:
                return fn(batch)
            finally:
                self.busy_s += time.perf_counter() - start
                self.requests += len(batch)
                self.batches += 1
        return metered

    def stats(self, wall_s: float) -> dict:
        return {"requests": self.requests, "batches": self.batches,
                "mean_batch": self.requests / self.batches if self.batches else 0.0,
                "busy_s": self.busy_s, "busy_fraction": self.busy_s / wall_s if wall_s > 0 else 0.0}


def build_roles(cfg: Config) -> Roles:
    from models import build_role  # adapters import their model libraries only when built

    judge = None
    if cfg.verifier.mode == "comparative":
        judge = MeteredRole("judge", build_role("judge", cfg.judge))
    return Roles(planner=MeteredRole("planner", build_role("planner", cfg.planner)),
                 executor=MeteredRole("executor", build_role("executor", cfg.executor)),
                 scorer=MeteredRole("scorer", build_role("scorer", cfg.scorer)),
                 judge=judge)
