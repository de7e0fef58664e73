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

TICK_S = 0.2  # reading every thread's CPU time costs; coarser ticks disturb the run less
GROUPS = ("driver", "role servers", "transport")


def group_of(python_name: str | None) -> str | None:
    """What a thread does, from its Python name; a native thread (None) is torch's RPC or
    TensorPipe's. The sampler itself is left out."""
    if python_name == "bench-sampler":
        return None
    if python_name and python_name.startswith("role-"):
        return "role servers"  # batching, backend calls, packing answers for other ranks
    if python_name and (python_name.startswith("sample") or python_name in ("MainThread", "progress")):
        return "driver"  # the search of this rank's samples, JSONL writes, metrics, progress
    return "transport"  # RPC request handlers (pt_thread_pool), TensorPipe and gloo I/O


def cpu_by_group() -> dict[str, float]:
    """CPU seconds spent so far by this process's threads, by group (from /proc, in ns)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    cpu = dict.fromkeys(GROUPS, 0.0)
    for tid in os.listdir("/proc/self/task"):
        group = group_of(names.get(int(tid)))
        if group is None:
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                cpu[group] += int(f.read().split()[0]) / 1e9
        except FileNotFoundError:  # the thread has just ended
            pass
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
