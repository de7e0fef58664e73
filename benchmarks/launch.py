"""Starting torchrun jobs for the benchmarks, and never leaving a process behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMON_RUN_ARGS = ["--run.progress", "false", "--wandb.enabled", "false", "--run.overlays", "0"]


def torchrun(world: int, module: str, args: list[str], timeout_s: float, env: dict | None = None) -> None:
    """`python -m torch.distributed.run --standalone -m MODULE ARGS` on `world` ranks; raises with
    the tail of its output when it fails. The job runs in its own process group, which is
    killed whole on a timeout or an interrupt (torchrun's workers with it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           "-m", module, *args]
    threads = max(1, (os.cpu_count() or 1) // world)  # the ranks share the machine's cores
    full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except BaseException:  # a timeout, or Ctrl-C on the benchmark
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        first_error = max(output.find("Traceback"), 0)  # a rank's own error, before torchrun's summary
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n"
                           f"{output[first_error:first_error + 4000]}")
