"""SLURM launch on a real single-node cluster (launchers/slurm/local_cluster.sh): the demo run
through launchers/slurm/rescue.sbatch with `sbatch --wait`, and its preemption path (USR1 ->
`scontrol requeue` -> the job runs again; `scancel` stays a cancel).

Skipped where SLURM is not installed, unless RESCUE_EVAL_REQUIRE_SLURM=1 (CI), where that fails.
"""
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import SCORES, scores
from tests.slurm import ROOT, SBATCH_SCRIPT, SKIP, WHY, job_state, local_cluster, run, until

pytestmark = pytest.mark.slurm

if SKIP:
    pytest.skip(WHY, allow_module_level=True)

DEMO_ARGS = ("--config", "configs/demo.yaml", "--max_n", "2", "--run.progress", "false", "--wandb.enabled", "false")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """Environment for SLURM's clients pointing at a fresh single-node cluster."""
    with local_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """An empty cache: the job builds the tiny checkpoints and the demo set on first use."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def slurm_demo(slurm, cache, tmp_path_factory):
    """The demo evaluation as a SLURM batch job: 1 node, 2 ranks, waited for with `sbatch --wait`."""
    tmp = tmp_path_factory.mktemp("slurm-demo")
    out, log = tmp / "slurm-out", tmp / "job.log"
    env = {**slurm, "NPROC_PER_NODE": "2", "PYTHON": sys.executable, "RESCUE_EVAL_CACHE": cache}
    t0 = time.monotonic()
    proc = run(["sbatch", "--wait", f"--output={log}", "--job-name=rescue-demo", str(SBATCH_SCRIPT),
                 *DEMO_ARGS, "--output", str(out)], env, timeout=1200, check=False)
    print(f"sbatch --wait: exit {proc.returncode} after {time.monotonic() - t0:.1f} s")
    return out, proc, log.read_text() if log.exists() else "(no job log)"


def test_demo_job_runs_to_completion(slurm_demo):
    out, proc, log = slurm_demo
    assert proc.returncode == 0, f"job failed: exit {proc.returncode}\n{proc.stderr}\n--- job log ---\n{log[-6000:]}"
    assert "2 rank(s)" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 16
    ids = [json.loads(line)["id"] for path in sorted((out / "results").glob("rank-*.jsonl"))
           for line in path.read_text().splitlines() if line.strip()]
    counts = Counter(ids)
    assert len(counts) == 16 and set(counts.values()) == {1}, counts


def run_torchrun(env: dict, out: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """The same evaluation as the SLURM job, under plain torchrun on this machine."""
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                 "-m", "rescue_eval", "run", *DEMO_ARGS, "--output", str(out)], env, timeout=1200)


def assert_same_scores(a: Path, b: Path) -> None:
    sa, sb = scores(a), scores(b)
    assert sa == sb, {k: (sa[k], sb[k]) for k in SCORES if sa[k] != sb[k]}


def test_slurm_scores_equal_torchrun_scores(slurm_demo, cache, tmp_path):
    out, proc, log = slurm_demo
    assert proc.returncode == 0, log[-3000:]
    run_torchrun({**os.environ, "RESCUE_EVAL_CACHE": cache}, tmp_path / "torchrun-out")
    assert_same_scores(out, tmp_path / "torchrun-out")


# --- preemption ------------------------------------------------------------------------------

STUB = """#!{python}
# Stands in for PYTHON in rescue.sbatch: records how it was started and the TERM that stops it.
import json, os, signal, sys, time
def note(event):
    with open(os.environ["STUB_LOG"], "a") as f:
        f.write(json.dumps({{"event": event, "restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
                            "argv": sys.argv[1:], "cwd": os.getcwd(),
                            "pythonpath": os.environ.get("PYTHONPATH", "")}}) + "\\n")
def on_term(*_):
    note("term")
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
note("start")
time.sleep(600)
"""


def test_usr1_requeues_and_the_job_runs_again_while_scancel_stays_a_cancel(slurm, tmp_path):
    stub, stub_log, job_log = tmp_path / "python", tmp_path / "stub.jsonl", tmp_path / "job.log"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    env = {**slurm, "PYTHON": str(stub), "STUB_LOG": str(stub_log), "NPROC_PER_NODE": "2",
           "TORCHRUN_MAX_RESTARTS": "3"}
    env.pop("MASTER_PORT", None)
    jid = run(["sbatch", "--parsable", f"--output={job_log}", "--job-name=rescue-preempt", str(SBATCH_SCRIPT),
                "--config", "configs/demo.yaml", "--output", str(tmp_path / "out")], env, timeout=30).stdout.strip()
    jid = jid.split(";")[0]

    def events(kind, restart):
        lines = stub_log.read_text().splitlines() if stub_log.exists() else []
        return [e for e in map(json.loads, lines) if e["event"] == kind and e["restart"] == restart]

    try:
        first = until("the job to start", lambda: events("start", 0), 60)[0]
        # What each node's task runs: torchrun (via PYTHON -m torch.distributed.run) -> rescue_eval run
        assert first["argv"] == [
            "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--rdzv_backend=c10d",
            f"--rdzv_endpoint=localhost:{20000 + int(jid) % 10000}", f"--rdzv_id={jid}", "--max-restarts=3",
            "-m", "rescue_eval", "run", "--config", "configs/demo.yaml", "--output", str(tmp_path / "out")]
        assert first["cwd"] == str(ROOT) and first["pythonpath"].split(":")[0] == str(ROOT)

        # The warning SLURM sends before the time limit (--signal=B:USR1@120), sent by hand.
        run(["scancel", "--signal=USR1", "--batch", jid], env, timeout=30)
        seen = set()

        def requeued():
            job = job_state(env, jid)
            seen.add(job.get("JobState"))
            return job.get("Restarts") == "1" and job.get("JobState") in ("PENDING", "REQUEUED", "CONFIGURING", "RUNNING")
        until("the job to be requeued", requeued, 30)
        until("the first run's ranks to get TERM", lambda: events("term", 0), 30)
        # Requeued jobs wait cred_expire (10 s on the test cluster) before they may start again.
        until("the requeued job to run again", lambda: events("start", 1), 90)
        assert job_state(env, jid).get("Restarts") == "1"

        # A user's scancel: the TERM trap must not requeue it.
        run(["scancel", jid], env, timeout=30)
        until("the cancelled job to end", lambda: job_state(env, jid).get("JobState") in (None, "CANCELLED"), 60)
        # the trap decides, and says so, before the batch shell exits: no later requeue can follow
        until("the trap's decision on TERM", lambda: "not requeueing" in job_log.read_text(), 30)
        job = job_state(env, jid)
        assert job.get("JobState") in (None, "CANCELLED") and job.get("Restarts", "1") == "1", job
        assert job_log.read_text().count(f"requeued job {jid}") == 1 and not events("start", 2)
    finally:
        run(["scancel", jid], env, timeout=30, check=False)

    log = job_log.read_text()
    assert "caught SIGUSR1" in log and f"requeued job {jid}" in log
    assert "job cancelled or ended by SLURM: not requeueing" in log
    # --open-mode=append: the second run's lines follow the first run's in the same log
    assert log.index(f"job {jid} restart 0") < log.index(f"job {jid} restart 1")
