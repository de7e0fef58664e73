"""Several "nodes" on one machine for multi-node tests: Linux network namespaces with their own
private addresses, joined by veth pairs to a bridge in a namespace of its own (nothing is added
to this machine's own network), each with a hostname of its own (a UTS namespace) that its
/etc/hosts resolves to 127.0.1.1 as Debian's installer writes it, while the other nodes' names
resolve to their real addresses, as a cluster's DNS would. Everything is torn down on exit,
also on failure: the namespaces' processes are killed first.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest


def ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(command, check=True, capture_output=True, timeout=30)


class Cluster:
    def __init__(self, size: int):
        tag = uuid.uuid4().hex[:6]
        self.switch = f"rsw-{tag}"
        self.names = [f"node{i}" for i in range(size)]
        self.namespaces = [f"rn{i}-{tag}" for i in range(size)]
        octet = 16 + int(tag, 16) % 200  # a /24 of 10.213.0.0/16, used only inside these namespaces
        self.addresses = [f"10.213.{octet}.{i + 1}" for i in range(size)]
        self.tag = tag

    def create(self) -> None:
        ip("netns", "add", self.switch)
        ip("link", "add", "br0", "type", "bridge", netns=self.switch)
        ip("link", "set", "br0", "up", netns=self.switch)
        for i, (ns, address) in enumerate(zip(self.namespaces, self.addresses)):
            ip("netns", "add", ns)
            port = f"p{i}-{self.tag}"  # the bridge's end, created here and moved into the switch
            ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", port, "netns", self.switch)
            ip("link", "set", port, "master", "br0", "up", netns=self.switch)
            ip("link", "set", "lo", "up", netns=ns)
            ip("addr", "add", f"{address}/24", "dev", "eth0", netns=ns)
            ip("link", "set", "eth0", "up", netns=ns)
            hosts = Path("/etc/netns") / ns / "hosts"
            hosts.parent.mkdir(parents=True, exist_ok=True)
            others = "".join(f"{a} {n}\n" for n, a in zip(self.names, self.addresses) if n != self.names[i])
            hosts.write_text(f"127.0.0.1 localhost\n127.0.1.1 {self.names[i]}\n{others}")

    def popen(self, node: int, argv: list[str], env: dict, **kwargs) -> subprocess.Popen:
        """`argv` on node `node` (its network, its /etc/hosts and its hostname), in a process group."""
        inner = ["unshare", "--uts", "sh", "-c", f'hostname {self.names[node]} && exec "$@"', "sh", *argv]
        return subprocess.Popen(["ip", "netns", "exec", self.namespaces[node], *inner], env=env,
                                start_new_session=True, **kwargs)

    def kill(self, node: int) -> None:
        """Every process of the node, at once: the node disappears."""
        pids = subprocess.run(["ip", "netns", "pids", self.namespaces[node]], capture_output=True, text=True).stdout
        for pid in pids.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def destroy(self) -> None:
        for node in range(len(self.names)):
            self.kill(node)
        for ns in [*self.namespaces, self.switch]:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)  # veth pairs go with them
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def cannot(why: str) -> None:
    """A skip where this machine cannot make nodes; a failure in CI (RESCUE_EVAL_REQUIRE_NETNS=1)."""
    if os.environ.get("RESCUE_EVAL_REQUIRE_NETNS") == "1":
        pytest.fail(f"RESCUE_EVAL_REQUIRE_NETNS=1 but {why}", pytrace=False)
    pytest.skip(why)


@contextmanager
def cluster(size: int):
    """`size` nodes, or a skip where this machine cannot make them (not root, no iproute2)."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare") or not shutil.which("nsenter"):
        cannot("network namespaces need root, iproute2, unshare and nsenter")
    made = Cluster(size)
    try:
        try:
            made.create()
        except subprocess.CalledProcessError as exc:
            cannot(f"this machine cannot make network namespaces and bridges ({exc.stderr.strip()})")
        yield made
    finally:
        made.destroy()
