"""Item 7: how long a many-rank job takes to start: seconds from launching torchrun to the first
result line on disk, and to the end of the job, for 4 and 24 ranks (dedicated layout: roles on
ranks 0-3, every rank drives samples), on every transport, with the synthetic backends (they
only sleep, so the figures are the harness's and torch's start-up: imports, process group,
transport, role servers). Reported without a target: tests/test_many_ranks.py checks that 24
ranks give the summary of 4."""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.launch import COMMON_RUN_ARGS, REPO
from benchmarks.pipeline import DEDICATED, make_dataset
from benchmarks.table import Row

COSTS = "planner=2+1,executor=1+1,scorer=1+1,judge=2+1"
SAMPLES = 96


def timed_job(world: int, transport: str, data: list[str], tmp: Path) -> tuple[float, float]:
    """(launch -> first result line, launch -> exit) in seconds."""
    out, timelines = tmp / "out", tmp / "timelines"
    timelines.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           "-m", "benchmarks.pipeline_worker", COSTS, str(timelines), "--", "--output", str(out), *data,
           *COMMON_RUN_ARGS, *DEDICATED, "--max_n", "2", "--dist.transport", transport]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    first = None
    try:
        while proc.poll() is None:
            if first is None and any(p.stat().st_size for p in (out / "results").glob("rank-*.jsonl")):
                first = time.perf_counter() - start
            time.sleep(0.05)
        if proc.returncode != 0:
            raise RuntimeError(f"{world} ranks on {transport} failed: {proc.stderr.read()[-3000:]}")
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return first if first is not None else time.perf_counter() - start, time.perf_counter() - start


def run(repeats: int, log) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", SAMPLES)
        for transport in ("tcp", "rpc", "gloo"):
            for world in (4, 24):
                runs = []
                for k in range(repeats):
                    job = Path(tmp) / f"{transport}-{world}-{k}"
                    job.mkdir()
                    runs.append(timed_job(world, transport, data, job))
                    log(f"item 7: {world} ranks, {transport}: first result after {runs[-1][0]:.1f} s, "
                        f"done after {runs[-1][1]:.1f} s")
                for index, what in ((0, "launch to first result"), (1, "launch to end")):
                    values = [r[index] for r in runs]
                    rows.append(Row("7", f"{world} ranks, {transport}: {what} ({SAMPLES} samples), s",
                                    f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})", "",
                                    None))
    return rows
