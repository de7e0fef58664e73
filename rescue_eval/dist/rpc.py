"""The `rpc` transport: role calls over torch.distributed.rpc (TensorPipe). The only module that knows RPC.

TensorPipe is in maintenance mode upstream; everything RPC-specific stays here, behind the
`Transport` protocol. Requests and answers travel in the wire forms of `dist.wire`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket

import torch
import torch.distributed.rpc as rpc

from rescue_eval.dist.calls import RemoteRole, answer_request
from rescue_eval.dist.serving import RoleServer
from rescue_eval.dist.transport import DistConfig, TransportError
from rescue_eval.dist.wire import DecodedCache


def worker_name(rank: int) -> str:
    return f"rank{rank}"


@contextlib.contextmanager
def own_store_for_rpc():
    """RPC's tcp:// rendezvous with rank 0 hosting its store. torch < 2.14 takes torchrun's
    TORCHELASTIC_USE_AGENT_STORE to mean that the agent hosts a store at any address, so every
    rank waits as a client of a store nobody hosts (seen on torch 2.11; 2.14 checks the address,
    torch/distributed/rendezvous.py _agent_store_serves)."""
    flag = os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    try:
        yield
    finally:
        if flag is not None:
            os.environ["TORCHELASTIC_USE_AGENT_STORE"] = flag


class RpcTransport:
    def start(self, store, rank: int, world: int, settings: DistConfig) -> None:
        """RPC has no store argument: it rendezvous on a fresh port that rank 0 publishes
        through the process group's store (a fresh port per torchrun restart round)."""
        _worker_info.cache_clear()  # of an earlier job in this process
        if rank == 0:
            store.set("rpc_port", str(free_port()))
        port = int(store.get("rpc_port"))
        # libuv sockets and the basic channel: TensorPipe's shared-memory transport and CMA channel
        # busy-poll, which on CPU ranks sharing cores cost 4x in throughput (benchmarks/RESULTS.md);
        # everything sent here is small CPU data (image bytes once, RLE masks), where they gain nothing.
        # Four request handlers: `_serve` only unpacks and queues, and a handler woken from a larger
        # pool is more often a cold one (benchmarks/RESULTS.md, item 3)
        options = rpc.TensorPipeRpcBackendOptions(rpc_timeout=settings.rpc_timeout_s, num_worker_threads=4,
                                                  init_method=f"tcp://{os.environ['MASTER_ADDR']}:{port}",
                                                  _transports=["uv"], _channels=["basic"])
        try:
            with own_store_for_rpc():
                rpc.init_rpc(worker_name(rank), rank=rank, world_size=world, rpc_backend_options=options)
        except RuntimeError as exc:
            interface = os.environ.get("TP_SOCKET_IFNAME", "the one the hostname resolves to")
            raise TransportError(f"RPC could not start on rank {rank} (rendezvous {os.environ['MASTER_ADDR']}:{port}, "
                                 f"interface {interface}: {str(exc).splitlines()[0][:160]}); set TP_SOCKET_IFNAME "
                                 f"and GLOO_SOCKET_IFNAME to the interface the nodes share, or use "
                                 f"another transport (--dist.transport tcp or gloo).") from exc

    def serve(self, server: RoleServer) -> None:
        _SERVERS[server.name] = server

    def client(self, role: str, hosts: list[int]) -> RemoteRole:
        return RemoteRole(role, hosts, _send)

    def stop(self) -> None:
        rpc.shutdown(graceful=True)

    def abort(self) -> None:
        try:
            rpc.shutdown(graceful=False)
        except Exception:  # noqa: BLE001 - already broken; the original error is what matters
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# ---- the serving side ------------------------------------------------------------------------

_SERVERS: dict[str, RoleServer] = {}
_DECODED = DecodedCache()


@rpc.functions.async_execution
def _serve(role: str, method: str, packed: bytes) -> torch.futures.Future:
    result = torch.futures.Future()
    answer_request(_SERVERS, _DECODED, role, method, packed, result.set_result)
    return result


def _send(target: int, role: str, method: str, packed: bytes) -> tuple:
    return rpc.rpc_sync(_worker_info(target), _serve, args=(role, method, packed))


@functools.lru_cache(maxsize=None)
def _worker_info(rank: int):
    """Looked up once: a lookup by name on every call costs as much as packing a small request."""
    return rpc.get_worker_info(worker_name(rank))
