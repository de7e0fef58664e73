"""Who this process is in the job, and the process group the ranks share.

Rank, world size, local rank and node rank come from Lightning's cluster environments: torchrun
(TorchElastic), SLURM (a job started by plain `srun`, one task per GPU) or one plain process.
The process group is gloo: it only carries the metric sync and a few small collectives.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

log = logging.getLogger("rescue_eval")

@dataclass(frozen=True)
class Launch:
    rank: int
    world: int
    local_rank: int
    node_rank: int
    launcher: str  # torchrun, slurm or single

    @property
    def distributed(self) -> bool:
        return self.world > 1


def detect() -> Launch:
    """This process's place in the job, from the environment it was started in."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    for name, env_class in (("torchrun", TorchElasticEnvironment), ("slurm", SLURMEnvironment)):
        if env_class.detect():
            env = env_class()
            if name == "slurm":  # torchrun sets these itself; srun leaves them to the job
                env.main_address, env.main_port  # noqa: B018 - fills MASTER_ADDR / MASTER_PORT
            return Launch(env.global_rank(), env.world_size(), env.local_rank(), env.node_rank(), name)
    return Launch(0, 1, 0, 0, "single")


def init_process_group(launch: Launch, timeout_s: float) -> dist.Store:
    """The gloo group of all ranks, from the env:// rendezvous; returns the store this round uses.

    torchrun keeps one store for the whole job, so after a restart (--max-restarts) the keys of
    the previous round are still there and would send the new ranks to dead addresses: each
    round's keys get a prefix of their own.
    """
    if "LOCAL_WORLD_SIZE" in os.environ:  # torchrun, on each node
        several_nodes = launch.world > int(os.environ["LOCAL_WORLD_SIZE"])
    else:  # plain srun
        several_nodes = int(os.environ.get("SLURM_NNODES", "1")) > 1
    log.info("rank %d: %s", launch.rank, choose_network(os.environ.get("MASTER_ADDR", "127.0.0.1"), several_nodes))
    timeout = timedelta(seconds=timeout_s)
    store, _, _ = next(dist.rendezvous("env://", rank=launch.rank, world_size=launch.world, timeout=timeout))
    store = dist.PrefixStore(f"rescue-eval/round-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group("gloo", store=store, rank=launch.rank, world_size=launch.world, timeout=timeout)
    return store


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_from_rank0(value, world: int):
    """`value` of rank 0 on every rank."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, world: int) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if world == 1:
        return [obj]
    box = [None] * world
    dist.all_gather_object(box, obj)
    return box


NETWORK_VARIABLES = ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME")


def interface_towards(host: str) -> tuple[str, str]:
    """(interface, local address) of this machine's route to `host`, as the kernel chooses it: a
    UDP socket `connect`ed there sends nothing but gets the local address of that route."""
    address = socket.gethostbyname(host)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((address, 9))
        local = probe.getsockname()[0]
    for name, address in _ipv4_interfaces():
        if address == local:
            return name, local
    raise OSError(f"no interface holds {local}, the local address of the route to {host}")


def _ipv4_interfaces():
    """(name, IPv4 address) of every interface that has one."""
    for _, name in socket.if_nameindex():
        try:
            yield name, _ipv4_of(name)
        except OSError:  # no IPv4 address on it
            continue


def _ipv4_of(interface: str) -> str:
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as query:  # SIOCGIFADDR
        packed = fcntl.ioctl(query.fileno(), 0x8915, struct.pack("256s", interface.encode()[:15]))
    return socket.inet_ntoa(packed[20:24])


def local_address() -> str:
    """The IPv4 address other ranks reach this one at: that of the interface chosen for gloo
    (by the user, or by `choose_network` at start), else that of the route to the rendezvous host."""
    interface = os.environ.get("GLOO_SOCKET_IFNAME", "").split(",")[0]
    if interface:
        return _ipv4_of(interface)
    return interface_towards(os.environ.get("MASTER_ADDR", "127.0.0.1"))[1]


def outward_interface() -> tuple[str, str]:
    """(interface, address) other hosts reach this one by: the default route's, else the first
    interface with an IPv4 address that is not a loopback."""
    try:
        return interface_towards("192.0.2.1")  # TEST-NET-1: only the route is looked up, nothing is sent
    except OSError:
        pass
    for name, address in _ipv4_interfaces():
        if not address.startswith("127."):
            return name, address
    raise OSError("no interface but the loopback has an IPv4 address")


def choose_network(master: str, several_nodes: bool = False) -> str:
    """Point gloo and TensorPipe at the interface whose route reaches the rendezvous host, unless
    the user set them: both otherwise pick the address the hostname resolves to, which in
    containers and on clusters (Debian writes 127.0.1.1 for it) other hosts cannot reach. On the
    rendezvous host itself that route is the loopback when its name resolves to 127.0.1.1: a job
    of several nodes then takes the interface the others reach it by. Returns a line for the log."""
    preset = {name: os.environ[name] for name in NETWORK_VARIABLES if os.environ.get(name)}
    if len(preset) == len(NETWORK_VARIABLES):
        return f"network interfaces as set: {preset}"
    try:
        interface, local = interface_towards(master)
        why = f"the route to the rendezvous host {master}"
        if several_nodes and local.startswith("127."):
            interface, local = outward_interface()
            why = f"the rendezvous host {master} is this one, and other nodes reach it there"
    except OSError as exc:
        return f"no route to the rendezvous host {master} was found ({exc}); gloo and TensorPipe choose their own"
    for name in NETWORK_VARIABLES:
        os.environ.setdefault(name, interface)
    return f"network interface {interface} ({local}): {why}"
