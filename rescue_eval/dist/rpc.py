"""The `rpc` transport: role calls over torch.distributed.rpc (TensorPipe). The only module that knows RPC.

TensorPipe is in maintenance mode upstream; everything RPC-specific stays here, behind the
`Transport` protocol. Requests and answers travel in the wire forms of `dist.wire`.
"""
from __future__ import annotations

import itertools
import os
import socket
import threading

import torch
import torch.distributed.rpc as rpc

from rescue_eval.core.errors import is_transient
from rescue_eval.core.protocols import ROLE_METHODS
from rescue_eval.dist.serving import RoleServer
from rescue_eval.dist.transport import DistConfig, RoleCallError, TransportError
from rescue_eval.dist.wire import DecodedCache, ImageNotCached, pack, unpack


def worker_name(rank: int) -> str:
    return f"rank{rank}"


class RpcTransport:
    def start(self, store, rank: int, world: int, settings: DistConfig) -> None:
        """RPC has no store argument: it rendezvous on a fresh port that rank 0 publishes
        through the process group's store (a fresh port per torchrun restart round)."""
        if rank == 0:
            store.set("rpc_port", str(free_port()))
        port = int(store.get("rpc_port"))
        # libuv sockets and the basic channel: TensorPipe's shared-memory transport and CMA channel
        # busy-poll, which on CPU ranks sharing cores cost 4x in throughput (benchmarks/RESULTS.md);
        # everything sent here is small CPU data (image bytes once, RLE masks), where they gain nothing
        options = rpc.TensorPipeRpcBackendOptions(rpc_timeout=settings.rpc_timeout_s, num_worker_threads=32,
                                                  init_method=f"tcp://{os.environ['MASTER_ADDR']}:{port}",
                                                  _transports=["uv"], _channels=["basic"])
        try:
            rpc.init_rpc(worker_name(rank), rank=rank, world_size=world, rpc_backend_options=options)
        except RuntimeError as exc:
            interface = os.environ.get("TP_SOCKET_IFNAME", "the one the hostname resolves to")
            raise TransportError(f"RPC could not start on rank {rank} (rendezvous {os.environ['MASTER_ADDR']}:{port}, "
                                 f"interface {interface}: {str(exc).splitlines()[0][:160]}); set TP_SOCKET_IFNAME "
                                 f"and GLOO_SOCKET_IFNAME to the interface the nodes share, or use "
                                 f"--dist.transport local with every role placed on all ranks.") from exc

    def serve(self, server: RoleServer) -> None:
        _SERVERS[server.name] = server

    def client(self, role: str, hosts: list[int]) -> "RemoteRole":
        return RemoteRole(role, hosts)

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
    try:
        items = unpack(packed, _DECODED)
    except ImageNotCached as exc:
        result.set_result(("resend", str(exc)))
        return result

    def done(future):
        try:  # whatever fails here must still answer: torch would swallow it and the caller wait out the timeout
            answer = ("ok", pack(future.result()))
        except Exception as exc:  # noqa: BLE001 - the backend's error, or an answer that cannot be packed
            answer = ("error", (f"{type(exc).__name__}: {exc}", is_transient(exc)))
        result.set_result(answer)

    _SERVERS[role].submit(method, items).add_done_callback(done)
    return result


# ---- the calling side ------------------------------------------------------------------------

class RemoteRole:
    """The protocol methods of a role hosted on other ranks, spread over its hosts in turn."""

    def __init__(self, name: str, hosts: list[int]):
        self.name, self.hosts = name, list(hosts)
        self._next = itertools.cycle(self.hosts)
        self._lock = threading.Lock()
        self._sent = {h: set() for h in self.hosts}  # image keys each host already has

    def __getattr__(self, method: str):
        if method not in ROLE_METHODS.get(self.name, ()):
            raise AttributeError(method)
        return lambda batch: self.call(method, batch)

    def call(self, method: str, batch: list) -> list:
        with self._lock:
            target = next(self._next)
        for attempt in range(2):
            with self._lock:
                packed = pack(batch, None if attempt else self._sent[target])
            try:
                status, value = rpc.rpc_sync(worker_name(target), _serve, args=(self.name, method, packed))
            except Exception as exc:  # noqa: BLE001 - any RPC failure means a rank is gone or stuck
                raise TransportError(f"{self.name} on rank {target} did not answer ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}); the job stops so that "
                                     f"no sample is recorded as failed for it. Rerun the same command to "
                                     f"resume.") from exc
            if status == "ok":
                return unpack(value)
            if status == "error":
                message, transient = value
                raise RoleCallError(f"{self.name} on rank {target}: {message}", transient)
            with self._lock:  # "resend": the host evicted the image; send the bytes again
                self._sent[target].clear()
        raise TransportError(f"{self.name} on rank {target} keeps losing images; raise its cache size.")
