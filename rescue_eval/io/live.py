"""Live W&B points while the job runs, read from the result lines every rank appends.

Every rank appends one JSON line per finished sample to OUT/results/rank-R.jsonl, and a line is
complete once it ends in "\\n". Rank 0 reads only what was appended since its last look, as the
progress bar does (`rescue_eval.io.progress`), so the points need no transport and see every
rank. Keys start with `live/`; gIoU, cIoU and oracle IoU are running values over the records so
far, as fractions in [0, 1] (like every score W&B shows for this harness), times in seconds.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

from rescue_eval.core.metrics import CIOU_EPS
from rescue_eval.io.results import complete_lines_from, results_dir

log = logging.getLogger("rescue_eval")

LIVE = "live/"  # prefix of every live key, apart from the final scores of the summary
RECORD_FIELDS = ("iou", "intersection", "union", "oracle_iou", "failure")  # what a point needs
ROLE_FIELDS = ("busy_fraction", "mean_queue_wait_s")


class ResultTail:
    """The records of one output directory, each rank file read on from where the last read
    stopped. A torn last line is read once it is complete; an id written twice keeps its last
    line (a rerun replaces records). Only the fields of a point are kept, so a large split
    costs little memory."""

    def __init__(self, out: Path):
        self.folder = results_dir(out)
        self.read_to: dict[Path, tuple[int, int]] = {}  # path -> (inode, offset of the first unread byte)
        self.records: dict[str, dict] = {}

    def read(self) -> dict[str, dict]:
        files = {path: path.stat() for path in sorted(self.folder.glob("rank-*.jsonl"))}
        if any(self.replaced(path, stat) for path, stat in files.items()):
            # a rerun set failed records aside by rewriting the file: records read before may be gone
            self.read_to, self.records = {}, {}
        for path, stat in files.items():
            lines, end = complete_lines_from(path, self.read_to.get(path, (stat.st_ino, 0))[1])
            for line in lines:
                record = json.loads(line)
                self.records[record["id"]] = {k: record.get(k) for k in RECORD_FIELDS}
            self.read_to[path] = (stat.st_ino, end)
        return self.records

    def replaced(self, path: Path, stat) -> bool:
        if path not in self.read_to:
            return False
        inode, offset = self.read_to[path]
        return stat.st_ino != inode or stat.st_size < offset


def live_point(records: dict[str, dict], total: int, new: int, elapsed_s: float,
               roles: Optional[dict] = None) -> dict:
    """One point of the live charts: how far the job is (every record counts as done; `new` of
    them arrived in `elapsed_s`), running scores over the records that have one (unscored
    samples have none), failures by reason, and each role's busy fraction and queue wait."""
    rate = new / elapsed_s if elapsed_s > 0 else 0.0
    point = {"samples_done": len(records), "samples_total": total, "samples_per_s": rate}
    if rate > 0:
        point["eta_s"] = max(total - len(records), 0) / rate
    scored = [r for r in records.values() if r["iou"] is not None]
    if scored:
        point["giou"] = sum(r["iou"] for r in scored) / len(scored)
        point["ciou"] = sum(r["intersection"] for r in scored) / (sum(r["union"] for r in scored) + CIOU_EPS)
        point["oracle_iou"] = sum(r["oracle_iou"] for r in scored) / len(scored)
    failures = Counter(r["failure"] for r in records.values() if r["failure"] is not None)
    point["n_failed"] = sum(failures.values())
    point.update({f"failures/{reason}": n for reason, n in failures.items()})
    for role, stats in (roles or {}).items():
        point.update({f"roles/{role}/{k}": stats[k] for k in ROLE_FIELDS if k in stats})
    return {LIVE + key: value for key, value in point.items()}


class LiveLogger:
    """A daemon thread that logs a point every `interval_s` seconds until `stop()`, which logs
    the last one. Logging never raises into the job: the first failure is a warning, later ones
    are dropped quietly, and the thread goes on."""

    def __init__(self, out: Path, log_point: Callable[[dict], None], total: int, interval_s: float,
                 role_stats: Optional[Callable[[], dict]] = None):
        self.tail, self.log_point, self.total = ResultTail(out), log_point, total
        self.interval_s, self.role_stats = interval_s, role_stats
        self.failures_seen: set[str] = set()  # reasons logged before, logged as 0 once replaced
        self.warned = False
        self.started = time.monotonic()
        self.done_at_start = self.guarded(lambda: len(self.tail.read())) or 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True, name="wandb-live")
        self.thread.start()

    def loop(self) -> None:
        while not self.stopping.wait(self.interval_s):
            self.guarded(self.log_now)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.guarded(self.log_now)

    def log_now(self) -> None:
        records = self.tail.read()
        roles = None
        if self.role_stats is not None:
            try:
                roles = self.role_stats()
            except Exception as exc:  # noqa: BLE001 - the callback's failure costs only the role keys
                self.warn_once("role statistics", exc)
        # records set aside after the start (a rerun rewriting a file) can leave fewer than at the start
        point = live_point(records, self.total, max(len(records) - self.done_at_start, 0),
                           time.monotonic() - self.started, roles)
        reasons = {k for k in point if k.startswith(LIVE + "failures/")}
        point.update({k: 0 for k in self.failures_seen - reasons})
        self.failures_seen |= reasons
        self.log_point(point)

    def guarded(self, step: Callable):
        try:
            return step()
        except Exception as exc:  # noqa: BLE001 - a dashboard point is never worth stopping the job
            self.warn_once("a live point", exc)
            return None

    def warn_once(self, what: str, exc: Exception) -> None:
        if not self.warned:
            self.warned = True
            log.warning("wandb: could not log %s (%s: %s); the job goes on, later such failures are not "
                        "reported", what, type(exc).__name__, exc)
