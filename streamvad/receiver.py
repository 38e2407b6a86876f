"""A webhook receiver: checks StreamVAD's HMAC signatures and records what arrives.

Operators run it (`streamvad receive`) to try an alert integration before pointing webhooks at the
real incident system, and the compose stack uses it as its receiver. Tests use the same class in a
thread: it records every request, answers with a scripted status, and can be stopped and started
again on the same port to simulate an outage.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from streamvad.sinks.webhook import sign


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
    def __init__(self, secret: str | None = None, port: int = 0, host: str = "127.0.0.1",
                 on_request: Callable[[Received], None] | None = None) -> None:
        self.secret = secret
        self.port = port
        self.host = host
        self.on_request = on_request
        self.requests: list[Received] = []
        self.status = 200  # answer for every request unless `script` has entries
        self.script: list[int] = []  # answers consumed in order before falling back to `status`
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def _verify(self, body: bytes, signature: str | None) -> bool:
        if self.secret is None:
            return signature is None
        return signature is not None and hmac.compare_digest(sign(body, self.secret), signature)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    status = receiver.script.pop(0) if receiver.script else receiver.status
                    ok = receiver._verify(body, self.headers.get("X-StreamVAD-Signature"))
                    received = Received(self.path, dict(self.headers), body, ok, status)
                    receiver.requests.append(received)
                if receiver.on_request is not None:
                    receiver.on_request(received)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # on_request reports instead
                pass

        return Handler

    def start(self) -> WebhookReceiver:
        self._server = ThreadingHTTPServer((self.host, self.port), self._handler())
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


def run_receiver(host: str, port: int, secret: str | None) -> int:
    """Serve until interrupted, printing one JSON line per delivery with its signature check."""
    def show(r: Received) -> None:
        try:
            body: Any = r.json
        except ValueError:
            body = r.body.decode("utf-8", "replace")
        print(json.dumps({"signature_ok": r.signature_ok, "idempotency_key": r.headers.get("Idempotency-Key"),
                          "body": body}), flush=True)

    receiver = WebhookReceiver(secret, port, host, on_request=show).start()
    print(f"listening on {receiver.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        receiver.stop()
