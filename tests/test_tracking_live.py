"""Live W&B points during the job: the running scores of a point computed from records, the
incremental reader of the result files every rank appends, and the logging thread with a
recording double of `run.log` (test_tracking.py reads the points back from an offline run)."""
from __future__ import annotations

import logging
import os
import threading
import time

import pytest

from rescue_eval.io.live import LiveLogger, ResultTail, live_point
from tests.helpers import LIVE_INTERVAL_S as INTERVAL_S
from tests.helpers import append_results as append
from tests.helpers import result_line as line
from tests.helpers import result_record as rec

pytestmark = pytest.mark.unit

WAIT_S = 20.0  # how long a test waits for the thread, far beyond INTERVAL_S on a busy machine


class Recorder:
    """Double of run.log: keeps every point; its first `fail_first` calls raise."""

    def __init__(self, fail_first: int = 0):
        self.points: list[dict] = []
        self.fail_first = fail_first
        self.changed = threading.Condition()

    def __call__(self, point: dict) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise OSError("wandb service gone")
        with self.changed:
            self.points.append(point)
            self.changed.notify_all()

    def wait_for(self, done: int) -> dict:
        """The first point logged with `done` samples done (after those already seen)."""
        with self.changed:
            assert self.changed.wait_for(lambda: any(p["live/samples_done"] == done for p in self.points), WAIT_S)
            return next(p for p in self.points if p["live/samples_done"] == done)


def test_point_holds_progress_running_scores_failures_and_roles():
    records = {r["id"]: r for r in [rec("a", 0.5, 10, 20), rec("b", 1.0, 30, 30),
                                    rec("c", 0.0, 0, 50, failure="no_box"), rec("d", 0.0, 0, 0, failure="no_box"),
                                    rec("e", 0.25, 5, 20, failure="judge_error"), rec("f", None)]}
    roles = {"judge": {"busy_fraction": 0.75, "mean_queue_wait_s": 0.2, "requests": 9}, "scorer": {"batches": 1}}
    point = live_point(records, total=16, new=4, elapsed_s=2.0, roles=roles)
    assert point == {
        "live/samples_done": 6, "live/samples_total": 16, "live/samples_per_s": 2.0, "live/eta_s": 5.0,
        "live/giou": pytest.approx((0.5 + 1.0 + 0.25) / 5),  # "f" has no score (unscored sample)
        "live/ciou": pytest.approx(45 / 120),
        "live/oracle_iou": pytest.approx((0.75 + 1.0 + 0.25 + 0.25 + 0.5) / 5),
        "live/n_failed": 3, "live/failures/no_box": 2, "live/failures/judge_error": 1,
        "live/roles/judge/busy_fraction": 0.75, "live/roles/judge/mean_queue_wait_s": 0.2,
    }
    assert live_point({}, total=3, new=0, elapsed_s=0.0) == {  # nothing yet: no rate, no ETA, no scores
        "live/samples_done": 0, "live/samples_total": 3, "live/samples_per_s": 0.0, "live/n_failed": 0}
    assert live_point(records, total=4, new=6, elapsed_s=1.0)["live/eta_s"] == 0  # more done than the total


def test_tail_reads_only_complete_new_lines_and_keeps_an_ids_last_record(tmp_path):
    tail = ResultTail(tmp_path)
    assert tail.read() == {}  # no results folder yet
    first = line(rec("a", 0.5, failure="no_box"))
    append(tmp_path, 0, line(rec("b", 1.0)) + first[:10])  # a torn line: another rank is writing it
    append(tmp_path, 3, line(rec("c", 0.0)))
    assert sorted(tail.read()) == ["b", "c"]
    append(tmp_path, 0, first[10:] + line(rec("a", 0.75)))  # completed, then rerun: the last line counts
    records = tail.read()
    assert sorted(records) == ["a", "b", "c"]
    assert records["a"] == {"iou": 0.75, "intersection": 0, "union": 0, "oracle_iou": 1.0, "failure": None}

    # a rerun sets failed records aside by replacing the file with a shorter one
    path = tmp_path / "results" / "rank-0.jsonl"
    path.with_suffix(".tmp").write_bytes(line(rec("b", 1.0)))
    os.replace(path.with_suffix(".tmp"), path)
    assert sorted(tail.read()) == ["b", "c"]


def test_thread_logs_points_as_lines_arrive_and_survives_failures(tmp_path, caplog):
    append(tmp_path, 0, line(rec("old", 1.0, 4, 4)))
    recorder = Recorder(fail_first=1)
    calls = []

    def role_stats():
        calls.append(1)
        if len(calls) % 2 == 0:  # every other call fails: those points lose their role keys only
            raise RuntimeError("rank 1 did not answer")
        return {"planner": {"busy_fraction": 0.5, "mean_queue_wait_s": 0.01}}

    with caplog.at_level(logging.WARNING, logger="rescue_eval"):
        before_start = time.monotonic()
        live = LiveLogger(tmp_path, recorder, total=5, interval_s=INTERVAL_S, role_stats=role_stats)
        started = time.monotonic()
        assert recorder.wait_for(1)["live/samples_per_s"] == 0.0  # a record there at the start is done, not new
        append(tmp_path, 1, line(rec("x", 0.5, 1, 2, failure="no_box")) + b'{"id": "y"')
        assert recorder.wait_for(2)["live/failures/no_box"] == 1
        append(tmp_path, 1, b', "iou": 0.0, "intersection": 0, "union": 6, "oracle_iou": 0.0, "failure": null}\n')
        append(tmp_path, 0, line(rec("x", 0.25, 1, 4)))  # x redone on another rank: its failure is gone
        recorder.wait_for(3)
        before_stop = time.monotonic()
        live.stop()
        stopped = time.monotonic()
    assert not live.thread.is_alive()

    last = recorder.points[-1]  # logged by stop()
    assert last["live/samples_done"] == 3 and last["live/failures/no_box"] == 0 and last["live/n_failed"] == 0
    assert last["live/giou"] == pytest.approx((1.0 + 0.25 + 0.0) / 3)
    assert last["live/ciou"] == pytest.approx((4 + 1 + 0) / (4 + 4 + 6))
    # two new samples since the start, over the time the thread ran
    assert 2 / (stopped - before_start) <= last["live/samples_per_s"] <= 2 / (before_stop - started)
    assert last["live/eta_s"] == pytest.approx(2 / last["live/samples_per_s"])
    role_keys = {"live/roles/planner/busy_fraction", "live/roles/planner/mean_queue_wait_s"}
    assert any(role_keys <= set(p) for p in recorder.points)
    assert any(not role_keys & set(p) and "live/giou" in p for p in recorder.points)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "wandb service gone" in warnings[0]  # the first failure, once
