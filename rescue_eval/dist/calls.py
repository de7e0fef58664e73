"""Role calls between ranks, whatever carries them: the caller's side (`RemoteRole`) and the
host's (`answer_request`). A transport only moves (role, method, packed request) to a host and
the (status, value) answer back; the wire forms, the image resend and the error classes are here.

    status "ok"      value: the packed answer
    status "error"   value: (message, transient): the backend raised; that sample fails
    status "resend"  value: a message: the host evicted an image whose bytes were left out
"""
from __future__ import annotations

import itertools
import logging
import threading
from typing import Callable

from rescue_eval.core.errors import is_transient
from rescue_eval.core.protocols import ROLE_METHODS
from rescue_eval.dist.serving import RoleServer
from rescue_eval.dist.transport import RoleCallError, TransportError
from rescue_eval.dist.wire import DecodedCache, ImageNotCached, pack, unpack

log = logging.getLogger("rescue_eval")

# (target rank, role, method, packed request) -> (status, value); raises when the transport fails
Send = Callable[[int, str, str, bytes], tuple]


def answer_request(servers: dict[str, RoleServer], decoded: DecodedCache, role: str, method: str, packed: bytes,
                   reply: Callable[[tuple], None]) -> None:
    """Unpack a request, queue it on the role's server and `reply((status, value))` once, from
    whichever thread finishes it; never raises (a lost reply would leave the caller waiting)."""
    try:
        items = unpack(packed, decoded)
        future = servers[role].submit(method, items)
    except ImageNotCached as exc:
        reply(("resend", str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - a request this host cannot take: that sample's error
        reply(("error", (f"{type(exc).__name__}: {exc}", False)))
        return

    def done(future):
        try:
            answer = ("ok", pack(future.result()))
        except Exception as exc:  # noqa: BLE001 - the backend's error, or an answer that cannot be packed
            answer = ("error", (f"{type(exc).__name__}: {exc}", is_transient(exc)))
        reply(answer)

    future.add_done_callback(done)


class RemoteRole:
    """The protocol methods of a role hosted on other ranks, spread over its hosts in turn."""

    def __init__(self, name: str, hosts: list[int], send: Send):
        self.name, self.hosts, self.send = name, list(hosts), send
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
                status, value = self.send(target, self.name, method, packed)
            except Exception as exc:  # noqa: BLE001 - any transport failure means a rank is gone or stuck
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


class PeerTransport:
    """What the transports that carry calls themselves (gloo, tcp) share: the role servers of this
    rank by name, clients that call through the subclass's `_call` (a `Send`), and a stop that
    says goodbye to every other rank and then serves until each has said its own. Subclasses
    name themselves (`name`) and set `rank`, `world` and `servers` in `start`."""

    name: str

    def serve(self, server: RoleServer) -> None:
        self.servers[server.name] = server

    def client(self, role: str, hosts: list[int]) -> RemoteRole:
        return RemoteRole(role, hosts, self._call)

    def stop(self) -> None:
        """Tell every rank this one calls no more, and serve until every rank has said so. The
        results are written by now: a rank gone at this point costs a warning, not the job."""
        for other in range(self.world):
            if other != self.rank:
                try:
                    self._goodbye(other)
                except (OSError, RuntimeError) as exc:
                    log.warning("%s transport: rank %d did not take this rank's goodbye (%s)", self.name, other, exc)
        self._serve_until_goodbyes()

    def _goodbye(self, other: int) -> None:
        """Tell rank `other` that this rank calls no more."""
        raise NotImplementedError

    def _serve_until_goodbyes(self) -> None:
        """Serve until every other rank has said goodbye (bounded by dist.rpc_timeout_s), then leave."""
        raise NotImplementedError
