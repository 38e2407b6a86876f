"""Standard Webhooks deliveries, verified by the `standardwebhooks` PyPI library (what a receiver in another
language would use), over real HTTP: the signature, an id that stays the same on a retry, and the config's
one-line refusal of a secret that is not a `whsec_` secret."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from streamvad.config import WebhookConfig, parse_config
from streamvad.errors import ConfigError
from streamvad.sinks import WebhookSink
from tests.receiver import WebhookReceiver
from tests.test_sinks import make_update, wait_until

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode("ascii")


class LibraryReceiver:
    """An HTTP endpoint that verifies each delivery with standardwebhooks' Webhook.verify, answering 503 to the
    first `refuse` requests (so the sender retries) and 200 or 401 after that."""

    def __init__(self, secret: str, refuse: int = 0) -> None:
        self.verified: list[Any] = []
        self.ids: list[str] = []
        self.errors: list[str] = []
        webhook, outer = Webhook(secret), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.ids.append(self.headers["webhook-id"])
                status = 503
                if len(outer.ids) > refuse:
                    try:
                        outer.verified.append(webhook.verify(body, dict(self.headers)))
                        status = 200
                    except WebhookVerificationError as err:
                        outer.errors.append(str(err))
                        status = 401
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def library_receiver() -> Iterator[LibraryReceiver]:
    receiver = LibraryReceiver(SECRET, refuse=1)
    yield receiver
    receiver.close()


def standard_hook(url: str, secret: str = SECRET) -> WebhookConfig:
    return WebhookConfig(url=url, format="standard", secret=secret, timeout_s=2.0, backoff_s=0.05, backoff_max_s=0.2)


def test_deliveries_verify_with_the_standardwebhooks_library_and_keep_their_id_on_a_retry(
        tmp_path: Path, library_receiver: LibraryReceiver) -> None:
    sink = WebhookSink(standard_hook(library_receiver.url), tmp_path / "spool")
    sink.handle(make_update(3))
    assert wait_until(lambda: sink.delivered == 1)
    sink.close()
    [payload] = library_receiver.verified
    assert (payload["id"], payload["kind"]) == ("event-003", "opened")
    # refused once with 503, delivered on the retry under the same webhook-id (the receiver's dedup key)
    assert library_receiver.ids == ["event-003:0:opened", "event-003:0:opened"]
    assert sink.stats()["retries"] == 1 and not library_receiver.errors


@pytest.mark.slow
def test_another_key_fails_the_library_check_and_streamvad_receive_checks_standard_headers(tmp_path: Path) -> None:
    other = "whsec_" + base64.b64encode(bytes(32)).decode("ascii")
    wrong = LibraryReceiver(other)
    try:
        sink = WebhookSink(standard_hook(wrong.url), tmp_path / "spool")
        sink.handle(make_update(1))
        assert wait_until(lambda: sink.dead == 1)  # 401 is final: dead-lettered, not retried
        sink.close()
    finally:
        wrong.close()
    assert wrong.errors == ["No matching signature found"] and not wrong.verified
    with WebhookReceiver(SECRET) as ours, WebhookReceiver(other) as stranger:
        for i, receiver in enumerate((ours, stranger)):
            sink = WebhookSink(standard_hook(receiver.url), tmp_path / f"spool{i}")
            sink.handle(make_update(2))
            receiver.wait_for(1)
            sink.close()
    assert [r.signature_ok for r in ours.requests] == [True]
    assert [(r.status, r.reason) for r in stranger.requests] == [
        (401, "no v1 signature matches the id, timestamp and body (wrong secret, or one was altered)")]


SHORT_KEY = "whsec_" + base64.b64encode(b"short").decode()


@pytest.mark.parametrize("secret", [None, "plain-secret", "whsec_not*base64", SHORT_KEY],
                         ids=["none", "plain", "not-base64", "short-key"])
def test_standard_format_needs_a_whsec_secret(secret: str | None) -> None:
    hook: dict[str, Any] = {"url": "http://127.0.0.1:9/hook", "format": "standard"}
    if secret is not None:
        hook["secret"] = secret
    with pytest.raises(ConfigError, match=r"sinks\.webhooks\.0.*format standard needs a secret 'whsec_'") as err:
        parse_config({"sinks": {"webhooks": [hook]}})
    assert "\n" not in str(err.value)
