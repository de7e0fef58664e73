"""Remote backends: the OpenAI-compatible planner and judge against a scripted chat server, the HTTP
executor and scorer against `rescue_eval.serve` hosting the tiny local backends, and the
demo run through them. Every server here listens on 127.0.0.1, on a free port, and is closed by
its fixture; every retry loop is bounded by small timeouts."""
import base64
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from rescue_eval.models.http_roles import HttpScorer, HttpSegmenter, RemoteRoleError
from rescue_eval.models.openai_api import OpenAIJudge, OpenAIPlanner, data_url
from rescue_eval.models.prompts import DUEL_SCHEMA, PLAN_SCHEMA, RATE_SCHEMA, STRATEGIES
from rescue_eval.models.vlm_requests import hypothesis_seed
from rescue_eval.core.masks import overlay
from rescue_eval.core.types import DuelItem, PlanItem, RateItem, Sample, SegmentItem
from tests.helpers import box_mask, jpeg_bytes, sample_image

pytestmark = pytest.mark.unit

FAKE_KEY = "sk-FAKE-remote-5c1d"
FAST = {"timeout_s": 0.2, "retries": 2, "backoff_s": 0.01}  # 3 attempts, each bounded
ORIGINAL_VARIABLES = ("PLANNER_API_BASE", "PLANNER_MODEL", "VERIFIER_API_BASE", "VERIFIER_MODEL",
                      "EXECUTOR_URL", "CLIP_SERVER_URL")
USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


class ScriptedChatServer:
    """Test double of an OpenAI-compatible chat-completions server, NOT a model: it answers every
    request with the text reply(request body) and USAGE, after delay_s. `failures` are served first,
    one per request: an HTTP status (its body echoes the Authorization header, so a test can check
    that no error message repeats the key) or "malformed" (a 200 whose body is not JSON). It records
    every request and the most requests it held at once."""

    def __init__(self, reply=lambda body: '{"bbox_2d": [100, 200, 300, 400]}', failures=(), delay_s=0.0):
        self.reply, self.failures, self.delay_s = reply, list(failures), delay_s
        self.requests: list[dict] = []  # {"path", "headers", "body"}
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.thread.join()
        self.httpd.server_close()  # waits for handlers still sleeping (at most delay_s)

    def _handler(self):
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with script.lock:
                    script.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                    failure = script.failures.pop(0) if script.failures else None
                    script.in_flight += 1
                    script.max_in_flight = max(script.max_in_flight, script.in_flight)
                time.sleep(script.delay_s)
                with script.lock:
                    script.in_flight -= 1
                if failure == "malformed":
                    self._send(200, b'{"choices": [{"message": ')
                elif failure is not None:
                    self._send(failure, json.dumps({"error": f"scripted, you sent {self.headers['Authorization']}"}).encode())
                else:
                    answer = {"choices": [{"message": {"role": "assistant", "content": script.reply(body)}}],
                              "usage": USAGE}
                    self._send(200, json.dumps(answer).encode())

            def _send(self, status, data):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up first (the timeout tests)
                    pass

            def log_message(self, *args):
                pass

        return Handler


def free_port() -> int:
    """A port nobody listens on (bound, then released): connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_url_bytes(part: dict) -> tuple[str, bytes]:
    header, payload = part["image_url"]["url"].split(",", 1)
    return header, base64.b64decode(payload)


def image_parts(request: dict) -> list[dict]:
    return [p for p in request["body"]["messages"][0]["content"] if p["type"] == "image_url"]


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    for name in ORIGINAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def chat_server():
    servers = []

    def start(**kwargs) -> ScriptedChatServer:
        servers.append(ScriptedChatServer(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


# ---- (a) the OpenAI-compatible planner and judge ------------------------------------------------

def test_planner_sends_one_seeded_request_per_hypothesis(chat_server, remote):
    server = chat_server()
    planner = remote(OpenAIPlanner, checkpoint="served-planner", url=server.url + "/v1", temperatures=[0.3, 0.7],
                     max_concurrency=4, timeout_s=5)
    image = sample_image()
    [hypotheses] = planner.propose([PlanItem(image, "the red thing", n=3, seed=7)])

    assert [h.index for h in hypotheses] == [0, 1, 2]
    assert [h.seed for h in hypotheses] == [hypothesis_seed(7, k) for k in range(3)]
    assert [h.temperature for h in hypotheses] == [0.3, 0.3, 0.3]  # one round of the six strategies per temperature
    assert [h.strategy for h in hypotheses] == list(STRATEGIES)[:3]
    for h in hypotheses:  # 0..1000 grid -> pixels of the 200x100 image
        assert (h.status, h.box, h.tokens_in, h.tokens_out) == ("ok", (20.0, 20.0, 60.0, 40.0), 11, 5)

    assert len(server.requests) == 3
    by_seed = {h.seed: h for h in hypotheses}
    for request in server.requests:
        body = request["body"]
        assert request["path"] == "/v1/chat/completions"
        assert request["headers"]["authorization"] == f"Bearer {FAKE_KEY}"
        assert body["model"] == "served-planner"
        assert body["temperature"] == by_seed[body["seed"]].temperature
        assert STRATEGIES[by_seed[body["seed"]].strategy] in body["messages"][0]["content"][-1]["text"]
        assert body["response_format"] == {"type": "json_schema", "json_schema": {
            "name": "plan", "schema": PLAN_SCHEMA, "strict": True}}
        [part] = image_parts(request)
        header, data = data_url_bytes(part)
        assert header == "data:image/jpeg;base64" and data == image.info["source"][1]  # the original JPEG


def test_planner_without_structured_output_records_unparsable_answers(chat_server, remote):
    server = chat_server(reply=lambda body: "I cannot tell.")
    planner = remote(OpenAIPlanner, checkpoint="m", url=server.url + "/v1", structured_output=False, timeout_s=5)
    [[hypothesis]] = planner.propose([PlanItem(sample_image(), "q", n=1, seed=0)])
    assert (hypothesis.status, hypothesis.box, hypothesis.raw_text) == ("parse_error", None, "I cannot tell.")
    assert "response_format" not in server.requests[0]["body"]


def test_judge_rates_and_duels_greedily_on_png_overlays(chat_server, remote):
    replies = {"rating": '{"score": 7}', "verdict": '{"winner": "B"}'}
    server = chat_server(reply=lambda body: replies[body["response_format"]["json_schema"]["name"]])
    judge = remote(OpenAIJudge, checkpoint="served-judge", url=server.url + "/v1", timeout_s=5)
    image, mask_a, mask_b = sample_image(), box_mask(40, 20, 160, 80), box_mask(0, 0, 50, 50)

    [rating] = judge.rate([RateItem(image, mask_a, "q")])
    [verdict] = judge.duel([DuelItem(image, mask_a, mask_b, "q")])

    assert (rating.value, rating.raw_text, rating.tokens_in, rating.tokens_out) == (0.7, '{"score": 7}', 11, 5)
    assert verdict.value == "B"
    rate_request, duel_request = server.requests
    assert rate_request["body"]["response_format"]["json_schema"]["schema"] == RATE_SCHEMA
    assert duel_request["body"]["response_format"]["json_schema"]["schema"] == DUEL_SCHEMA
    for request, masks in ((rate_request, [mask_a]), (duel_request, [mask_a, mask_b])):
        assert request["body"]["temperature"] == 0.0 and request["body"]["model"] == "served-judge"
        for part, mask in zip(image_parts(request), masks, strict=True):
            header, data = data_url_bytes(part)
            assert header == "data:image/png;base64"  # lossless: the overlay's exact pixels
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(overlay(image, mask)))


def test_an_exif_rotated_photo_is_sent_upright():
    """vLLM does not apply EXIF orientation; the ground truth is drawn on the rotated image."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg_bytes())).save(buffer, "JPEG", exif=exif)
    image = Sample("rotated", buffer.getvalue(), "q", None).decode_image()
    assert image.size == (100, 200)
    header, data = data_url_bytes({"image_url": {"url": data_url(image)}})
    assert header == "data:image/png;base64" and np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(image))


def test_original_variables_choose_server_and_model(monkeypatch, chat_server, remote):
    server = chat_server(reply=lambda body: '{"score": 3}')
    monkeypatch.setenv("PLANNER_API_BASE", server.url + "/v1")
    monkeypatch.setenv("PLANNER_MODEL", "env-planner")
    monkeypatch.setenv("VERIFIER_API_BASE", server.url + "/v1")
    monkeypatch.setenv("VERIFIER_MODEL", "env-verifier")
    planner = remote(OpenAIPlanner, checkpoint="config-name", timeout_s=5)
    judge = remote(OpenAIJudge, checkpoint="config-name", timeout_s=5)
    planner.propose([PlanItem(sample_image(), "q", n=1, seed=0)])
    judge.rate([RateItem(sample_image(), box_mask(0, 0, 10, 10), "q")])
    assert [r["body"]["model"] for r in server.requests] == ["env-planner", "env-verifier"]


def test_defaults_are_the_original_services(remote):
    planner, judge = remote(OpenAIPlanner, checkpoint="tiny:qwen3-vl"), remote(OpenAIJudge)
    assert (planner.chat.where, planner.chat.model) == ("http://localhost:8002/v1/chat/completions",
                                                             "Qwen/Qwen3-VL-8B-Instruct")
    assert (judge.chat.where, judge.chat.model) == ("http://localhost:8000/v1/chat/completions",
                                                         "Qwen/Qwen3-VL-30B-A3B-Thinking")
    assert remote(HttpSegmenter).client.url == "http://localhost:8001/segment"
    assert remote(HttpScorer).client.url == "http://localhost:8003/verify"


def test_requests_in_flight_never_exceed_max_concurrency(chat_server, remote):
    server = chat_server(delay_s=0.1)
    planner = remote(OpenAIPlanner, checkpoint="m", url=server.url + "/v1", max_concurrency=2, timeout_s=5)
    callers = [threading.Thread(target=planner.propose, args=([PlanItem(sample_image(), "q", n=4, seed=s)],))
               for s in range(2)]  # the harness calls a role from several threads
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=10)
    assert len(server.requests) == 8 and server.max_in_flight == 2


# ---- (b) a misbehaving server ------------------------------------------------------------------

@pytest.mark.parametrize("failures, delay_s, attempts, failure_text", [
    ([500] * 5, 0.0, 3, "HTTP 500"),
    (["malformed"] * 5, 0.0, 3, "malformed answer"),
    ([], 0.5, 3, "no answer within timeout_s=0.2"),
    ([400], 0.0, 1, "HTTP 400"),  # our request is wrong: not retried
])
def test_failures_raise_after_bounded_attempts(chat_server, remote, failures, delay_s, attempts, failure_text):
    server = chat_server(failures=failures, delay_s=delay_s)
    port = server.url.rsplit(":", 1)[1]
    planner = remote(OpenAIPlanner, checkpoint="m", url=f"http://user:url-secret@127.0.0.1:{port}/v1", **FAST)
    start = time.perf_counter()
    with pytest.raises(RemoteRoleError) as raised:
        planner.propose([PlanItem(sample_image(), "q", n=1, seed=0)])
    assert time.perf_counter() - start < 3
    message = str(raised.value)
    assert len(server.requests) == attempts
    assert f"planner server http://127.0.0.1:{port}/v1/chat/completions" in message
    assert failure_text in message and f"after {attempts} attempt(s)" in message
    assert FAKE_KEY not in message and "url-secret" not in message


def test_a_refused_connection_is_retried_then_named(remote):
    port = free_port()
    planner = remote(OpenAIPlanner, checkpoint="m", url=f"http://127.0.0.1:{port}/v1", **FAST)
    segmenter = remote(HttpSegmenter, url=f"http://127.0.0.1:{port}", **FAST)
    with pytest.raises(RemoteRoleError, match=r"planner server .*/v1/chat/completions: connection failed.*3 attempt"):
        planner.propose([PlanItem(sample_image(), "q", n=1, seed=0)])
    with pytest.raises(RemoteRoleError, match=rf"executor server http://127.0.0.1:{port}/segment: connection failed"):
        segmenter.segment([SegmentItem(sample_image(), [(0, 0, 10, 10)])])


def test_too_many_requests_is_retried(chat_server, remote):
    server = chat_server(failures=[429])
    planner = remote(OpenAIPlanner, checkpoint="m", url=server.url + "/v1", **FAST)
    [[hypothesis]] = planner.propose([PlanItem(sample_image(), "q", n=1, seed=0)])
    assert hypothesis.status == "ok" and len(server.requests) == 2


def test_a_servers_own_fields_go_with_every_request(chat_server, remote):
    """extra_body: e.g. vLLM's top_k (its server would apply the checkpoint's own top_k otherwise)."""
    server = chat_server()
    planner = remote(OpenAIPlanner, checkpoint="m", url=server.url + "/v1", extra_body={"top_k": -1})
    planner.propose([PlanItem(sample_image(), "q", n=2, seed=0)])
    assert [r["body"]["top_k"] for r in server.requests] == [-1, -1]
