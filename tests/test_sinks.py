"""Sinks with real parts: files on tmp_path and a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from streamvad.config import SinksConfig, WebhookConfig
from streamvad.live.events import EventUpdate, UpdateKind
from streamvad.overlay import overlay_heatmap
from streamvad.sinks import JsonlSink, SinkFanout, SnapshotSink, WebhookSink, build_sinks
from streamvad.sinks.webhook import parse_retry_after, sign
from streamvad.types import Event, FrameKey
from tests.receiver import WebhookReceiver

SECRET = "s3cret"


def make_update(n: int = 0, kind: UpdateKind = "opened", camera: str = "cam1", frame: bool = True) -> EventUpdate:
    event = Event(id=f"event-{n:03d}", camera=camera, start_pts=n * 10.0, end_pts=None, start_wall_time=1e9 + n,
                  peak_score=0.9, peak_key=FrameKey(camera, n, n * 10.0), frame_count=2)
    image = np.full((24, 32, 3), 90, dtype=np.uint8) if frame else None
    heat = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3) if frame else None
    return EventUpdate(kind, event, image, heat, seq=0)


def hook(receiver: WebhookReceiver, **kw: object) -> WebhookConfig:
    return WebhookConfig(**{"url": receiver.url, "secret": SECRET, "timeout_s": 2.0, "backoff_s": 0.05,
                            "backoff_max_s": 0.2, **kw})  # type: ignore[arg-type]


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------- files


def test_jsonl_appends_one_flushed_object_per_update(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "deep" / "events.jsonl"
    sink = JsonlSink(path)
    sink.handle(make_update(1))
    assert len(path.read_text().splitlines()) == 1  # visible before close: flushed per line
    sink.handle(make_update(1, "closed"))
    sink.close()
    JsonlSink(path).close()  # reopening appends, never truncates
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["kind"], r["id"], r["camera"]) for r in rows] == [("opened", "event-001", "cam1"),
                                                                ("closed", "event-001", "cam1")]
    assert rows[0]["peak_key"] == {"camera": "cam1", "index": 1, "pts": 10.0}
    assert rows[0]["idempotency_key"] == "event-001:0:opened"


def test_snapshot_draws_heatmap_on_peak_frame_and_records_path(tmp_path: Path) -> None:
    sink = SnapshotSink(tmp_path / "snaps")
    update = make_update(2)
    sink.handle(update)
    path = tmp_path / "snaps" / "cam1" / "event-002_opened.jpg"
    assert update.snapshot_path == str(path) and update.event.snapshot_paths == [str(path)]
    written = np.asarray(Image.open(path).convert("RGB")).astype(int)
    expected = overlay_heatmap(update.peak_frame, update.peak_heatmap).astype(int)  # type: ignore[arg-type]
    assert np.abs(written - expected).mean() < 4
    assert written[:, -1].mean() != written[:, 0].mean()  # hot right side differs from cold left side
    sink.handle(update)  # same kind again overwrites, path recorded once
    assert update.event.snapshot_paths == [str(path)]
    bare = make_update(3, frame=False)
    sink.handle(bare)
    assert bare.snapshot_path is None and not (tmp_path / "snaps" / "cam1" / "event-003_opened.jpg").exists()


def test_snapshot_camera_id_cannot_escape_the_folder(tmp_path: Path) -> None:
    update = make_update(4, camera="../../etc")
    SnapshotSink(tmp_path / "snaps").handle(update)
    assert Path(update.snapshot_path or "").resolve().is_relative_to((tmp_path / "snaps").resolve())


class _Broken:
    def handle(self, update: EventUpdate) -> None:
        raise OSError("disk full")

    def close(self) -> None:
        raise OSError("still full")


def test_fanout_isolates_a_broken_sink(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    jsonl = JsonlSink(tmp_path / "e.jsonl")
    fanout = SinkFanout([SnapshotSink(tmp_path / "s"), _Broken(), jsonl])
    with caplog.at_level(logging.ERROR):
        fanout.handle_all([make_update(1), make_update(2)])
        fanout.close()
    rows = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["event-001", "event-002"]
    assert rows[0]["snapshot"].endswith("event-001_opened.jpg")  # snapshot ran before the JSONL sink
    assert fanout.errors == 2
    assert sum("_Broken failed" in r.getMessage() for r in caplog.records) == 3


def test_build_sinks_orders_snapshots_first_and_gives_each_webhook_a_spool(tmp_path: Path) -> None:
    cfg = SinksConfig(jsonl=tmp_path / "e.jsonl", snapshots=tmp_path / "snaps", spool=tmp_path / "spool",
                      webhooks=[WebhookConfig(url="http://127.0.0.1:9/a"), WebhookConfig(url="http://127.0.0.1:9/b")])
    sinks = build_sinks(cfg)
    try:
        assert [type(s).__name__ for s in sinks] == ["SnapshotSink", "JsonlSink", "WebhookSink", "WebhookSink"]
        spools = {s.spool for s in sinks if isinstance(s, WebhookSink)}
        assert len(spools) == 2 and all(p.parent == tmp_path / "spool" for p in spools)
        assert build_sinks(SinksConfig(spool=tmp_path / "x")) == []
    finally:
        SinkFanout(sinks).close()


# --------------------------------------------------------------------------- webhooks


def test_webhook_posts_signed_json_with_idempotency_key(tmp_path: Path) -> None:
    with WebhookReceiver(SECRET) as receiver:
        sink = WebhookSink(hook(receiver), tmp_path / "spool")
        update = make_update(7)
        SnapshotSink(tmp_path / "snaps").handle(update)
        sink.handle(update)
        [req] = receiver.wait_for(1)
        sink.close()
    assert req.signature_ok and req.headers["Idempotency-Key"] == "event-007:0:opened"
    assert abs(int(req.headers["X-StreamVAD-Timestamp"]) - time.time()) < 60
    body = req.json
    assert (body["id"], body["kind"], body["idempotency_key"]) == ("event-007", "opened", "event-007:0:opened")
    assert body["snapshot"] == update.snapshot_path
    assert base64.b64decode(body["snapshot_jpeg_base64"]) == Path(update.snapshot_path or "").read_bytes()
    assert sink.stats() == {"delivered": 1, "retries": 0, "failures": 0, "dead": 0, "pending": 0}


def test_wrong_secret_is_refused_with_the_reason_and_dead_lettered(tmp_path: Path) -> None:
    with WebhookReceiver("another-secret") as receiver:
        sink = WebhookSink(hook(receiver), tmp_path / "spool")
        sink.handle(make_update(1))
        assert wait_until(lambda: sink.dead == 1)
        sink.close()
    [req] = receiver.requests
    assert not req.signature_ok and req.status == 401
    [dead] = list((tmp_path / "spool" / "dead").glob("*.json"))
    assert json.loads(dead.read_text())["dead_reason"].startswith(
        "HTTP 401 Unauthorized: signature does not match the body and timestamp")


def test_signature_covers_the_timestamp_so_a_capture_cannot_be_replayed_later(tmp_path: Path) -> None:
    with WebhookReceiver(SECRET) as receiver:
        sink = WebhookSink(hook(receiver), tmp_path / "spool")
        sink.handle(make_update(1))
        [captured] = receiver.wait_for(1)
        sink.close()
        ts = int(captured.headers["X-StreamVAD-Timestamp"])
        assert captured.headers["X-StreamVAD-Signature"] == sign(str(ts), captured.body, SECRET)

        def replay(timestamp: int, signature: str) -> httpx.Response:
            return httpx.post(receiver.url, content=captured.body, timeout=5, headers={
                "X-StreamVAD-Timestamp": str(timestamp), "X-StreamVAD-Signature": signature})

        moved = replay(ts + 600, captured.headers["X-StreamVAD-Signature"])  # fresh stamp, captured signature
        # correctly signed but far outside the 300 s tolerance, so seconds lost on a busy machine cannot matter
        stale = replay(ts - 600, sign(str(ts - 600), captured.body, SECRET))
        future = replay(ts + 600, sign(str(ts + 600), captured.body, SECRET))
        verbatim = replay(ts, captured.headers["X-StreamVAD-Signature"])  # within tolerance: idempotency's job
    assert (moved.status_code, stale.status_code, future.status_code, verbatim.status_code) == (401, 401, 401, 200)
    assert "signature does not match" in moved.text
    assert "s old, outside the 300 s tolerance" in stale.text and "in the future" in future.text
    assert [r.signature_ok for r in receiver.requests] == [True, False, False, False, True]


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    now = time.time()
    assert parse_retry_after("7", now) == 7.0 and parse_retry_after(" 0 ", now) == 0.0
    in_30s = email.utils.formatdate(now + 30, usegmt=True)  # "Wed, 21 Oct 2015 07:28:00 GMT"
    assert 28.5 <= (parse_retry_after(in_30s, now) or 0.0) <= 30.0
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now) == 0.0
    assert [parse_retry_after(v, now) for v in (None, "", "-5", "1.5", "soon", "²")] == [None] * 6


def test_update_is_spooled_durably_before_any_attempt(tmp_path: Path) -> None:
    receiver = WebhookReceiver(SECRET).start()
    receiver.stop()  # port known, nobody listening
    sink = WebhookSink(hook(receiver), tmp_path / "spool")
    sink.handle(make_update(1))
    [file] = list((tmp_path / "spool").glob("*.json"))
    assert json.loads(json.loads(file.read_text())["body"])["id"] == "event-001"
    sink.close(0.1)
    assert sink.pending == 1


def test_receiver_outage_then_every_event_delivered_in_order(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    receiver = WebhookReceiver(SECRET).start()
    receiver.stop()
    sink = WebhookSink(hook(receiver), tmp_path / "spool")
    with caplog.at_level(logging.WARNING, logger="streamvad.sinks.webhook"):
        for n in range(5):
            sink.handle(make_update(n))
        assert wait_until(lambda: sink.failures >= 2, 60)  # the outage lasts until two attempts failed
        assert sink.pending == 5 and sink.delivered == 0
        receiver.start()  # same port
        got = receiver.wait_for(5)
    sink.close()
    receiver.stop()
    assert [r.json["id"] for r in got] == [f"event-{n:03d}" for n in range(5)]
    assert len({r.headers["Idempotency-Key"] for r in got}) == 5 and all(r.signature_ok for r in got)
    assert sink.delivered == 5 and sink.pending == 0
    line = next(r.getMessage() for r in caplog.records if "attempt" in r.getMessage())
    assert receiver.url in line and "event-000" in line and "attempt 1 failed" in line and "next retry in" in line


def test_new_sink_on_same_spool_delivers_what_was_pending(tmp_path: Path) -> None:
    receiver = WebhookReceiver(SECRET).start()
    receiver.stop()
    first = WebhookSink(hook(receiver), tmp_path / "spool")
    for n in range(3):
        first.handle(make_update(n))
    first.close(timeout=0.2)  # "process exits" with deliveries pending
    assert first.pending == 3
    (tmp_path / "spool" / ".half-written.json.tmp").write_text("{")  # a crash mid-write is discarded
    receiver.start()
    second = WebhookSink(hook(receiver), tmp_path / "spool")
    got = receiver.wait_for(3)
    second.close()
    receiver.stop()
    assert [r.json["id"] for r in got] == ["event-000", "event-001", "event-002"]
    assert second.pending == 0 and not list((tmp_path / "spool").glob(".*.tmp"))


def test_4xx_is_dead_lettered_not_retried_and_does_not_block_the_queue(tmp_path: Path) -> None:
    with WebhookReceiver(SECRET) as receiver:
        receiver.script = [400]
        sink = WebhookSink(hook(receiver), tmp_path / "spool")
        sink.handle(make_update(1))
        sink.handle(make_update(2))
        [ok] = receiver.wait_for(1)
        sink.close()
    assert ok.json["id"] == "event-002" and len(receiver.requests) == 2
    [dead] = list((tmp_path / "spool" / "dead").glob("*.json"))
    record = json.loads(dead.read_text())
    assert record["dead_reason"] == "HTTP 400 Bad Request" and record["attempts"] == 1
    assert record["event_id"] == "event-001"
    assert (sink.dead, sink.retries, sink.delivered) == (1, 0, 1)


def test_5xx_and_429_are_retried_until_accepted(tmp_path: Path) -> None:
    with WebhookReceiver(SECRET) as receiver:
        receiver.script = [503, 500, 429]
        sink = WebhookSink(hook(receiver), tmp_path / "spool")
        sink.handle(make_update(1))
        receiver.wait_for(1)
        sink.close()
    assert [r.status for r in receiver.requests] == [503, 500, 429, 200]
    assert len({r.headers["Idempotency-Key"] for r in receiver.requests}) == 1  # same delivery each time
    assert (sink.retries, sink.failures, sink.delivered, sink.dead) == (3, 3, 1, 0)


def test_max_attempts_moves_to_dead_letter(tmp_path: Path) -> None:
    with WebhookReceiver(SECRET) as receiver:
        receiver.status = 500
        sink = WebhookSink(hook(receiver, max_attempts=2), tmp_path / "spool")
        sink.handle(make_update(1))
        assert wait_until(lambda: sink.dead == 1)
        sink.close()
    assert len(receiver.requests) == 2 and sink.pending == 0
    [dead] = list((tmp_path / "spool" / "dead").glob("*.json"))
    assert json.loads(dead.read_text())["dead_reason"] == "HTTP 500 Internal Server Error"


def test_retry_after_is_honoured_instead_of_the_backoff(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver(SECRET) as receiver, caplog.at_level(logging.WARNING, logger="streamvad.sinks.webhook"):
        receiver.script = [(503, {"Retry-After": "1"})]
        sink = WebhookSink(hook(receiver, backoff_max_s=5.0), tmp_path / "spool")  # backoff alone: <= 0.05 s
        sink.handle(make_update(1))
        receiver.wait_for(1)
        sink.close()
    first, second = receiver.requests
    assert (first.status, second.status) == (503, 200)
    assert 0.95 <= second.received_at - first.received_at < 3.0
    [line] = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert "HTTP 503 Service Unavailable" in line and "next retry in 1.0s (Retry-After)" in line


def test_retry_after_is_capped_at_backoff_max(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver(SECRET) as receiver, caplog.at_level(logging.WARNING, logger="streamvad.sinks.webhook"):
        receiver.script = [(429, {"Retry-After": "3600"})]
        sink = WebhookSink(hook(receiver, backoff_max_s=0.3), tmp_path / "spool")
        sink.handle(make_update(1))
        receiver.wait_for(1)
        sink.close()
    first, second = receiver.requests
    assert 0.25 <= second.received_at - first.received_at < 2.0
    [line] = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert "next retry in 0.3s (Retry-After 3600s capped at backoff_max_s)" in line


def test_attempt_count_and_backoff_survive_a_sink_restart(tmp_path: Path) -> None:
    with WebhookReceiver(SECRET) as receiver:
        receiver.status = 500
        cfg = hook(receiver, backoff_s=0.4, backoff_max_s=1.0, max_attempts=3)
        first = WebhookSink(cfg, tmp_path / "spool")
        first.handle(make_update(1))
        assert wait_until(lambda: len(receiver.requests) == 2)
        first.close(timeout=0.05)  # "process exits" during the backoff after attempt 2 (>= 0.4 s)
        [spooled] = list((tmp_path / "spool").glob("*.json"))
        state = json.loads(spooled.read_text())
        assert state["attempts"] == 2 and state["next_attempt_at"] > time.time()
        second = WebhookSink(cfg, tmp_path / "spool")
        assert wait_until(lambda: second.dead == 1)
        second.close()
    assert len(receiver.requests) == 3  # one more attempt, not max_attempts afresh
    assert receiver.requests[2].received_at >= state["next_attempt_at"] - 0.05  # the backoff went on
    [dead] = list((tmp_path / "spool" / "dead").glob("*.json"))
    record = json.loads(dead.read_text())
    assert record["attempts"] == 3 and "next_attempt_at" not in record and second.pending == 0


@pytest.mark.slow
def test_sixty_second_outage_loses_nothing(tmp_path: Path) -> None:
    receiver = WebhookReceiver(SECRET).start()
    cfg = WebhookConfig(url=receiver.url, secret=SECRET, timeout_s=2.0, backoff_s=0.5, backoff_max_s=5.0)
    sink = WebhookSink(cfg, tmp_path / "spool")
    sink.handle(make_update(0))
    receiver.wait_for(1)
    receiver.stop()
    deadline = time.monotonic() + 60
    n = 1
    while time.monotonic() < deadline:  # events keep coming during the outage
        sink.handle(make_update(n))
        n += 1
        time.sleep(2.0)
    receiver.start()
    got = receiver.wait_for(n, timeout=15)
    sink.close()
    receiver.stop()
    ids = [r.json["id"] for r in got]
    assert sorted(set(ids)) == [f"event-{i:03d}" for i in range(n)] and ids == sorted(ids)
    assert sink.pending == 0 and sink.retries >= 5


def test_requeue_sends_dead_letters_again_in_their_original_order(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A receiver that refused two deliveries (400) is fixed; `streamvad requeue` puts them back and the next
    sink on that spool delivers them first, with fresh attempt counts."""
    from streamvad.cli import main
    from streamvad.sinks import webhook_spool

    with WebhookReceiver(SECRET) as receiver:
        receiver.script = [400, 400]
        sinks_cfg = SinksConfig(spool=tmp_path / "spool", webhooks=[hook(receiver)])
        spool = webhook_spool(sinks_cfg, receiver.url)
        sink = WebhookSink(hook(receiver), spool)
        sink.handle(make_update(1))
        sink.handle(make_update(2))
        assert wait_until(lambda: sink.dead == 2)
        sink.close()
        config = tmp_path / "live.yaml"
        config.write_text(f"sinks:\n  spool: {tmp_path / 'spool'}\n  webhooks:\n    - url: {receiver.url}\n"
                          f"      secret: {SECRET}\n", encoding="utf-8")
        assert main(["requeue", "--config", str(config)]) == 0
        assert f"{receiver.url}: 2 dead-lettered deliveries back in {spool}" in capsys.readouterr().out
        assert not list((spool / "dead").glob("*.json"))
        requeued = [json.loads(p.read_text()) for p in sorted(spool.glob("*.json"))]
        assert [r["event_id"] for r in requeued] == ["event-001", "event-002"]
        assert not any("attempts" in r or "dead_reason" in r for r in requeued)
        sink = WebhookSink(hook(receiver), spool)
        sink.handle(make_update(3))
        delivered = receiver.wait_for(3)
        sink.close()
    assert [r.json["id"] for r in delivered] == ["event-001", "event-002", "event-003"]
    assert main(["requeue", "--config", str(config), "--url", "http://elsewhere/hook"]) == 2
    assert "sinks.webhooks has no webhook with url http://elsewhere/hook" in capsys.readouterr().err
