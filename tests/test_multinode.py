"""Two nodes for real: torchrun on each of two network namespaces (tests/netns.py), c10d
rendezvous on the first, each node's hostname resolving to 127.0.1.1 on itself. The job finds
its network by itself, gives the one-process results, and a node that disappears stops it with
a message naming the node, the ranks and their roles; the rerun resumes."""
import json
import re
import subprocess
import sys
import time

import pytest

from rescue_eval.dist.launch import NETWORK_VARIABLES
from rescue_eval.io.results import load_records
from tests.helpers import TORCHRUN_ARGS, TRANSPORTS, cli, records, records_by_id, scores
from tests.netns import cluster

pytestmark = pytest.mark.torchrun

ARGS = [*TORCHRUN_ARGS, "--dist.rpc_timeout_s", "120"]  # a network mistake fails the test in minutes, not half an hour
ROLES = ("planner", "executor", "scorer", "judge")
DEDICATED = [f"--placement.{role}=[{k}]" for k, role in enumerate(ROLES)]  # ranks 0, 1 on node0; 2, 3 on node1


@pytest.fixture(scope="module")
def env(cli_env):
    """No network variables: choosing the interface is the harness's job."""
    return {k: v for k, v in cli_env.items() if k not in NETWORK_VARIABLES}


@pytest.fixture(scope="module")
def one_process(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("multinode") / "w1"
    cli(env, "run", "--output", str(out), *ARGS)
    return out


def start_nodes(nodes, env, out, *extra, port=29400):
    """torchrun on each node: 2 ranks per node, c10d rendezvous on the first node, by its name (as a
    cluster's launch script gives it)."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2", "--max-restarts=0",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={nodes.names[0]}:{port}", f"--rdzv-id={nodes.tag}",
            "-m", "rescue_eval", "run", "--output", str(out), *ARGS, *extra]
    return [nodes.popen(node, argv, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for node in range(2)]


def finish(procs, timeout=600):
    return [proc.communicate(timeout=timeout) + (proc.returncode,) for proc in procs]


# on tcp: every transport crosses the two nodes in the lost-node test below, which ends with the
# one-process results too
@pytest.mark.parametrize("layout", ["colocated", "dedicated"])
def test_two_nodes_give_the_one_process_results(env, one_process, tmp_path, layout):
    out = tmp_path / "two-nodes"
    with cluster(2) as nodes:
        results = finish(start_nodes(nodes, env, out, *(DEDICATED if layout == "dedicated" else [])))
    for _, err, code in results:
        assert code == 0, err[-3000:]
    node0_err = results[0][1]
    assert f"network interface eth0 ({nodes.addresses[0]})" in node0_err  # not 127.0.1.1, its hostname's address
    assert scores(out) == scores(one_process) and records_by_id(out) == records_by_id(one_process)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 4 and len(records(out)) == 16
    if layout == "dedicated":
        assert {role: summary["roles"][role]["ranks"] for role in ROLES} == {r: [k] for k, r in enumerate(ROLES)}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_node_that_disappears_stops_the_job_and_the_rerun_resumes(env, one_process, tmp_path, transport):
    out = tmp_path / "lost-node"
    slow = ["--dist.transport", transport, "--run.parallel_requests", "1", *DEDICATED]
    with cluster(2) as nodes:
        procs = start_nodes(nodes, env, out, *slow)
        deadline = time.monotonic() + 300
        while len(load_records(out)) < 3:  # finished lines only, while the ranks write
            assert time.monotonic() < deadline and procs[0].poll() is None
            time.sleep(0.2)
        nodes.kill(1)  # node1 and its ranks 2 and 3 (scorer, judge) are gone
        lost = time.monotonic()
        _, err, code = finish(procs[:1], timeout=300)[0]
        assert code != 0 and time.monotonic() - lost < 120
        # the failed call names the role and rank that were lost, and every rank's node and roles follow
        assert re.search(r"(scorer on rank 2|judge on rank 3) did not answer", err), err[-3000:]
        assert "rank 2 (node1): scorer; rank 3 (node1): judge" in err
        kept = len(records(out))
        procs[1].communicate(timeout=60)
        results = finish(start_nodes(nodes, env, out, *slow, port=29401))
    for _, err, code in results:
        assert code == 0, err[-3000:]
    recs = records(out)
    assert len(recs) == len({r["id"] for r in recs}) == 16 and kept >= 3  # nothing lost, nothing twice
    assert scores(out) == scores(one_process) and records_by_id(out) == records_by_id(one_process)
