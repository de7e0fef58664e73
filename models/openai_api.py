"""Planner and judge on any OpenAI-compatible chat-completions server, e.g. the vLLM servers of the
original RESCue layout (verifier on :8000, planner on :8002).

The variables of the original scripts keep working: PLANNER_API_BASE / VERIFIER_API_BASE when
`url` is not set, PLANNER_MODEL / VERIFIER_MODEL over `checkpoint` (the served model name; a
`tiny:` checkpoint, the config's default, means the original default model).
OPENAI_API_KEY, when set, is sent as a bearer token and appears in no message or result.

Each hypothesis is its own request with its own temperature and `seed` (hypothesis k is the
same whatever N is, as with every backend: models/vlm_requests.py), images are data URLs of
the file bytes (models/http_roles.encoded_image: the original JPEG/PNG, judge overlays as
PNG), and with structured_output the answer is constrained by
response_format={"type": "json_schema", ...} (OpenAI's form, which vLLM's server accepts too).

Requests go through the `openai` client (checked against openai 1.x-3.x: `OpenAI(base_url=,
api_key=, timeout=, max_retries=)`, `chat.completions.create(..., extra_body=)`): its timeouts,
and its retries of timeouts, refused connections, HTTP 408/409/429 and 5xx with exponential
backoff (honouring Retry-After). An answer that parses as no chat completion is retried here,
`retries` times, with backoff and full jitter. `extra_body` adds a server's own fields to every
request (vLLM's top_k, chat_template_kwargs, ...). A server started with a reasoning parser
(vLLM's --reasoning-parser) returns the reasoning apart: the answer read is `content` alone.
"""
from __future__ import annotations

import base64
import io
import logging
import os
from typing import Sequence

from PIL import Image

from rescue_eval.models.http_roles import BACKOFF_BASE_S, RemoteServer, encoded_image
from rescue_eval.models.parsing import parse_rating, parse_verdict
from rescue_eval.models.prompts import DUEL_SCHEMA, PLAN_SCHEMA, RATE_SCHEMA, plan_messages
from rescue_eval.models.tiny import PREFIX
from rescue_eval.models.vlm_requests import (JUDGE_MAX_PIXELS, PLANNER_MAX_PIXELS, check_plan_settings, duel_request,
                                             fill_image_parts, fit_image, plan_rows, rate_request, to_hypothesis)
from rescue_eval.core.types import DuelItem, Hypothesis, JudgeAnswer, PlanItem, RateItem

log = logging.getLogger(__name__)

PLANNER_URL = "http://localhost:8002/v1"
VERIFIER_URL = "http://localhost:8000/v1"
# the original scripts' default models, served when neither the variable nor a real checkpoint names one
PLANNER_MODEL = "Qwen/Qwen3-VL-8B-Instruct"
VERIFIER_MODEL = "Qwen/Qwen3-VL-30B-A3B-Thinking"


def served_model(checkpoint: str, variable: str, default: str) -> str:
    """$variable when set, else the checkpoint, unless that is empty or a `tiny:` spec (the config's
    demo default, which no server serves)."""
    if os.environ.get(variable):
        return os.environ[variable]
    return checkpoint if checkpoint and not checkpoint.startswith(PREFIX) else default


def data_url(image: Image.Image) -> str:
    data = encoded_image(image)
    with Image.open(io.BytesIO(data)) as opened:
        mime = Image.MIME.get(opened.format, "image/png")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def with_image_urls(messages: list[dict], urls: list[str]) -> list[dict]:
    return fill_image_parts(messages, [{"type": "image_url", "image_url": {"url": url}} for url in urls])


def read_completion(body: dict) -> tuple[str, int, int]:
    """(text, prompt tokens, completion tokens) of a chat completion; raises on a malformed one."""
    text = body["choices"][0]["message"]["content"] or ""  # None when the model said nothing
    if not isinstance(text, str):
        raise TypeError(f"message content is {type(text).__name__}, not text")
    usage = body.get("usage") or {}
    return text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class ChatServer(RemoteServer):
    """One served model behind /chat/completions, through the openai client."""

    def __init__(self, role: str, model: str, url: str, max_concurrency: int, timeout_s: float, retries: int,
                 max_new_tokens: int, backoff_s: float, extra_body: dict | None = None):
        import httpx
        import openai

        base_url, secret = url.rstrip("/"), os.environ.get("OPENAI_API_KEY") or None
        super().__init__(role, base_url + "/chat/completions", max_concurrency, backoff_s, secret)
        self.model, self.max_new_tokens = model, max_new_tokens
        self.timeout_s, self.retries, self.extra_body = timeout_s, retries, extra_body
        # a server without keys accepts any; the client insists on one
        self.client = openai.OpenAI(base_url=base_url, api_key=secret or "EMPTY", timeout=timeout_s,
                                    max_retries=retries,
                                    http_client=openai.DefaultHttpxClient(
                                        limits=httpx.Limits(max_connections=max_concurrency)))
        log.info("%s: model %s on %s", role, model, self.where)

    def complete(self, messages: list[dict], image_urls: list[str], schema: dict | None, schema_name: str,
                 **sampling) -> tuple[str, int, int]:
        request = {"model": self.model, "messages": with_image_urls(messages, image_urls),
                   "max_tokens": self.max_new_tokens, **sampling}
        if schema is not None:
            request["response_format"] = {"type": "json_schema",
                                          "json_schema": {"name": schema_name, "schema": schema, "strict": True}}
        if self.extra_body:
            request["extra_body"] = self.extra_body
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:  # a body that is no JSON fails in the client, one without a completion in reading it
                return read_completion(self._create(request).model_dump())
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                failure = f"malformed answer ({type(exc).__name__}: {exc})"
            if attempt < attempts:
                self.wait_before_retry(attempt)
        raise self.failure(failure, attempts)

    def _create(self, request: dict):
        """One chat completion, the client's own retries included; its failures as RemoteRoleError."""
        import openai

        try:
            return self.client.chat.completions.create(**request)
        except openai.APITimeoutError:
            failure, attempts, transient = f"no answer within timeout_s={self.timeout_s}", self.retries + 1, True
        except openai.APIConnectionError as exc:
            failure, attempts = f"connection failed ({type(exc.__cause__ or exc).__name__})", self.retries + 1
            transient = True
        except openai.APIStatusError as exc:
            transient = exc.status_code in (408, 409, 429) or exc.status_code >= 500  # the client retried these
            failure = f"HTTP {exc.status_code}: {exc.response.text[:300]}"
            attempts = self.retries + 1 if transient else 1
        except openai.APIResponseValidationError as exc:
            failure, attempts, transient = f"malformed answer ({exc})", 1, False
        raise self.failure(failure, attempts, transient)

    def close(self) -> None:
        super().close()
        self.client.close()


class OpenAIPlanner:
    """Planner: item.n hypotheses per item, one request each, with the strategy, temperature and
    seed that models/vlm_requests.py assigns to hypothesis k."""

    def __init__(self, checkpoint: str = "", url: str | None = None, max_concurrency: int = 8,
                 timeout_s: float = 120.0, retries: int = 3, max_new_tokens: int = 64,
                 structured_output: bool = True, strategies: Sequence[str] | None = None,
                 temperatures: Sequence[float] = (0.3, 0.7, 1.0), max_pixels: int = PLANNER_MAX_PIXELS,
                 extra_body: dict | None = None, backoff_s: float = BACKOFF_BASE_S):
        self.chat = ChatServer("planner", served_model(checkpoint, "PLANNER_MODEL", PLANNER_MODEL),
                               url or os.environ.get("PLANNER_API_BASE") or PLANNER_URL,
                               max_concurrency, timeout_s, retries, max_new_tokens, backoff_s, extra_body)
        self.schema = PLAN_SCHEMA if structured_output else None
        self.strategies, self.temperatures = check_plan_settings(strategies, temperatures)
        self.max_pixels = max_pixels

    def propose(self, batch: list[PlanItem]) -> list[list[Hypothesis]]:
        def ask(row) -> Hypothesis:
            item = batch[row.item]
            text, tokens_in, tokens_out = self.chat.complete(
                plan_messages(item.query, row.strategy), [image_urls[row.item]], self.schema, "plan",
                temperature=row.temperature, seed=row.seed)
            return to_hypothesis(row, item.image, text, tokens_in, tokens_out)

        image_urls = [data_url(fit_image(item.image, self.max_pixels)) for item in batch]  # once per item
        rows = plan_rows(batch, self.strategies, self.temperatures)
        results: list[list[Hypothesis]] = [[] for _ in batch]
        for row, hypothesis in zip(rows, self.chat.map(ask, rows)):
            results[row.item].append(hypothesis)
        return results


class OpenAIJudge:
    """Judge: greedy answers (temperature 0) about masks drawn in red on the image."""

    def __init__(self, checkpoint: str = "", url: str | None = None, max_concurrency: int = 8,
                 timeout_s: float = 120.0, retries: int = 3, max_new_tokens: int = 16,
                 structured_output: bool = True, max_pixels: int = JUDGE_MAX_PIXELS,
                 extra_body: dict | None = None, backoff_s: float = BACKOFF_BASE_S):
        self.chat = ChatServer("judge", served_model(checkpoint, "VERIFIER_MODEL", VERIFIER_MODEL),
                               url or os.environ.get("VERIFIER_API_BASE") or VERIFIER_URL,
                               max_concurrency, timeout_s, retries, max_new_tokens, backoff_s, extra_body)
        self.structured_output = structured_output
        self.max_pixels = max_pixels

    def rate(self, batch: list[RateItem]) -> list[JudgeAnswer]:
        return self._ask([rate_request(item, self.max_pixels) for item in batch], RATE_SCHEMA, "rating", parse_rating)

    def duel(self, batch: list[DuelItem]) -> list[JudgeAnswer]:
        return self._ask([duel_request(item, self.max_pixels) for item in batch], DUEL_SCHEMA, "verdict", parse_verdict)

    def _ask(self, requests: list, schema: dict, schema_name: str, parse) -> list[JudgeAnswer]:
        def ask(request) -> JudgeAnswer:
            messages, images = request
            text, tokens_in, tokens_out = self.chat.complete(
                messages, [data_url(image) for image in images], schema if self.structured_output else None, schema_name, temperature=0.0)
            return JudgeAnswer(parse(text), text, tokens_in, tokens_out)

        return self.chat.map(ask, requests)
