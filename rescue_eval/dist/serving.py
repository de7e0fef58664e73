"""A role server: a bounded request queue and a micro-batcher in front of one backend.

Driver threads (this rank's samples in flight, and other ranks' requests arriving over the transport)
submit small requests - one sample's boxes, one sample's candidates. The batcher merges
requests for the same method until `max_batch` items or `max_wait_s`, makes one backend call,
and hands each request its own slice of the answers. A merged call that raises is retried
request by request, so an error stays with the request (and sample) that caused it.

Answers are delivered by a second thread: a request's completion packs and sends its answer
to another rank, and the model should not wait for that before its next batch.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from rescue_eval.core.masks import with_pixels
from rescue_eval.core.protocols import ROLE_METHODS


@dataclass
class _Request:
    method: str
    items: list
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)


class RoleServer:
    def __init__(self, name: str, backend: object, max_batch: int = 16, max_wait_s: float = 0.005,
                 queue_size: int = 1024):
        self.name, self.backend = name, backend
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=queue_size)
        self.requests = self.batches = 0
        self.busy_s = self.queue_wait_s = 0.0
        self.started = time.perf_counter()
        self._deliveries: queue.SimpleQueue[tuple[Callable, object] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"role-{name}", daemon=True)
        self._delivery_thread = threading.Thread(target=self._deliver, name=f"role-{name}-answers", daemon=True)
        self._thread.start()
        self._delivery_thread.start()

    def submit(self, method: str, items: list) -> Future:
        """Queue a request; blocks while the queue is full (back-pressure on the drivers)."""
        request = _Request(method, list(items))
        if not request.items:
            request.future.set_result([])
        else:
            self._queue.put(request)
        return request.future

    def call(self, method: str, items: list) -> list:
        return self.submit(method, items).result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._deliveries.put(None)
        self._delivery_thread.join(timeout=30)

    def stats(self) -> dict:
        wall = time.perf_counter() - self.started
        return {"requests": self.requests, "batches": self.batches,
                "mean_batch": self.requests / self.batches if self.batches else 0.0,
                "busy_s": self.busy_s, "busy_fraction": self.busy_s / wall if wall > 0 else 0.0,
                "mean_queue_wait_s": self.queue_wait_s / self.batches if self.batches else 0.0}

    # ---- batcher thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        """Batches of one method, oldest request first. Requests of the other method (a judge
        gets rates and duels) wait in `pending` in arrival order instead of cutting the batch
        short, so batches fill up to max_batch and nothing starves."""
        pending: deque[_Request] = deque()
        stopping = False
        while pending or not stopping:
            if not pending:
                first = self._queue.get()
                if first is None:
                    return
                pending.append(first)
            method = pending[0].method
            deadline = time.perf_counter() + self.max_wait_s
            while not stopping and sum(len(r.items) for r in pending if r.method == method) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                else:
                    pending.append(nxt)
            batch, size, rest = [], 0, deque()
            for r in pending:
                if r.method == method and (not batch or size + len(r.items) <= self.max_batch):
                    batch.append(r)
                    size += len(r.items)
                else:
                    rest.append(r)
            pending = rest
            self._run(method, batch)

    def _run(self, method: str, batch: list[_Request]) -> None:
        start = time.perf_counter()
        self.queue_wait_s += sum(start - r.submitted for r in batch) / len(batch)
        fn = getattr(self.backend, method)
        try:
            # masks from another rank's executor reach a local request as EncodedMasks (core.masks)
            answers = fn([with_pixels(item) for r in batch for item in r.items])
            if len(answers) != sum(len(r.items) for r in batch):
                raise RuntimeError(f"{self.name}.{method} returned {len(answers)} answers")
            offset = 0
            for r in batch:
                self._deliveries.put((r.future.set_result, answers[offset:offset + len(r.items)]))
                offset += len(r.items)
        except Exception as exc:  # noqa: BLE001 - retried per request below, or passed to the caller
            if len(batch) == 1:
                self._deliveries.put((batch[0].future.set_exception, exc))
            else:
                for r in batch:
                    try:
                        self._deliveries.put((r.future.set_result, fn([with_pixels(item) for item in r.items])))
                    except Exception as one:  # noqa: BLE001
                        self._deliveries.put((r.future.set_exception, one))
        finally:
            self.busy_s += time.perf_counter() - start
            self.batches += 1
            self.requests += sum(len(r.items) for r in batch)

    def _deliver(self) -> None:
        while (delivery := self._deliveries.get()) is not None:
            complete, value = delivery  # a future's set_result or set_exception, and its argument
            complete(value)


class LocalRole:
    """The protocol methods of a role, served by a RoleServer in this process."""

    def __init__(self, server: RoleServer):
        self.server = server
        self.name = server.name

    def __getattr__(self, method: str):
        if method not in ROLE_METHODS.get(self.name, ()):
            raise AttributeError(method)
        return lambda batch: self.server.call(method, batch)
