"""torchrun entry of the pipeline benchmark: the real harness with SYNTHETIC role backends.

    python -m torch.distributed.run ... -m benchmarks.pipeline_worker COSTS TIMELINE_DIR -- RUN_ARGS

Every rank installs the synthetic backends (benchmarks/synthetic.py) in place of the transformers
adapters, then calls `rescue_eval.job.run` exactly as `rescue-eval run RUN_ARGS` would. A
sampler thread records, every TICK_S, this rank's finished samples (lines of its JSONL file, as
the harness writes them) and the CPU time its threads have spent, by what they do (models only
sleep, so this is the harness's own work). The ticks go to TIMELINE_DIR/rank-R.json.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from benchmarks import synthetic

TICK_S = 0.2
GROUPS = ("driver", "role servers", "transport")


def group_of(python_name: str) -> str | None:
    """What a Python thread does, from its name (the sampler itself is left out)."""
    if python_name == "bench-sampler":
        return None
    if python_name.startswith("role-"):
        return "role servers"  # batching, backend calls, packing answers for other ranks
    if python_name.startswith("sample") or python_name in ("MainThread", "progress"):
        return "driver"  # the search of this rank's samples, JSONL writes, metrics, progress
    return "transport"  # the transport's own: tcp's connection readers, gloo's reply threads


def thread_cpu_clock(tid: int) -> int:
    """The kernel's CPU clock of thread `tid` of this process (what pthread_getcpuclockid gives,
    built from the kernel's thread id: a thread that has ended gives EINVAL, where
    pthread_getcpuclockid would read its freed descriptor)."""
    return ((~tid) << 3) | 6  # CPUCLOCK_PERTHREAD_MASK | CPUCLOCK_SCHED, as glibc makes it


def cpu_by_group() -> dict[str, float]:
    """CPU seconds spent so far by this process's threads, by group: each live Python thread's
    CPU clock, and the rest of the process's time as transport (native threads: torch's RPC
    request handlers, TensorPipe and gloo I/O; and Python threads that have ended, none in a
    steady window). tcp's threads are Python threads, counted as transport by name. One
    clock_gettime per thread: reading /proc/self/task/*/schedstat instead took a seventh of a
    rank's CPU, disturbing what it measured."""
    cpu = dict.fromkeys(GROUPS, 0.0)
    total = time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)
    python_threads = 0.0
    for thread in threading.enumerate():
        try:
            seconds = time.clock_gettime(thread_cpu_clock(thread.native_id))
        except (OSError, TypeError):  # the thread has just ended, or not yet started
            continue
        python_threads += seconds
        group = group_of(thread.name)
        if group is not None:
            cpu[group] += seconds
    cpu["transport"] += total - python_threads
    cpu["role servers"] -= synthetic.backend_cpu_s()  # the synthetic answers are not the harness's work
    return cpu


class Sampler(threading.Thread):
    def __init__(self, results_file: Path):
        super().__init__(daemon=True, name="bench-sampler")
        self.results_file, self.ticks, self.stop = results_file, [], threading.Event()
        self._offset = self._lines = 0

    def _count_new_lines(self) -> None:
        if not self.results_file.exists():
            return
        with open(self.results_file, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        self._lines += data.count(b"\n")

    def run(self) -> None:
        while not self.stop.wait(TICK_S):
            self._count_new_lines()
            self.ticks.append((time.monotonic(), self._lines, cpu_by_group()))


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[2] != "--":
        raise SystemExit("usage: python -m benchmarks.pipeline_worker COSTS TIMELINE_DIR -- RUN_ARGS")
    costs, timeline_dir, _, *run_args = argv
    rank = int(os.environ.get("RANK", 0))
    line = synthetic.install(synthetic.parse_costs(costs))
    if rank == 0:
        print(line, flush=True)

    from rescue_eval import config, job

    cfg, out = config.parse([*run_args, *synthetic.backend_args()])
    sampler = Sampler(out / "results" / f"rank-{rank}.jsonl")
    sampler.start()
    try:
        job.run(cfg, out)
    finally:
        sampler.stop.set()
        sampler.join()
        Path(timeline_dir, f"rank-{rank}.json").write_text(json.dumps(sampler.ticks))


if __name__ == "__main__":
    main(sys.argv[1:])
