import threading

import pytest

from rescue_eval.dist.serving import LocalRole, RoleServer

pytestmark = pytest.mark.unit


class Doubler:
    """Test double backend: answers 2*x, raises on a negative item; records batch sizes."""

    def __init__(self):
        self.batches = []
        self.gate = threading.Event()

    def score(self, items):
        self.gate.wait(5)
        self.batches.append(len(items))
        if any(x < 0 for x in items):
            raise ValueError("negative item")
        return [2 * x for x in items]


def test_requests_from_many_threads_are_merged_and_answered_in_order():
    backend = Doubler()
    server = RoleServer("scorer", backend, max_batch=64, max_wait_s=0.05)
    role = LocalRole(server)
    results = {}

    def client(k):
        results[k] = role.score([k, k + 100, k + 200])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    backend.gate.set()
    for t in threads:
        t.join()
    server.close()
    assert results == {k: [2 * k, 2 * (k + 100), 2 * (k + 200)] for k in range(8)}
    assert sum(backend.batches) == 24 and len(backend.batches) < 8  # merged across requests
    stats = server.stats()
    assert stats["requests"] == 24 and stats["batches"] == len(backend.batches)
    assert stats["mean_batch"] == pytest.approx(24 / len(backend.batches))


def test_a_failing_request_does_not_fail_its_batch_mates():
    backend = Doubler()
    server = RoleServer("scorer", backend, max_batch=64, max_wait_s=0.05)
    futures = [server.submit("score", [1, 2]), server.submit("score", [-1]), server.submit("score", [3])]
    backend.gate.set()
    assert futures[0].result() == [2, 4] and futures[2].result() == [6]
    with pytest.raises(ValueError, match="negative"):
        futures[1].result()
    server.close()


def test_max_batch_is_respected_and_methods_are_not_mixed():
    class TwoMethods:
        def __init__(self):
            self.calls = []

        def rate(self, items):
            self.calls.append(("rate", len(items)))
            return items

        def duel(self, items):
            self.calls.append(("duel", len(items)))
            return items

    backend = TwoMethods()
    server = RoleServer("judge", backend, max_batch=3, max_wait_s=0.02)
    futures = [server.submit("rate", [i]) for i in range(5)] + [server.submit("duel", [9])]
    assert [f.result() for f in futures] == [[0], [1], [2], [3], [4], [9]]
    server.close()
    assert all(n <= 3 for _, n in backend.calls)
    assert sum(n for m, n in backend.calls if m == "rate") == 5 and ("duel", 1) in backend.calls


def test_interleaved_methods_still_fill_batches_oldest_first():
    """A judge's queue mixes rates and duels; a request of the other method must not cut a batch
    short (that left the judge's batches at a quarter of max_batch)."""
    gate, entered = threading.Event(), threading.Event()

    class Judge:
        def __init__(self):
            self.calls = []

        def rate(self, items):
            entered.set()
            gate.wait(5)
            self.calls.append(("rate", list(items)))
            return items

        def duel(self, items):
            self.calls.append(("duel", list(items)))
            return items

    backend = Judge()
    server = RoleServer("judge", backend, max_batch=8, max_wait_s=0.05)
    first = server.submit("rate", [0])  # occupies the batcher until the gate opens
    assert entered.wait(5)
    futures = [server.submit("rate" if k % 2 else "duel", [k]) for k in range(1, 13)]
    gate.set()
    assert first.result() == [0] and [f.result() for f in futures] == [[k] for k in range(1, 13)]
    server.close()
    assert backend.calls[0] == ("rate", [0])
    assert backend.calls[1] == ("rate", [1, 3, 5, 7, 9, 11])  # the oldest waiting request's method, all of it
    assert backend.calls[2] == ("duel", [2, 4, 6, 8, 10, 12])
