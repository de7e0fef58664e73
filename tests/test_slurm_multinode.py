"""The sbatch script on a real two-node SLURM cluster: one slurmd per network namespace of
tests/netns.py, each with its own NodeAddr, hostname and spool, the controller on the first.
The two-node job gives the one-process results; a preemption signal requeues it and it resumes
exactly, nothing lost or twice."""
import json
import sys

import pytest

from rescue_eval.dist.launch import NETWORK_VARIABLES
from rescue_eval.io.results import load_records
from tests.helpers import cli, records, records_by_id, scores
from tests.netns import cluster
from tests.slurm import SBATCH_SCRIPT, SKIP, WHY, job_state, local_cluster, run, until

pytestmark = pytest.mark.slurm

if SKIP:
    pytest.skip(WHY, allow_module_level=True)

ARGS = ["--max_n", "2", "--run.progress", "false", "--wandb.enabled", "false", "--dist.rpc_timeout_s", "120"]
DEDICATED = [f"--placement.{role}=[{k}]" for k, role in enumerate(("planner", "executor", "scorer", "judge"))]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, cli_env):
    """SLURM clients' environment, and the command prefix that runs a client on the first node."""
    with cluster(2) as nodes:
        spec = " ".join(f"{n}={a}@{ns}" for n, a, ns in zip(nodes.names, nodes.addresses, nodes.namespaces))
        with local_cluster(tmp_path_factory.mktemp("slurm2"), spec) as env:
            # one thread per process, as the baseline: another count moves SigLIP2 scores in the 7th digit
            env = {k: v for k, v in {**cli_env, **env, "OMP_NUM_THREADS": cli_env["OMP_NUM_THREADS"]}.items()
                   if k not in NETWORK_VARIABLES}
            yield {**env, "NPROC_PER_NODE": "2", "PYTHON": sys.executable}, ["ip", "netns", "exec", nodes.namespaces[0]]


@pytest.fixture(scope="module")
def one_process(cli_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("slurm2-baseline") / "w1"
    cli(cli_env, "run", "--output", str(out), *ARGS)
    return out


def test_a_two_node_job_gives_the_one_process_results(two_nodes, one_process, tmp_path):
    env, client = two_nodes
    out, log = tmp_path / "out", tmp_path / "job.log"
    proc = run([*client, "sbatch", "--wait", "--nodes=2", f"--output={log}", str(SBATCH_SCRIPT), *ARGS, *DEDICATED,
                "--output", str(out)], env, timeout=900, check=False)
    job_log = log.read_text() if log.exists() else "(no job log)"
    assert proc.returncode == 0, f"{proc.stderr}\n--- job log ---\n{job_log[-6000:]}"
    assert "2 node(s) x 2 rank(s), rendezvous node0" in job_log
    assert scores(out) == scores(one_process) and records_by_id(out) == records_by_id(one_process)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 4 and summary["roles"]["scorer"]["ranks"] == [2]  # on node1


def test_preemption_requeues_the_two_node_job_and_it_resumes_exactly(two_nodes, tmp_path):
    env, client = two_nodes
    out, log = tmp_path / "out", tmp_path / "job.log"
    slow = ["--run.parallel_requests", "1", "--max_n", "4"]  # long enough to be preempted mid-job
    jid = run([*client, "sbatch", "--parsable", "--nodes=2", "--open-mode=append", f"--output={log}",
               str(SBATCH_SCRIPT), *ARGS, *DEDICATED, *slow, "--output", str(out)], env, timeout=60).stdout
    jid = jid.strip().split(";")[0]
    try:
        until("the first samples", lambda: len(load_records(out)) >= 3, 300)
        run([*client, "scancel", "--signal=USR1", "--batch", jid], env, timeout=30)  # the preemption warning
        until("the requeued job to finish", lambda: not job_state(env, jid, client)
              or job_state(env, jid, client).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 900)
    finally:
        run([*client, "scancel", jid], env, timeout=30, check=False)
    job_log = log.read_text()
    assert f"requeued job {jid}" in job_log and f"job {jid} restart 1" in job_log, job_log[-6000:]
    recs = records(out)
    assert len(recs) == len({r["id"] for r in recs}) == 16, job_log[-6000:]
    baseline = tmp_path / "baseline"
    cli(env, "run", "--output", str(baseline), *ARGS, *slow)
    assert scores(out) == scores(baseline) and records_by_id(out) == records_by_id(baseline)
    assert json.loads((out / "summary.json").read_text())["attempts"][-1]["world_size"] == 4
