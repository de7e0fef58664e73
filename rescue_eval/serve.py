"""`rescue-eval serve`: one local executor or scorer behind the JSON protocol of
models/http_roles.py, so that this harness can stand in for the original RESCue SAM server
(:8001) and CLIP server (:8003/verify), and `--executor.backend http` / `--scorer.backend http`
can reach a model on another machine:

    rescue-eval serve executor --checkpoint facebook/sam3 --device cuda:0 --port 8001
    rescue-eval serve scorer --checkpoint google/siglip2-giant-opt-patch16-384 --device cuda:0 --port 8003

A server hosts one role and answers POST on any path (clients use /segment, /score or the path
of their URL, e.g. /verify). It has no authentication: it listens on 127.0.0.1 unless told
`--host 0.0.0.0`. Requests arriving on concurrent connections are merged into batches by a
RoleServer (rescue_eval/dist/serving.py), whose one thread calls the backend, so backends need not be
thread-safe. A request that cannot be read gets 400, a backend error 500, both {"error": "..."}.
"""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rescue_eval.models.http_roles import PROTOCOLS, RoleProtocol
from rescue_eval.dist.serving import RoleServer

log = logging.getLogger(__name__)

IDLE_CONNECTION_S = 120.0  # a kept-alive connection with no request for this long is closed
SHUTDOWN_POLL_S = 0.05  # how often a server in a background thread looks for close()


class RoleHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # clients may keep connections open; close() must not wait for them

    def __init__(self, address: tuple[str, int], protocol: RoleProtocol, role_server: RoleServer):
        super().__init__(address, _Handler)
        self.protocol, self.role_server = protocol, role_server
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "RoleHTTPServer":
        self._thread = threading.Thread(target=self.serve_forever, args=(SHUTDOWN_POLL_S,), name=f"http-{self.protocol.role}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting requests, then stop the backend's batcher."""
        if self._thread is not None:
            self.shutdown()  # returns once serve_forever has left its loop
            self._thread.join()
        self.server_close()
        self.role_server.close()


class _Handler(BaseHTTPRequestHandler):
    server: RoleHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connections
    timeout = IDLE_CONNECTION_S

    def do_GET(self) -> None:
        self._reply(200, {"role": self.server.protocol.role})

    def do_POST(self) -> None:
        protocol = self.server.protocol
        try:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            items = [protocol.decode_item(row) for row in body["items"]]
        except Exception as exc:  # noqa: BLE001 - whatever cannot be read is the request's fault
            self.close_connection = True  # the body may be unread: the stream is out of step
            self._reply(400, {"error": f"malformed request ({type(exc).__name__}: {exc})"})
            return
        try:
            answers = self.server.role_server.call(protocol.method, items)
        except Exception as exc:  # noqa: BLE001 - the backend's error goes back to the caller
            self._reply(500, {"error": f"{self.server.protocol.role} backend: {type(exc).__name__}: {exc}"})
            return
        self._reply(200, {"answers": [protocol.encode_answer(answer) for answer in answers]})

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        log.debug("%s %s", self.address_string(), format % args)


def _bind(backend, role: str, host: str, port: int, max_batch: int, max_wait_s: float) -> RoleHTTPServer:
    if role not in PROTOCOLS:
        raise ValueError(f"serve hosts one of {sorted(PROTOCOLS)}, not {role!r}; planner and judge are "
                         f"served by any OpenAI-compatible server (e.g. vLLM) for the openai backend.")
    role_server = RoleServer(role, backend, max_batch=max_batch, max_wait_s=max_wait_s)
    try:
        return RoleHTTPServer((host, port), PROTOCOLS[role], role_server)
    except OSError:  # e.g. the port is taken: stop the batcher thread started above
        role_server.close()
        raise


def make_server(backend, role: str, host: str = "127.0.0.1", port: int = 0, max_batch: int = 16,
                max_wait_s: float = 0.005) -> RoleHTTPServer:
    """A server already answering in a background thread (port 0: a free one, see `.url`);
    `close()` stops it."""
    return _bind(backend, role, host, port, max_batch, max_wait_s).start()


def serve(backend, role: str, host: str, port: int, max_batch: int = 16, max_wait_s: float = 0.005) -> None:
    """Serve until interrupted (blocking)."""
    server = _bind(backend, role, host, port, max_batch, max_wait_s)
    log.info("serving %s on %s", role, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
