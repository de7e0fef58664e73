"""The `gloo` transport: role calls over c10d point-to-point messages in a gloo group of their
own (CPU tensors of pickled bytes), for machines where TensorPipe cannot start. The only module
that knows it; checked on torch 2.14 (ProcessGroupGloo send, recv, recv_anysource).

A call is two messages each way, on tags that keep callers apart:

    caller -> host   tag REQUEST_TAG         int64[3] (reply slot, size, kind), then uint8[size]
    host -> caller   tag REPLY_TAG + slot    int64[1] (size), then uint8[size]

A caller sends a request's two messages under a lock per host, so the host's listener (which
takes a header from any rank, then the payload from that rank) never sees two requests
interleave. Each request in flight has its own reply slot, so replies in any order reach the
thread waiting for them. Every wait on another rank is bounded by dist.rpc_timeout_s, as with RPC.
"""
from __future__ import annotations

import logging
import pickle
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import torch
import torch.distributed as dist

from rescue_eval.dist.calls import PeerTransport, answer_request
from rescue_eval.dist.serving import RoleServer
from rescue_eval.dist.transport import DistConfig
from rescue_eval.dist.wire import DecodedCache

log = logging.getLogger("rescue_eval")

REQUEST_TAG = 1
REPLY_TAG = 1 << 16
SLOTS = 4096  # requests in flight from one rank
CALL, BYE = 0, 1  # header kinds: a request, or "this rank calls no more"
IDLE_HOST_TIMEOUT = timedelta(days=365)


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class GlooTransport(PeerTransport):
    name = "gloo"

    def start(self, store, rank: int, world: int, settings: DistConfig) -> None:
        """A gloo group for role calls alone (collectives keep the default group): every rank
        calls this, in the same order, as c10d requires."""
        self.rank, self.world = rank, world
        self.timeout = timedelta(seconds=settings.rpc_timeout_s)
        # every call's wait passes rpc_timeout_s itself; the group's own timeout bounds only a
        # host's wait for its next request, which lasts as long as the job, however long that is
        self.group = dist.new_group(backend="gloo", timeout=IDLE_HOST_TIMEOUT)
        self.servers: dict[str, RoleServer] = {}
        self.decoded = DecodedCache()
        self.slots: queue.Queue[int] = queue.Queue()
        for slot in range(SLOTS):
            self.slots.put(slot)
        self.send_locks = {r: threading.Lock() for r in range(world)}
        # a reply's send waits until its caller takes it: not on the role server's batcher thread
        self.repliers = ThreadPoolExecutor(8, thread_name_prefix="gloo-reply")
        self.listener = threading.Thread(target=self._listen, name="gloo-listener", daemon=True)
        self.listener.start()

    def _goodbye(self, other: int) -> None:
        with self.send_locks[other]:
            self.group.send([torch.tensor([0, 0, BYE])], other, REQUEST_TAG).wait(self.timeout)

    def _serve_until_goodbyes(self) -> None:
        self.listener.join(timeout=self.timeout.total_seconds())
        self.repliers.shutdown(wait=True)

    def abort(self) -> None:
        self.repliers.shutdown(wait=False, cancel_futures=True)  # the listener is a daemon: it ends with us

    # ---- the calling side ----------------------------------------------------------------------

    def _call(self, target: int, role: str, method: str, packed: bytes) -> tuple:
        data = pickle.dumps((role, method, packed), protocol=pickle.HIGHEST_PROTOCOL)
        slot = self.slots.get()
        tag = REPLY_TAG + slot
        size = torch.empty(1, dtype=torch.int64)
        reply_size = self.group.recv([size], target, tag)  # posted first: the host never waits for it
        with self.send_locks[target]:
            self.group.send([torch.tensor([slot, len(data), CALL])], target, REQUEST_TAG).wait(self.timeout)
            self.group.send([as_tensor(data)], target, REQUEST_TAG).wait(self.timeout)
        reply_size.wait(self.timeout)
        payload = torch.empty(int(size), dtype=torch.uint8)
        self.group.recv([payload], target, tag).wait(self.timeout)
        # only a slot whose reply arrived is reused: a late reply must not reach the next request
        self.slots.put(slot)
        return pickle.loads(payload.numpy().tobytes())

    # ---- the serving side ----------------------------------------------------------------------

    def _listen(self) -> None:
        """Take requests from any rank until every other rank has said BYE."""
        byes = 0
        try:
            while byes < self.world - 1:
                header = torch.empty(3, dtype=torch.int64)
                work = self.group.recv_anysource([header], REQUEST_TAG)
                work.wait()  # the group's timeout: a host may idle as long as the job runs
                source = work._source_rank()
                slot, size, kind = header.tolist()
                if kind == BYE:
                    byes += 1
                    continue
                payload = torch.empty(size, dtype=torch.uint8)
                self.group.recv([payload], source, REQUEST_TAG).wait(self.timeout)
                reply = lambda answer, source=source, slot=slot: self._submit_reply(source, slot, answer)  # noqa: E731
                try:
                    role, method, packed = pickle.loads(payload.numpy().tobytes())
                except Exception as exc:  # noqa: BLE001 - answered as that request's error, the host goes on
                    reply(("error", (f"{type(exc).__name__}: {exc}", False)))
                    continue
                answer_request(self.servers, self.decoded, role, method, packed, reply)
        except RuntimeError as exc:  # a rank gone: its callers' own waits fail and name it
            log.debug("gloo transport: rank %d stops serving (%s)", self.rank, exc)

    def _submit_reply(self, caller: int, slot: int, answer: tuple) -> None:
        try:
            self.repliers.submit(self._reply, caller, slot, answer)
        except RuntimeError:  # shut down after an abort: nobody waits for this reply any more
            pass

    def _reply(self, caller: int, slot: int, answer: tuple) -> None:
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.group.send([torch.tensor([len(data)])], caller, REPLY_TAG + slot).wait(self.timeout)
            self.group.send([as_tensor(data)], caller, REPLY_TAG + slot).wait(self.timeout)
        except RuntimeError as exc:
            log.debug("gloo transport: no reply to rank %d (%s)", caller, exc)
