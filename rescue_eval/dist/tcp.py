"""The `tcp` transport: role calls over TCP sockets of Python's standard library. The only module
that knows it.

Each calling thread has its own connection to each host and makes one call at a time on it:
it writes the request and reads the answer itself, so a call wakes two threads, the host's
reader of that connection (which unpacks the request and queues it on the role server) and
the caller when the answer arrives. TensorPipe adds an I/O loop and a worker pool on both
sides, which on CPU ranks cost a rank about a fifth more CPU per sample (benchmarks/RESULTS.md,
item 3).

Frames, both ways, are (word, size) as two little-endian uint64, then `size` bytes:

    caller -> host   word CALL: pickle of (role, method, packed request)
                     word BYE + rank, size 0: that rank calls no more (at the end of the job)
    host -> caller   word CALL: pickle of (status, value), the answer

Every rank listens on the address of the interface chosen for gloo (`dist.launch.local_address`)
and publishes it through the process group's store. Every wait on another rank is bounded by
dist.rpc_timeout_s, as with the other transports.
"""
from __future__ import annotations

import logging
import pickle
import socket
import struct
import threading

from rescue_eval.dist.calls import PeerTransport, answer_request
from rescue_eval.dist.launch import local_address
from rescue_eval.dist.serving import RoleServer
from rescue_eval.dist.transport import DistConfig, TransportError
from rescue_eval.dist.wire import DecodedCache

log = logging.getLogger("rescue_eval")

HEADER = struct.Struct("<QQ")
CALL, BYE = 0, 1 << 32  # BYE + rank: that rank calls no more


def connected(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one small write: send it now
    # a peer whose machine vanished sends no FIN: kernel keepalive probes find it gone in about a
    # minute, where a call would otherwise wait out rpc_timeout_s (a live peer's kernel answers
    # them however long its model takes)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):  # Linux names; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    return sock


def send_frame(sock: socket.socket, word: int, data: bytes = b"") -> None:
    sock.sendall(HEADER.pack(word, len(data)) + data)


def read_frame(stream) -> tuple[int, bytes]:
    """(word, payload) of the next frame; EOFError when the peer closed the connection."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        raise EOFError("the connection closed")
    word, size = HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("the connection closed in the middle of a message")
    return word, payload


class TcpTransport(PeerTransport):
    name = "tcp"

    def start(self, store, rank: int, world: int, settings: DistConfig) -> None:
        self.rank, self.world, self.store, self.timeout = rank, world, store, settings.rpc_timeout_s
        self.servers: dict[str, RoleServer] = {}
        self.decoded = DecodedCache()
        try:
            self.listener = socket.create_server((local_address(), 0), backlog=128)
        except OSError as exc:
            raise TransportError(f"the tcp transport cannot listen on rank {rank} ({exc}); set GLOO_SOCKET_IFNAME to "
                                 f"the interface the nodes share, or use --dist.transport rpc.") from exc
        host, port = self.listener.getsockname()[:2]
        store.set(f"tcp_transport/{rank}", f"{host}:{port}")
        self.addresses: dict[int, tuple[str, int]] = {}
        self.mine = threading.local()  # this thread's connections: {target: (socket, stream)}
        self.sockets: list[socket.socket] = []  # every connection, to close them at the end
        self.lock = threading.Lock()
        self.finished = threading.Condition()
        self.goodbyes: set[int] = set()  # ranks that call no more
        threading.Thread(target=self._accept, name="tcp-accept", daemon=True).start()

    def _goodbye(self, other: int) -> None:
        send_frame(self._connection(other)[0], BYE + self.rank)

    def _serve_until_goodbyes(self) -> None:
        with self.finished:
            if not self.finished.wait_for(lambda: len(self.goodbyes) >= self.world - 1, self.timeout):
                log.warning("tcp transport: %d rank(s) did not say goodbye in %.0f s",
                            self.world - 1 - len(self.goodbyes), self.timeout)
        self.abort()

    def abort(self) -> None:
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # not connected any more
                    pass
                sock.close()

    # ---- the calling side ----------------------------------------------------------------------

    def _connection(self, target: int) -> tuple:
        """This thread's connection to `target`, opened on first use."""
        connections = self.mine.__dict__.setdefault("connections", {})
        if target not in connections:
            if target not in self.addresses:
                host, port = self.store.get(f"tcp_transport/{target}").decode().rsplit(":", 1)
                self.addresses[target] = (host, int(port))
            sock = connected(socket.create_connection(self.addresses[target], timeout=self.timeout))
            with self.lock:
                self.sockets.append(sock)
            connections[target] = (sock, sock.makefile("rb"))
        return connections[target]

    def _call(self, target: int, role: str, method: str, packed: bytes) -> tuple:
        sock, stream = self._connection(target)
        try:
            send_frame(sock, CALL, pickle.dumps((role, method, packed), protocol=pickle.HIGHEST_PROTOCOL))
            return pickle.loads(read_frame(stream)[1])
        except BaseException:  # a late answer must not be taken for the next call's: a new connection next time
            del self.mine.connections[target]
            sock.close()
            raise

    # ---- the serving side ----------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:  # closed: the transport stopped
                return
            with self.lock:
                self.sockets.append(sock)
            threading.Thread(target=self._serve_connection, args=(connected(sock),), name="tcp-host",
                             daemon=True).start()

    def _serve_connection(self, sock: socket.socket) -> None:
        """Answer one calling thread's requests until it closes the connection or its rank says BYE."""

        def reply(answer: tuple) -> None:
            try:
                send_frame(sock, CALL, pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
            except OSError as exc:  # the caller is gone: nobody waits for this answer
                log.debug("tcp transport: an answer was not delivered (%s)", exc)

        try:
            with sock.makefile("rb") as stream:
                while (frame := read_frame(stream))[0] == CALL:
                    try:
                        role, method, packed = pickle.loads(frame[1])
                    except Exception as exc:  # noqa: BLE001 - answered as that request's error, the host goes on
                        reply(("error", (f"{type(exc).__name__}: {exc}", False)))
                        continue
                    answer_request(self.servers, self.decoded, role, method, packed, reply)
            with self.finished:
                self.goodbyes.add(frame[0] - BYE)
                self.finished.notify_all()
        except (OSError, EOFError) as exc:  # a caller gone: its own waits fail and name this rank
            log.debug("tcp transport: rank %d stops serving a connection (%s)", self.rank, exc)
