"""The network a multi-node job uses: gloo and TensorPipe are pointed at the interface whose route
reaches the rendezvous host, unless the user chose. Checked in a network namespace of its own
(one end of a veth pair with a private address, torn down afterwards) when this machine allows it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest

from rescue_eval.dist import launch

pytestmark = pytest.mark.unit


def test_the_loopback_route_is_the_loopback_interface():
    assert launch.interface_towards("127.0.0.1") == ("lo", "127.0.0.1")


def test_variables_the_user_set_are_kept_and_the_others_follow_the_route(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")
    monkeypatch.delenv("TP_SOCKET_IFNAME", raising=False)
    line = launch.choose_network("127.0.0.1")
    assert os.environ["GLOO_SOCKET_IFNAME"] == "eth7" and os.environ["TP_SOCKET_IFNAME"] == "lo"
    assert "lo (127.0.0.1)" in line


@pytest.fixture
def namespace():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    name = f"rescue-test-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow network namespaces")
    try:  # a veth pair: one end stays here (unconfigured), the other is the namespace's node0
        subprocess.run(["ip", "link", "add", f"rt{name[-8:]}", "type", "veth", "peer", "name", "node0", "netns", name],
                       check=True, capture_output=True)
        for command in ("ip link set lo up", "ip addr add 10.213.7.2/24 dev node0", "ip link set node0 up"):
            subprocess.run(["ip", "netns", "exec", name, *command.split()], check=True, capture_output=True)
        yield name
    finally:  # deleting the namespace deletes node0, and its peer with it
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        subprocess.run(["ip", "link", "delete", f"rt{name[-8:]}"], capture_output=True)


def test_a_node_whose_hostname_resolves_to_loopback_still_finds_the_shared_interface(namespace):
    """As on a Debian cluster node (its own name -> 127.0.1.1): the route to the rendezvous host
    decides, not the hostname."""
    code = ("import os; from rescue_eval.dist import launch; "
            "print(launch.interface_towards('10.213.7.9')); print(launch.choose_network('10.213.7.9')); "
            "print(os.environ['GLOO_SOCKET_IFNAME'], os.environ['TP_SOCKET_IFNAME'])")
    env = {k: v for k, v in os.environ.items() if k not in launch.NETWORK_VARIABLES}
    out = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", code], capture_output=True,
                         text=True, env=env, timeout=60, check=True).stdout.splitlines()
    assert out[0] == "('node0', '10.213.7.2')"
    assert "node0 (10.213.7.2)" in out[1] and out[2] == "node0 node0"
