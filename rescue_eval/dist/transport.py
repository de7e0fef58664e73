"""Role calls between ranks behind one protocol; `dist.transport` picks one from `TRANSPORTS`.

A transport starts after the process group (it may rendezvous through the group's store),
makes the role servers of this rank reachable (`serve`), gives clients for roles hosted on
other ranks (`client`: an object with the role's protocol methods), and stops: gracefully once
no rank needs the roles served here, or at once when this rank failed (`abort`).

A backend's error travels back as a value and is raised on the caller as a RoleCallError (that
sample's failure); a transport failure (a rank gone, a timeout) is a TransportError, which stops
the job instead of being recorded as failed samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from rescue_eval.core.errors import FatalError, UsageError
from rescue_eval.core.registry import Registry
from rescue_eval.dist.serving import RoleServer

TRANSPORTS = Registry("transport", "dist.transport")
TRANSPORTS.register("tcp", "rescue_eval.dist.tcp:TcpTransport")
TRANSPORTS.register("rpc", "rescue_eval.dist.rpc:RpcTransport")
TRANSPORTS.register("gloo", "rescue_eval.dist.gloo:GlooTransport")
TRANSPORTS.register("local", "rescue_eval.dist.transport:LocalTransport")


def between_ranks() -> tuple[str, ...]:
    """The transports that carry role calls between ranks: every registered one but `local`
    (the distributed tests and the benchmark run each)."""
    return tuple(name for name in TRANSPORTS.names() if name != "local")


@dataclass
class DistConfig:
    """Distribution: how ranks reach the roles other ranks host.

    Attributes:
        transport: what carries role calls between ranks: tcp (sockets of the standard library: the least CPU per call), rpc (TensorPipe), or gloo (c10d point-to-point messages); local: no calls between ranks
        timeout_s: collectives' timeout: ranks may finish their shards hours apart
        rpc_timeout_s: one role call's timeout, its queueing included
    """

    transport: Literal[TRANSPORTS.names()] = "tcp"
    timeout_s: float = 86400.0
    rpc_timeout_s: float = 1800.0


class TransportError(FatalError):
    """The transport itself failed: the job cannot go on correctly."""


class RoleCallError(RuntimeError):
    """The remote backend raised; the message names the role and the error, `transient` whether
    that error may pass by itself (`rescue_eval.core.errors.is_transient`)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class Transport(Protocol):
    def start(self, store, rank: int, world: int, settings: DistConfig) -> None: ...

    def serve(self, server: RoleServer) -> None: ...

    def client(self, role: str, hosts: list[int]) -> object: ...

    def stop(self) -> None:
        """Wait until no rank needs the roles served here, then leave."""

    def abort(self) -> None:
        """Leave without waiting for the other ranks (this rank failed)."""


class LocalTransport:
    """Every role this process calls is served in it (one process, or every role placed on all
    ranks): there is nothing to reach."""

    def start(self, store, rank: int, world: int, settings: DistConfig) -> None:
        pass

    def serve(self, server: RoleServer) -> None:
        pass

    def client(self, role: str, hosts: list[int]) -> object:
        raise UsageError(f"{role} is placed on ranks {hosts}, which this process cannot reach with the local "
                         f"transport; use --dist.transport tcp, rpc or gloo.")

    def stop(self) -> None:
        pass

    def abort(self) -> None:
        pass


def make_transport(name: str) -> Transport:
    return TRANSPORTS.get(name)()
