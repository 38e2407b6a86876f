"""The reference receiver (`streamvad receive`) under hostile or repeated deliveries: a body cap, a read
timeout, deduplication by Idempotency-Key, and whole JSON lines under concurrent deliveries (a real HTTP
server on loopback)."""

from __future__ import annotations

import io
import json
import socket
import threading
import time

import httpx

from streamvad.sinks.receiver import JsonLines
from streamvad.sinks.webhook import sign
from tests.receiver import WebhookReceiver

SECRET = "s3cret"


def post(url: str, payload: dict[str, object], key: str) -> int:
    body = json.dumps(payload).encode()
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "Idempotency-Key": key, "X-StreamVAD-Timestamp": stamp,
               "X-StreamVAD-Signature": sign(stamp, body, SECRET)}
    return httpx.post(url, content=body, headers=headers, timeout=10).status_code


def test_a_body_over_the_cap_is_refused_unread_and_the_receiver_goes_on() -> None:
    with WebhookReceiver(SECRET, max_body_bytes=1024) as rx:
        assert httpx.post(rx.url, content=b"x" * 4096, timeout=10).status_code == 413
        assert post(rx.url, {"event_id": "e1"}, "e1:0:opened") == 200
        assert [r.status for r in rx.requests] == [200]  # the refused one was never read or recorded


def test_a_stalled_client_is_dropped_after_the_read_timeout() -> None:
    with WebhookReceiver(SECRET, read_timeout_s=0.3) as rx:
        stalled = socket.create_connection(("127.0.0.1", rx.port))
        stalled.sendall(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # then nothing
        stalled.settimeout(5.0)
        assert stalled.recv(1024) == b""  # the server closed it
        stalled.close()
        assert post(rx.url, {"event_id": "e1"}, "e1:0:opened") == 200


def test_repeats_are_acknowledged_but_printed_once_and_concurrent_lines_stay_whole() -> None:
    out = io.StringIO()
    with WebhookReceiver(SECRET, on_request=JsonLines(out)) as rx:
        keys = [f"e{i}:0:opened" for i in range(20)]

        def deliver(key: str) -> None:
            for _ in range(2):  # at-least-once: every delivery arrives twice
                assert post(rx.url, {"event_id": key, "pad": "x" * 2000}, key) == 200

        threads = [threading.Thread(target=deliver, args=(k,)) for k in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        lines = out.getvalue().splitlines()
        assert sorted(json.loads(line)["idempotency_key"] for line in lines) == sorted(keys)  # whole, once each
        assert sum(r.duplicate for r in rx.requests) == 20 and len(rx.accepted()) == 40
    # a delivery the receiver refused (an outage) is not a duplicate when it comes again
    with WebhookReceiver(SECRET) as rx:
        rx.script = [503]
        assert post(rx.url, {"event_id": "e9"}, "e9:0:opened") == 503
        assert post(rx.url, {"event_id": "e9"}, "e9:0:opened") == 200
        assert [r.duplicate for r in rx.requests] == [False, False]
