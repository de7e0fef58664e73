"""Failed samples across runs: which a rerun evaluates again, when a run of failures for one
passing reason stops the job, and the one line of failures that every run ends with."""
from __future__ import annotations

from rescue_eval.core.errors import FatalError


def retry_selector(policy: str):
    """record -> whether a rerun evaluates its sample again (run.retry_failed)."""
    if policy == "all":
        return lambda rec: rec["failure"] is not None
    if policy == "transient":
        return lambda rec: rec["failure"] is not None and bool(rec.get("transient"))
    return lambda rec: False


MIN_FAILURES = 3  # a rerun of a few samples must be able to finish with one that keeps failing


class TransientStop:
    """Stops the job when more than `share` of this rank's first `window` new samples (or of all
    it has, if fewer), and at least MIN_FAILURES, failed for the same transient reason: a service
    that is down would otherwise be scored as a split of zeros. Those samples are written, and
    retried by the rerun."""

    def __init__(self, share: float, window: int, todo: int):
        self.limit, self.window = max(share * min(window, todo), MIN_FAILURES - 0.5), window
        self.seen, self.counts = 0, {}

    def check(self, rec: dict) -> None:
        self.seen += 1
        if self.seen > self.window or not (rec["failure"] and rec.get("transient")):
            return
        count = self.counts[rec["failure"]] = self.counts.get(rec["failure"], 0) + 1
        if count > self.limit:
            raise FatalError(f"{count} of the first {self.seen} samples failed with {rec['error'][:300]}; the job "
                             f"stops rather than score them as zeros. Fix the cause (start the service, free "
                             f"memory), then rerun the same command: these samples are evaluated again.")


def failure_line(summary: dict) -> str:
    """'failures: executor_error 4 (transient: the next run retries them), bad_input 1' or 'failures: none'."""
    if not summary.get("failures"):
        return "failures: none"
    transient = summary.get("transient_failures", {})
    parts = [f"{reason} {n}" + (f" ({transient[reason]} transient: the next run retries them)"
                                if transient.get(reason) else "")
             for reason, n in sorted(summary["failures"].items())]
    return "failures: " + ", ".join(parts)
