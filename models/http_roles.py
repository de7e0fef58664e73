"""Executor and scorer on remote HTTP servers, and the retrying JSON client of every remote backend.

We do not know the wire formats of the original RESCue SAM server (:8001) and CLIP server
(:8003/verify), so these roles speak a small JSON protocol of our own. `rescue-eval serve`
(rescue_eval/http_server.py) hosts any local executor or scorer behind it, and a server of
another stack can implement it in a few lines.

    POST EXECUTOR_URL/segment        (EXECUTOR_URL default http://localhost:8001)
        {"items": [{"image": IMAGE, "boxes": [[x1, y1, x2, y2], ...]}, ...]}
     -> {"answers": [[MASK, ...], ...]}          one mask per box, in box order
    POST CLIP_SERVER_URL             (default http://localhost:8003/verify)
        {"items": [{"image": IMAGE, "masks": [MASK, ...], "query": "..."}, ...]}
     -> {"answers": [[score, ...], ...]}         one score in [0, 1] per mask

A URL with a path is POSTed to as it is; a bare scheme://host:port gets the role's path
(/segment, /score). IMAGE is the base64 of the image file: the dataset's original bytes
(JPEG, PNG, ...) as read, upright (an EXIF-rotated file is sent as PNG of its rotated pixels),
or PNG for an image made in memory. Boxes are pixel xyxy floats. MASK is COCO compressed RLE,
{"size": [h, w], "counts": "..."} (rescue_eval.core.masks.encode_rle), at the image's size.
Answers are in item order. Errors: 400 {"error": "..."} for a request that cannot be read,
500 {"error": "..."} when the backend raises. GET on any path answers {"role": ...}.

The client sends one item per request and keeps up to `max_concurrency` requests in flight
(the server batches them again). Timeouts, refused connections, HTTP 429, 5xx and malformed
answers are retried `retries` times with exponential backoff and full jitter; another 4xx is not.
"""
from __future__ import annotations

import base64
import io
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from PIL import Image

from rescue_eval.core.masks import decode_rle, encode_rle
from rescue_eval.core.types import ScoreItem, SegmentItem, decode_image_bytes

BACKOFF_BASE_S = 0.5  # the first retry waits up to this long, the k-th up to base * 2**(k-1)
BACKOFF_MAX_S = 30.0
EXIF_ORIENTATION = 0x0112


class RemoteRoleError(RuntimeError):
    """A remote server did not give a usable answer; the message names the server (without
    credentials), what failed and after how many attempts. The harness fails that sample only;
    `transient` (unreachable, timed out, 429 or 5xx) means the next run retries it."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def without_credentials(url: str) -> str:
    """scheme://host:port/path: no user:password@, no query string (either may hold a key)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


class RemoteServer:
    """What the client of every remote backend shares: a worker pool that bounds the requests in
    flight (the harness calls a role from several threads, and the limit holds for the role as a
    whole), backoff with full jitter between attempts, and failure messages that name the server
    without credentials."""

    def __init__(self, name: str, where: str, max_concurrency: int, backoff_s: float, secret: str | None):
        self.name, self.where, self.backoff_s, self._secret = name, without_credentials(where), backoff_s, secret
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix=f"{name}-remote")

    def map(self, fn: Callable, items: list) -> list:
        """fn over items on the worker pool, answers in item order; the first error is raised."""
        return list(self._pool.map(fn, items))

    def wait_before_retry(self, attempt: int) -> None:
        time.sleep(random.uniform(0, min(BACKOFF_MAX_S, self.backoff_s * 2 ** (attempt - 1))))

    def failure(self, failure: str, attempts: int, transient: bool = False) -> RemoteRoleError:
        message = f"{self.name} server {self.where}: {failure} (after {attempts} attempt(s))"
        return RemoteRoleError(message.replace(self._secret, "<redacted>") if self._secret else message, transient)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class JsonClient(RemoteServer):
    """POSTs JSON to one URL with bounded retries, at most `max_concurrency` requests in flight."""

    def __init__(self, name: str, url: str, max_concurrency: int, timeout_s: float, retries: int,
                 api_key: str | None = None, backoff_s: float = BACKOFF_BASE_S):
        import httpx

        super().__init__(name, url, max_concurrency, backoff_s, api_key)
        self.url, self.timeout_s, self.retries = url, timeout_s, retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers,
                                  limits=httpx.Limits(max_connections=max_concurrency))

    def post(self, body: dict, read: Callable[[object], object]) -> object:
        """POST body; `read(decoded JSON answer)` makes the result and raises ValueError,
        KeyError, IndexError or TypeError on an answer it cannot use (retried like a 5xx)."""
        import httpx

        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            transient = True  # unless the server answered, but unusably
            try:
                response = self._http.post(self.url, json=body)
            except httpx.TimeoutException:
                failure = f"no answer within timeout_s={self.timeout_s}"
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                failure = f"connection failed ({type(exc).__name__}: {exc})"
            except httpx.HTTPError as exc:  # e.g. an unsupported scheme: asking again cannot help
                raise self.failure(f"request failed ({type(exc).__name__}: {exc})", attempt) from None
            else:
                status = response.status_code
                if status == 429 or status >= 500:
                    failure = f"HTTP {status}: {response.text[:300]}"
                elif status >= 400:  # our request is wrong: asking again cannot help
                    raise self.failure(f"HTTP {status}: {response.text[:300]}", attempt)
                else:
                    try:
                        return read(response.json())
                    except (ValueError, KeyError, IndexError, TypeError) as exc:
                        failure, transient = f"malformed answer ({type(exc).__name__}: {exc})", False
            if attempt < attempts:
                self.wait_before_retry(attempt)
        raise self.failure(failure, attempts, transient)

    def close(self) -> None:
        super().close()
        self._http.close()


# ---- images -----------------------------------------------------------------------------------

def encoded_image(image: Image.Image) -> bytes:
    """The file bytes to send for an image: its original bytes when it carries them
    (Sample.decode_image keeps them in info["source"]), they need no EXIF rotation and any
    decoder reads them the same way (8-bit RGB or grayscale); else lossless PNG of the pixels the
    harness decoded (judge overlays, rotated photos, 16-bit, RGBA, palette, CMYK). A server that
    does not apply EXIF orientation or decodes other modes its own way (vLLM puts RGBA on white,
    clips 16-bit) thus sees what the ground truth is drawn on."""
    source = image.info.get("source")
    if source:
        with Image.open(io.BytesIO(source[1])) as original:
            if original.mode in ("RGB", "L") and original.getexif().get(EXIF_ORIENTATION, 1) == 1:
                return source[1]
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def image_to_base64(image: Image.Image) -> str:
    return base64.b64encode(encoded_image(image)).decode("ascii")


def image_from_base64(text: str) -> Image.Image:
    return decode_image_bytes(base64.b64decode(text, validate=True))


# ---- the protocol: one table row per role, used by client and server alike ---------------------

def _box(values: list) -> tuple[float, float, float, float]:
    if len(values) != 4:
        raise ValueError(f"a box has 4 numbers, got {values!r}")
    x1, y1, x2, y2 = (float(v) for v in values)
    return x1, y1, x2, y2


def _checked_count(answer: list, expected: int, what: str) -> list:
    if len(answer) != expected:
        raise ValueError(f"{len(answer)} {what} for {expected} asked")
    return answer


@dataclass(frozen=True)
class RoleProtocol:
    role: str
    method: str  # the protocol method (models/protocols.py) behind this endpoint
    path: str  # POSTed to when the URL has no path of its own
    url_env: str  # the original RESCue variable
    default_url: str
    encode_item: Callable[[object], dict]
    decode_item: Callable[[dict], object]
    encode_answer: Callable[[list], list]
    decode_answer: Callable[[list, object], list]  # (answer, the item it answers)


def _segment_item_to_json(item: SegmentItem) -> dict:
    return {"image": image_to_base64(item.image), "boxes": [list(_box(b)) for b in item.boxes]}


def _segment_item_from_json(row: dict) -> SegmentItem:
    return SegmentItem(image_from_base64(row["image"]), [_box(b) for b in row["boxes"]])


def _masks_from_json(answer: list, item: SegmentItem) -> list:
    masks = _checked_count([decode_rle(rle) for rle in answer], len(item.boxes), "masks")
    if any(m.shape != (item.image.height, item.image.width) for m in masks):
        raise ValueError(f"mask sizes {[m.shape[::-1] for m in masks]} for a {item.image.size} image")
    return masks


def _score_item_to_json(item: ScoreItem) -> dict:
    return {"image": image_to_base64(item.image), "masks": [encode_rle(m) for m in item.masks], "query": item.query}


def _score_item_from_json(row: dict) -> ScoreItem:
    return ScoreItem(image_from_base64(row["image"]), [decode_rle(r) for r in row["masks"]], str(row["query"]))


def _scores_from_json(answer: list, item: ScoreItem) -> list[float]:
    return _checked_count([float(s) for s in answer], len(item.masks), "scores")


SEGMENT = RoleProtocol("executor", "segment", "/segment", "EXECUTOR_URL", "http://localhost:8001",
                       encode_item=_segment_item_to_json, decode_item=_segment_item_from_json,
                       encode_answer=lambda masks: [encode_rle(m) for m in masks], decode_answer=_masks_from_json)
SCORE = RoleProtocol("scorer", "score", "/score", "CLIP_SERVER_URL", "http://localhost:8003/verify",
                     encode_item=_score_item_to_json, decode_item=_score_item_from_json,
                     encode_answer=lambda scores: [float(s) for s in scores], decode_answer=_scores_from_json)
PROTOCOLS = {p.role: p for p in (SEGMENT, SCORE)}


def endpoint(url: str, default_path: str) -> str:
    return url if urlsplit(url).path not in ("", "/") else url.rstrip("/") + default_path


class _HttpRole:
    protocol: RoleProtocol

    def __init__(self, url: str | None = None, max_concurrency: int = 8, timeout_s: float = 120.0,
                 retries: int = 3, backoff_s: float = BACKOFF_BASE_S):
        p = self.protocol
        target = endpoint(url or os.environ.get(p.url_env) or p.default_url, p.path)
        self.client = JsonClient(p.role, target, max_concurrency, timeout_s, retries, backoff_s=backoff_s)

    def _call(self, batch: list) -> list:
        p = self.protocol

        def one(item):
            def read(body: dict) -> list:
                [answer] = _checked_count(body["answers"], 1, "answers")
                return p.decode_answer(answer, item)

            return self.client.post({"items": [p.encode_item(item)]}, read)

        return self.client.map(one, batch)


class HttpSegmenter(_HttpRole):
    """Segmenter on a remote server (the protocol above); url None: $EXECUTOR_URL, else :8001."""

    protocol = SEGMENT

    def segment(self, batch: list[SegmentItem]) -> list[list]:
        return self._call(batch)


class HttpScorer(_HttpRole):
    """Scorer on a remote server (the protocol above); url None: $CLIP_SERVER_URL, else :8003/verify."""

    protocol = SCORE

    def score(self, batch: list[ScoreItem]) -> list[list[float]]:
        return self._call(batch)
