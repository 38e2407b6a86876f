"""A webhook receiver: checks StreamVAD's HMAC signatures (or Standard Webhooks' ones, when its secret is a
`whsec_` secret) and records what arrives.

Operators run it (`streamvad receive`) to try an alert integration before pointing webhooks at the
real incident system, and the compose stack uses it as its receiver; `check_signature` is the reference
for writing that verification elsewhere. With a secret, a request whose signature does not match or
whose timestamp is outside the tolerance is answered 401 with the reason as a text body; an authentic
one gets `answer()` (200). It runs in a thread (`start`/`stop`, on the same port again after a stop), so
the tests build their scripted receiver (outages, Retry-After) on it in tests/receiver.py.

Deliveries are at least once, so an accepted request whose `Idempotency-Key` was already accepted is answered
200 again but marked `duplicate` (and `streamvad receive` prints it no more). A body larger than
`max_body_bytes` is refused (413) unread, and a client that stalls mid-request is dropped after
`read_timeout_s`, so neither a huge upload nor a slow one can tie the receiver up.
"""

from __future__ import annotations

import hmac
import json
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from streamvad.sinks.webhook import sign, sign_standard


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    status: int
    reason: str | None = None  # why the signature check failed
    received_at: float = field(default_factory=time.time)
    duplicate: bool = False  # an accepted repeat of an Idempotency-Key already accepted

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def check_signature(secret: str, body: bytes, timestamp: str | None, signature: str | None,
                    tolerance_s: float = 300.0, now: float | None = None) -> str | None:
    """-> None when `signature` is StreamVAD's HMAC of `timestamp + "." + body` and the timestamp is
    within `tolerance_s` of `now` (either way: a future stamp would stretch the replay window), else why
    not. The signature covers the timestamp, so a replayed request can only pass within the tolerance."""
    if not signature:
        return "missing X-StreamVAD-Signature header"
    if not timestamp or not (timestamp.isascii() and timestamp.isdigit()):
        return "X-StreamVAD-Timestamp header missing or not unix seconds"
    if not hmac.compare_digest(sign(timestamp, body, secret), signature):
        return "signature does not match the body and timestamp (wrong secret, or either was altered)"
    return _too_old(int(timestamp), tolerance_s, now)


def check_standard_signature(secret: str, body: bytes, msg_id: str | None, timestamp: str | None,
                             signatures: str | None, tolerance_s: float = 300.0, now: float | None = None,
                             ) -> str | None:
    """`check_signature` for the Standard Webhooks headers: `webhook-signature` lists space-separated
    `v1,<base64>` signatures (several while a secret is rotated), one of which must be `sign_standard` of the
    `webhook-id`, `webhook-timestamp` and body."""
    if not (msg_id and signatures):
        return "missing webhook-id or webhook-signature header"
    if not timestamp or not (timestamp.isascii() and timestamp.isdigit()):
        return "webhook-timestamp header missing or not unix seconds"
    expected = sign_standard(msg_id, timestamp, body, secret)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures.split()):
        return "no v1 signature matches the id, timestamp and body (wrong secret, or one was altered)"
    return _too_old(int(timestamp), tolerance_s, now)


def _too_old(timestamp: int, tolerance_s: float, now: float | None) -> str | None:
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance_s:
        when = f"{age:.0f} s old" if age > 0 else f"{-age:.0f} s in the future"
        return f"timestamp {when}, outside the {tolerance_s:g} s tolerance (replayed, or clocks differ)"
    return None


_REMEMBERED_KEYS = 100_000  # idempotency keys kept for deduplication (oldest forgotten first)


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a burst of concurrent deliveries (every camera alerting at once, a
    # spool flushed after an outage) would be reset by the kernel before a thread could take it
    request_queue_size = 128
    daemon_threads = True


class WebhookReceiver:
    def __init__(self, secret: str | None = None, port: int = 0, host: str = "127.0.0.1",
                 on_request: Callable[[Received], None] | None = None, tolerance_s: float = 300.0,
                 max_body_bytes: int = 1 << 20, read_timeout_s: float = 10.0) -> None:
        self.secret = secret
        self.port = port
        self.host = host
        self.on_request = on_request
        self.tolerance_s = tolerance_s
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._keys_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def _verify(self, body: bytes, headers: Any) -> str | None:
        """-> why the request is not authentic, or None. Without a secret nothing can be checked: only
        an unsigned request counts as matching. A `whsec_` secret checks the Standard Webhooks headers."""
        signature = headers.get("X-StreamVAD-Signature") or headers.get("webhook-signature")
        if self.secret is None:
            return None if signature is None else "signed, but this receiver has no secret to check with"
        if self.secret.startswith("whsec_"):
            return check_standard_signature(self.secret, body, headers.get("webhook-id"),
                                            headers.get("webhook-timestamp"), headers.get("webhook-signature"),
                                            self.tolerance_s)
        return check_signature(self.secret, body, headers.get("X-StreamVAD-Timestamp"),
                               headers.get("X-StreamVAD-Signature"), self.tolerance_s)

    def _seen(self, key: str | None) -> bool:
        """Whether an accepted request already carried `key` (and remember it now)."""
        if not key:
            return False
        with self._keys_lock:
            if key in self._keys:
                return True
            self._keys[key] = None
            if len(self._keys) > _REMEMBERED_KEYS:
                self._keys.popitem(last=False)
            return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            timeout = receiver.read_timeout_s  # the socket's: a stalled client is dropped, not waited for

            def do_POST(self) -> None:
                length = self.headers.get("Content-Length", "")
                if not length.isdigit() or int(length) > receiver.max_body_bytes:
                    self.send_error(413 if length.isdigit() else 411,
                                    f"body must have a Content-Length of at most {receiver.max_body_bytes} bytes")
                    self.close_connection = True
                    return
                body = self.rfile.read(int(length))
                reason = receiver._verify(body, self.headers)
                extra: dict[str, str] = {}
                text = b""
                if reason is not None and receiver.secret is not None:  # refused whatever answer() would say
                    status, text = 401, reason.encode("utf-8") + b"\n"
                else:
                    status, extra = receiver.answer()
                accepted = 200 <= status < 300
                duplicate = accepted and receiver._seen(self.headers.get("Idempotency-Key"))
                received = Received(self.path, dict(self.headers), body, reason is None, status, reason,
                                    duplicate=duplicate)
                receiver.record(received)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:  # on_request reports instead
                pass

        return Handler

    def start(self) -> WebhookReceiver:
        self._server = _Server((self.host, self.port), self._handler())
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

    def answer(self) -> tuple[int, dict[str, str]]:
        """Status and extra headers for an authentic request."""
        return 200, {}

    def record(self, received: Received) -> None:
        """Called once per request, after its answer is decided."""
        if self.on_request is not None:
            self.on_request(received)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class JsonLines:
    """One JSON line per delivery (with its signature check) to `out`, whole lines even when deliveries arrive
    concurrently; repeats of an accepted delivery are not printed again."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self._lock = threading.Lock()

    def __call__(self, r: Received) -> None:
        if r.duplicate:
            return
        try:
            body: Any = r.json
        except ValueError:
            body = r.body.decode("utf-8", "replace")
        line = {"signature_ok": r.signature_ok, "idempotency_key": r.headers.get("Idempotency-Key"), "body": body}
        if r.reason:
            line["reason"] = r.reason
        with self._lock:
            self.out.write(json.dumps(line) + "\n")
            self.out.flush()


def run_receiver(host: str, port: int, secret: str | None, tolerance_s: float = 300.0) -> int:
    """Serve until interrupted, printing one JSON line per delivery with its signature check."""
    receiver = WebhookReceiver(secret, port, host, on_request=JsonLines(sys.stdout), tolerance_s=tolerance_s).start()
    print(f"listening on {receiver.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        receiver.stop()
