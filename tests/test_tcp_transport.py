"""The `tcp` transport in one process: ranks are TcpTransport objects sharing a store, each on
its own listening socket of the loopback (torchrun runs it between processes in
test_distributed.py, and between network namespaces in test_multinode.py)."""
import io
import itertools
import pickle
import socket
import threading
import time

import pytest
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st

from rescue_eval.core.types import JudgeAnswer
from rescue_eval.dist.serving import RoleServer
from rescue_eval.dist.tcp import CALL, HEADER, HELLO, MAX_FRAME, TcpTransport, bounded, read_frame
from rescue_eval.dist.transport import DistConfig, RoleCallError, TransportError

pytestmark = pytest.mark.unit


class EchoJudge:
    """A test double of a judge: rates each item with the number it carries in place of a mask."""

    def rate(self, items):
        if any(item == "raise" for item in items):
            raise ValueError("this item cannot be rated")
        if any(item == "slow" for item in items):
            time.sleep(2)
        return [JudgeAnswer(item, f"rated {item}") for item in items]

    def duel(self, items):
        return [JudgeAnswer("A", "") for _ in items]


@pytest.fixture
def ranks(monkeypatch):
    """Two ranks: rank 0 hosts a judge, rank 1 calls it. Yields (transports, judge client on rank 1)."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    store = dist.HashStore()
    settings = DistConfig(rpc_timeout_s=1.0)
    transports = [TcpTransport() for _ in range(2)]
    for rank, transport in enumerate(transports):
        transport.start(store, rank, 2, settings)
    server = RoleServer("judge", EchoJudge(), max_batch=4, max_wait_s=0.001)
    transports[0].serve(server)
    yield transports, transports[1].client("judge", [0])
    for transport in transports:
        transport.abort()
    server.close()


def test_each_calling_thread_gets_its_own_answers(ranks):
    _, judge = ranks
    answers = {}

    def call(k):
        answers[k] = [a.value for a in judge.rate([k, k + 100])]

    threads = [threading.Thread(target=call, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == {k: [k, k + 100] for k in range(16)}
    assert [a.value for a in judge.rate([7])] == [7]  # the same thread's connection, used again


def test_a_backend_error_is_that_calls_error_and_the_connection_goes_on(ranks):
    _, judge = ranks
    with pytest.raises(RoleCallError, match="judge on rank 0: ValueError: this item cannot be rated"):
        judge.rate(["raise"])
    assert [a.value for a in judge.rate([3])] == [3]


def test_a_host_that_is_gone_stops_the_job_naming_role_and_rank(ranks):
    transports, judge = ranks
    assert [a.value for a in judge.rate([1])] == [1]  # connected
    transports[0].abort()
    with pytest.raises(TransportError, match="judge on rank 0 did not answer .*Rerun the same command"):
        judge.rate([2])


def test_a_call_that_outlives_its_timeout_stops_the_job_and_its_late_answer_is_dropped(ranks):
    _, judge = ranks
    with pytest.raises(TransportError, match="judge on rank 0 did not answer"):
        judge.rate(["slow"])  # 2 s against rpc_timeout_s = 1
    time.sleep(1.2)  # the late answer arrives on the old connection, which the caller dropped
    assert [a.value for a in judge.rate([5])] == [5]


def test_stop_waits_for_every_ranks_goodbye(ranks):
    transports, judge = ranks
    judge.rate([1])
    stopped = []
    first = threading.Thread(target=lambda: (transports[0].stop(), stopped.append(0)))
    first.start()
    first.join(0.3)
    assert stopped == []  # rank 1 has not said goodbye: it may still call
    assert [a.value for a in judge.rate([4])] == [4]
    transports[1].stop()
    first.join(5)
    assert stopped == [0]


@given(st.lists(st.tuples(st.integers(0, 2 ** 64 - 1), st.binary(max_size=300)), max_size=8), st.data())
def test_frames_read_back_as_written_and_a_cut_stream_gives_its_whole_frames_then_eof(frames, data):
    encoded = [HEADER.pack(word, len(payload)) + payload for word, payload in frames]
    stream = b"".join(encoded)
    cut = data.draw(st.integers(0, len(stream)))
    reader = io.BufferedReader(io.BytesIO(stream[:cut]), buffer_size=7)  # frames straddle reads
    whole = sum(end <= cut for end in itertools.accumulate(map(len, encoded)))
    assert [read_frame(reader) for _ in range(whole)] == frames[:whole]
    with pytest.raises(EOFError):
        read_frame(reader)


def test_a_connection_without_the_jobs_token_is_closed_unanswered(ranks):
    transports, judge = ranks
    with socket.create_connection(transports[0].listener.getsockname()[:2], timeout=5) as stray:
        request = pickle.dumps(("judge", "rate", b""))
        stray.sendall(HEADER.pack(HELLO, 5) + b"guess" + HEADER.pack(CALL, len(request)) + request)
        assert stray.recv(100) == b""  # closed, no answer
    assert [a.value for a in judge.rate([6])] == [6]  # the job's own connections go on


def test_a_frame_larger_than_any_role_call_is_refused_before_its_payload_is_read():
    stream = io.BytesIO(HEADER.pack(CALL, MAX_FRAME + 1) + b"payload")
    with pytest.raises(EOFError, match="not a role call"):
        read_frame(stream)
    assert stream.tell() == HEADER.size


def test_a_request_that_cannot_be_read_is_answered_as_its_error(ranks):
    transports, _ = ranks
    sock, stream = transports[1]._connection(0)
    garbage = b"not a pickle"
    sock.sendall(HEADER.pack(CALL, len(garbage)) + garbage)
    status, (message, transient) = pickle.loads(read_frame(stream)[1])
    assert status == "error" and not transient and "UnpicklingError" in message


def test_an_interface_without_an_address_is_one_sentence_naming_the_variable(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "no-such-interface0")
    with pytest.raises(TransportError, match="cannot listen on rank 0 .*set GLOO_SOCKET_IFNAME"):
        TcpTransport().start(dist.HashStore(), 0, 2, DistConfig())


def test_a_bounded_socket_times_out_in_the_kernel_on_receive_and_on_send():
    """The caller's sockets carry no Python timeout (that polls before every receive and send):
    the kernel bounds each, and read_frame tells a timed-out receive from a closed connection."""
    ours, peer = socket.socketpair()
    with ours, peer:
        bounded(ours, 0.2)
        assert ours.gettimeout() is None
        stream = ours.makefile("rb")
        watchdog = threading.Timer(3, peer.shutdown, [socket.SHUT_WR])  # without the bound: EOF, not a hang
        watchdog.start()
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            read_frame(stream)
        watchdog.cancel()
        assert 0.15 < time.monotonic() - start < 2
        peer.sendall(HEADER.pack(CALL, 3) + b"abc")
        assert read_frame(stream) == (CALL, b"abc")  # the connection still works after a timeout
        with pytest.raises(BlockingIOError):
            ours.sendall(b"x" * (64 << 20))  # nobody reads: the send buffer stays full
