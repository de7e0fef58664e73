"""The `tcp` transport: role calls over TCP sockets of Python's standard library. The only module
that knows it.

Each calling thread has its own connection to each host and makes one call at a time on it:
it writes the request and reads the answer itself, so a call wakes two threads, the host's
reader of that connection (which unpacks the request and queues it on the role server) and
the caller when the answer arrives. TensorPipe adds an I/O loop and a worker pool on both
sides, and over it a CPU rank of the benchmark spends about a quarter more CPU per sample
(benchmarks/RESULTS.md, item 3).

Frames, both ways, are (word, size) as two little-endian uint64, then `size` bytes:

    caller -> host   word HELLO: the job's token, first on every connection (rank 0 draws it
                     and shares it through the store: a stray connection is not unpickled)
                     word CALL: pickle of (role, method, packed request)
                     word BYE + rank, size 0: that rank calls no more (at the end of the job)
    host -> caller   word CALL: pickle of (status, value), the answer

Every rank listens on the address of the interface chosen for gloo (`dist.launch.local_address`)
and publishes it through the process group's store. A call's every wait (its send, then each
receive of its answer) is bounded by dist.rpc_timeout_s, as with the other transports, and data
a peer's kernel does not acknowledge within PEER_TIMEOUT_S (a machine gone) breaks the
connection, on either side.
"""
from __future__ import annotations

import hmac
import logging
import os
import pickle
import secrets
import socket
import struct
import threading
import time

from rescue_eval.dist.calls import PeerTransport, answer_request
from rescue_eval.dist.launch import local_address
from rescue_eval.dist.serving import RoleServer
from rescue_eval.dist.transport import DistConfig, TransportError
from rescue_eval.dist.wire import DecodedCache

log = logging.getLogger("rescue_eval")

HEADER = struct.Struct("<QQ")
CALL, HELLO, BYE = 0, 1, 1 << 32  # BYE + rank: that rank calls no more
MAX_FRAME = 1 << 31  # larger than any request (an image's file bytes and its masks' RLE): not one of ours
PEER_TIMEOUT_S = 60
CUT = "the connection closed, or stalled for dist.rpc_timeout_s, in the middle of a message"


def connected(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one small write: send it now
    # A peer whose machine vanished sends no FIN. Keepalive probes find it gone on an idle
    # connection (a caller waiting for its answer) and the user timeout while data is
    # unacknowledged (a request or an answer being sent): about a minute either way, where a call
    # would otherwise wait out rpc_timeout_s and an answer's send would never end. A live peer's
    # kernel acknowledges both however long its model takes.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", PEER_TIMEOUT_S // 2), ("TCP_KEEPINTVL", PEER_TIMEOUT_S // 6),
                          ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", PEER_TIMEOUT_S * 1000)):
        if hasattr(socket, option):  # Linux names; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    return sock


def bounded(sock: socket.socket, seconds: float) -> socket.socket:
    """A blocking socket whose every send and receive the kernel bounds by `seconds` (SO_SNDTIMEO,
    SO_RCVTIMEO). A Python timeout would poll before each one: two system calls, each releasing
    the GIL, where one does, and on a busy rank taking the GIL back can cost a thread switch
    (benchmarks/RESULTS.md, item 3). A receive that times out reads None (`read_frame`), a send
    raises BlockingIOError."""
    sock.settimeout(None)
    timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))  # struct timeval on Linux
    for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        sock.setsockopt(socket.SOL_SOCKET, option, timeval)
    return sock


def hang_up(sock: socket.socket) -> None:
    """Close a connection now: a thread blocked reading it wakes with EOF."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # not connected any more
        pass
    sock.close()


def send_frame(sock: socket.socket, word: int, data: bytes = b"") -> None:
    sock.sendall(HEADER.pack(word, len(data)) + data)


def read_frame(stream) -> tuple[int, bytes]:
    """(word, payload) of the next frame; TimeoutError when a `bounded` socket's receive timed out
    before the frame began, EOFError when the peer closed the connection (or stalled mid-frame)."""
    header = stream.read(HEADER.size)
    if header is None:
        raise TimeoutError("no answer within dist.rpc_timeout_s")
    if not header:
        raise EOFError("the connection closed")
    if len(header) < HEADER.size:
        raise EOFError(CUT)
    word, size = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise EOFError(f"a frame of {size} bytes is not a role call")
    payload = stream.read(size)
    if payload is None or len(payload) < size:
        raise EOFError(CUT)
    return word, payload


def listen(where: str) -> socket.socket:
    """A socket listening on the address other ranks reach this one at (`where`: this rank, or
    this machine, for the message); a TransportError naming the fix when there is none."""
    try:
        return socket.create_server((local_address(), 0), backlog=128)
    except OSError as exc:
        interface = os.environ.get("GLOO_SOCKET_IFNAME") or f"the route to {os.environ.get('MASTER_ADDR', '127.0.0.1')}"
        raise TransportError(f"the tcp transport cannot listen on {where} (interface {interface}: {exc}); set "
                             f"GLOO_SOCKET_IFNAME to the interface the nodes share, or use --dist.transport "
                             f"rpc.") from exc


class TcpTransport(PeerTransport):
    name = "tcp"

    def start(self, store, rank: int, world: int, settings: DistConfig) -> None:
        self.rank, self.world, self.store, self.timeout = rank, world, store, settings.rpc_timeout_s
        self.servers: dict[str, RoleServer] = {}
        self.decoded = DecodedCache()
        self.listener = listen(f"rank {rank}")
        host, port = self.listener.getsockname()[:2]
        if rank == 0:
            store.set("tcp_transport/token", secrets.token_hex(16))
        self.token = store.get("tcp_transport/token")
        store.set(f"tcp_transport/{rank}", f"{host}:{port}")
        self.addresses: dict[int, tuple[str, int]] = {}
        self.mine = threading.local()  # this thread's connections: {target: (socket, stream)}
        self.sockets: list[socket.socket] = []  # every connection, to close them at the end
        self.lock = threading.Lock()
        self.closed = False  # after abort, no connection is opened or kept
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
        with self.lock:
            self.closed = True
            hang_up(self.listener)  # wakes the accepting thread
            for sock in self.sockets:
                hang_up(sock)

    def _keep(self, sock: socket.socket) -> bool:
        """Count a new connection among those to close at the end; False (and closed) after abort."""
        with self.lock:
            if self.closed:
                hang_up(sock)
                return False
            self.sockets.append(sock)
            return True

    # ---- the calling side ----------------------------------------------------------------------

    def _connection(self, target: int) -> tuple:
        """This thread's connection to `target`, opened on first use."""
        connections = self.mine.__dict__.setdefault("connections", {})
        if target not in connections:
            if target not in self.addresses:
                host, port = self.store.get(f"tcp_transport/{target}").decode().rsplit(":", 1)
                self.addresses[target] = (host, int(port))
            sock = bounded(connected(socket.create_connection(self.addresses[target], timeout=self.timeout)),
                           self.timeout)
            if not self._keep(sock):
                raise ConnectionError("the transport has stopped")
            send_frame(sock, HELLO, self.token)
            connections[target] = (sock, sock.makefile("rb"))
        return connections[target]

    def _call(self, target: int, role: str, method: str, packed: bytes) -> tuple:
        sock, stream = self._connection(target)
        try:
            send_frame(sock, CALL, pickle.dumps((role, method, packed), protocol=pickle.HIGHEST_PROTOCOL))
            return pickle.loads(read_frame(stream)[1])
        except BaseException:  # a late answer must not be taken for the next call's: a new connection next time
            del self.mine.connections[target]
            stream.close()
            hang_up(sock)
            raise

    # ---- the serving side ----------------------------------------------------------------------

    def _accept(self) -> None:
        while not self.closed:
            try:
                sock, _ = self.listener.accept()
                if self._keep(sock):
                    threading.Thread(target=self._serve_connection, args=(sock,), name="tcp-host", daemon=True).start()
            except (OSError, RuntimeError) as exc:  # out of file descriptors or threads; or closed by abort
                if not self.closed:
                    log.error("tcp transport: rank %d cannot take a role-call connection (%s); raise `ulimit -n` or "
                              "lower run.parallel_requests", self.rank, exc)
                    time.sleep(0.1)

    def _serve_connection(self, sock: socket.socket) -> None:
        """Answer one calling thread's requests until it closes the connection or its rank says BYE."""

        def reply(answer: tuple) -> None:
            try:
                send_frame(sock, CALL, pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
            except OSError as exc:  # the caller is gone: nobody waits for this answer
                log.debug("tcp transport: an answer was not delivered (%s)", exc)

        try:
            connected(sock)
            with sock.makefile("rb") as stream:
                word, token = read_frame(stream)
                if word != HELLO or not hmac.compare_digest(token, self.token):
                    log.warning("tcp transport: rank %d closed a connection that is not this job's", self.rank)
                    return
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
        except Exception as exc:  # noqa: BLE001 - a caller gone or a stream that is not ours: its own waits fail
            log.debug("tcp transport: rank %d stops serving a connection (%s)", self.rank, exc)
        finally:
            hang_up(sock)
