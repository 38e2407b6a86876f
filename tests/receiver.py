"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread.

It records every request, checks the HMAC signature against its secret, answers with a scripted
status, and can be stopped and started again on the same port to simulate an outage.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self, secret: str | None = None, port: int = 0) -> None:
        self.secret = secret
        self.port = port
        self.requests: list[Received] = []
        self.status = 200  # answer for every request unless `script` has entries
        self.script: list[int] = []  # answers consumed in order before falling back to `status`
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _verify(self, body: bytes, signature: str | None) -> bool:
        if self.secret is None:
            return signature is None
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        return signature is not None and hmac.compare_digest(expected, signature)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    status = receiver.script.pop(0) if receiver.script else receiver.status
                    ok = receiver._verify(body, self.headers.get("X-StreamVAD-Signature"))
                    receiver.requests.append(Received(self.path, dict(self.headers), body, ok, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        return Handler

    def start(self) -> WebhookReceiver:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self) -> list[Received]:
        """Requests answered 2xx, in arrival order."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        """Block until `n` requests were accepted (or timeout), then return the accepted ones."""
        deadline = time.monotonic() + timeout
        while len(self.accepted()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.accepted()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
