"""SLURM launch on a real single-node cluster (launchers/slurm/local_cluster.sh): the demo run
through launchers/slurm/rescue.sbatch with `sbatch --wait`, and its preemption path (USR1 ->
`scontrol requeue` -> the job runs again; `scancel` stays a cancel).

Skipped where SLURM is not installed, unless RESCUE_EVAL_REQUIRE_SLURM=1 (CI), where that fails.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import SCORES, scores

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ROOT / "launchers" / "slurm"
SBATCH_SCRIPT = LAUNCHERS / "rescue.sbatch"
DEMO_ARGS = ("--config", "configs/demo.yaml", "--max_n", "2", "--run.progress", "false", "--wandb.enabled", "false")


def _missing_slurm() -> list[str]:
    return [b for b in ("sbatch", "scontrol", "slurmctld", "slurmd", "munged")
            if not shutil.which(b) and not Path("/usr/sbin", b).exists()]


MISSING = _missing_slurm()
WHY = f"SLURM is not installed (missing {', '.join(MISSING)}; apt-get install munge slurmctld slurmd slurm-client)"
if MISSING and os.environ.get("RESCUE_EVAL_REQUIRE_SLURM") != "1":
    pytest.skip(WHY, allow_module_level=True)


def _run(cmd, env, timeout, check=True, **kw):
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """Environment for SLURM's clients pointing at a fresh cluster; the cluster is stopped after."""
    if MISSING:  # and RESCUE_EVAL_REQUIRE_SLURM=1: every test here fails with this message
        pytest.fail(f"RESCUE_EVAL_REQUIRE_SLURM=1 but {WHY}", pytrace=False)
    cluster = tmp_path_factory.mktemp("slurm")
    script = str(LAUNCHERS / "local_cluster.sh")
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin"}
    try:
        t0 = time.monotonic()
        proc = _run([script, "start", str(cluster)], env, timeout=120, check=False)
        if proc.returncode != 0:
            pytest.fail(f"local SLURM cluster did not start:\n{proc.stderr[-6000:]}", pytrace=False)
        conf = re.search(r"^export SLURM_CONF=(\S+)$", proc.stdout, re.M).group(1)
        print(f"cluster up in {time.monotonic() - t0:.1f} s: {conf}")
        yield {**env, "SLURM_CONF": conf}
    finally:
        _run([script, "stop", str(cluster)], env, timeout=180, check=False)


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
    proc = _run(["sbatch", "--wait", f"--output={log}", "--job-name=rescue-demo", str(SBATCH_SCRIPT),
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
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
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


def _job(env, jid) -> dict:
    """JobState and Restarts of a job; {} once the controller has forgotten it."""
    proc = _run(["scontrol", "show", "job", jid], env, timeout=30, check=False)
    return dict(re.findall(r"\b(JobState|Restarts|Reason)=(\S+)", proc.stdout))


def _until(what, predicate, timeout):
    t0 = time.monotonic()
    while time.monotonic() < t0 + timeout:
        value = predicate()
        if value:
            print(f"  {what}: {time.monotonic() - t0:.1f} s")
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_usr1_requeues_and_the_job_runs_again_while_scancel_stays_a_cancel(slurm, tmp_path):
    stub, stub_log, job_log = tmp_path / "python", tmp_path / "stub.jsonl", tmp_path / "job.log"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    env = {**slurm, "PYTHON": str(stub), "STUB_LOG": str(stub_log), "NPROC_PER_NODE": "2",
           "TORCHRUN_MAX_RESTARTS": "3"}
    env.pop("MASTER_PORT", None)
    jid = _run(["sbatch", "--parsable", f"--output={job_log}", "--job-name=rescue-preempt", str(SBATCH_SCRIPT),
                "--config", "configs/demo.yaml", "--output", str(tmp_path / "out")], env, timeout=30).stdout.strip()
    jid = jid.split(";")[0]

    def events(kind, restart):
        lines = stub_log.read_text().splitlines() if stub_log.exists() else []
        return [e for e in map(json.loads, lines) if e["event"] == kind and e["restart"] == restart]

    try:
        first = _until("the job to start", lambda: events("start", 0), 60)[0]
        # What each node's task runs: torchrun (via PYTHON -m torch.distributed.run) -> rescue_eval run
        assert first["argv"] == [
            "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--rdzv_backend=c10d",
            f"--rdzv_endpoint=localhost:{20000 + int(jid) % 10000}", f"--rdzv_id={jid}", "--max-restarts=3",
            "-m", "rescue_eval", "run", "--config", "configs/demo.yaml", "--output", str(tmp_path / "out")]
        assert first["cwd"] == str(ROOT) and first["pythonpath"].split(":")[0] == str(ROOT)

        # The warning SLURM sends before the time limit (--signal=B:USR1@120), sent by hand.
        _run(["scancel", "--signal=USR1", "--batch", jid], env, timeout=30)
        seen = set()

        def requeued():
            job = _job(env, jid)
            seen.add(job.get("JobState"))
            return job.get("Restarts") == "1" and job.get("JobState") in ("PENDING", "REQUEUED", "CONFIGURING", "RUNNING")
        _until("the job to be requeued", requeued, 30)
        _until("the first run's ranks to get TERM", lambda: events("term", 0), 30)
        # Requeued jobs wait cred_expire (10 s on the test cluster) before they may start again.
        _until("the requeued job to run again", lambda: events("start", 1), 90)
        assert _job(env, jid).get("Restarts") == "1"

        # A user's scancel: the TERM trap must not requeue it.
        _run(["scancel", jid], env, timeout=30)
        _until("the cancelled job to end", lambda: _job(env, jid).get("JobState") in (None, "CANCELLED"), 60)
        # the trap decides, and says so, before the batch shell exits: no later requeue can follow
        _until("the trap's decision on TERM", lambda: "not requeueing" in job_log.read_text(), 30)
        job = _job(env, jid)
        assert job.get("JobState") in (None, "CANCELLED") and job.get("Restarts", "1") == "1", job
        assert job_log.read_text().count(f"requeued job {jid}") == 1 and not events("start", 2)
    finally:
        _run(["scancel", jid], env, timeout=30, check=False)

    log = job_log.read_text()
    assert "caught SIGUSR1" in log and f"requeued job {jid}" in log
    assert "job cancelled or ended by SLURM: not requeueing" in log
    # --open-mode=append: the second run's lines follow the first run's in the same log
    assert log.index(f"job {jid} restart 0") < log.index(f"job {jid} restart 1")
