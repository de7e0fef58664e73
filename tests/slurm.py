"""Shared by the SLURM tests: a throwaway cluster (launchers/slurm/local_cluster.sh, on localhost
or on the network namespaces of tests/netns.py), commands with their output in the failure
message, and waiting for a job's state."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ROOT / "launchers" / "slurm"
SBATCH_SCRIPT = LAUNCHERS / "rescue.sbatch"
MISSING = [b for b in ("sbatch", "scontrol", "slurmctld", "slurmd", "munged")
           if not shutil.which(b) and not Path("/usr/sbin", b).exists()]
WHY = f"SLURM is not installed (missing {', '.join(MISSING)}; apt-get install munge slurmctld slurmd slurm-client)"
SKIP = bool(MISSING) and os.environ.get("RESCUE_EVAL_REQUIRE_SLURM") != "1"  # CI sets it: missing SLURM fails there


def run(cmd, env, timeout, check=True, **kw):
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@contextmanager
def local_cluster(directory: Path, nodes: str | None = None):
    """The environment of SLURM's clients for a fresh cluster in `directory` (`nodes`: the
    script's LOCAL_SLURM_NODES); the cluster is stopped afterwards, also on failure."""
    if MISSING:  # and RESCUE_EVAL_REQUIRE_SLURM=1: every test fails with this message
        pytest.fail(f"RESCUE_EVAL_REQUIRE_SLURM=1 but {WHY}", pytrace=False)
    script = str(LAUNCHERS / "local_cluster.sh")
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin", **({"LOCAL_SLURM_NODES": nodes} if nodes else {})}
    try:
        t0 = time.monotonic()
        proc = run([script, "start", str(directory)], env, timeout=120, check=False)
        if proc.returncode != 0:
            pytest.fail(f"local SLURM cluster did not start:\n{proc.stderr[-6000:]}", pytrace=False)
        conf = re.search(r"^export SLURM_CONF=(\S+)$", proc.stdout, re.M).group(1)
        print(f"cluster up in {time.monotonic() - t0:.1f} s: {conf}")
        yield {**env, "SLURM_CONF": conf}
    finally:
        run([script, "stop", str(directory)], env, timeout=180, check=False)


def job_state(env, jid, client: list[str] = ()) -> dict:
    """JobState and Restarts of a job; {} once the controller has forgotten it."""
    proc = run([*client, "scontrol", "show", "job", jid], env, timeout=30, check=False)
    return dict(re.findall(r"\b(JobState|Restarts|Reason)=(\S+)", proc.stdout))


def until(what, predicate, timeout):
    t0 = time.monotonic()
    while time.monotonic() < t0 + timeout:
        value = predicate()
        if value:
            print(f"  {what}: {time.monotonic() - t0:.1f} s")
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
