"""Webhook delivery that survives receiver outages and process restarts.

Each update is first written to a spool directory (one JSON file, fsync + rename, so a crash leaves
either the whole file or nothing), then a background thread POSTs the spool in order and deletes a file
only after a 2xx. Failures are retried with capped exponential backoff and jitter, or after the
receiver's `Retry-After` when it sends one (capped the same way); a 4xx other than 408/429 means the
receiver will never accept the payload, so it goes to `dead/` instead of blocking the queue. The
attempt count and next-attempt time are written back into the spool file after each failure, so a
restarted process continues the backoff and `max_attempts` where the previous one stopped.
Delivery is at-least-once: a receiver that answered 2xx after its deadline may see the same
`Idempotency-Key` twice and should drop the repeat.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import threading
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx

from streamvad.config import WebhookConfig
from streamvad.live.events import EventUpdate
from streamvad.sinks.base import update_record

log = logging.getLogger(__name__)

_RETRYABLE_4XX = (408, 429)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: the file is either complete on disk or absent."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sign(timestamp: str, body: bytes, secret: str) -> str:
    """The X-StreamVAD-Signature value: `sha256=` + hex HMAC-SHA256 of `timestamp + "." + body`.

    Covering the X-StreamVAD-Timestamp value means a captured request cannot be replayed under a fresh
    timestamp, so a receiver that rejects old timestamps bounds the replay window.
    """
    message = timestamp.encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_standard(msg_id: str, timestamp: str, body: bytes, secret: str) -> str:
    """The Standard Webhooks `webhook-signature` value (https://www.standardwebhooks.com): `v1,` + base64
    HMAC-SHA256 of `msg_id + "." + timestamp + "." + body`, keyed by the base64 key after `whsec_` in `secret`.

    The id and the timestamp are signed as well, so neither a replay under a fresh timestamp nor a body moved
    to another delivery id passes a receiver that checks both.
    """
    key = base64.b64decode(secret.removeprefix("whsec_"))
    message = f"{msg_id}.{timestamp}.".encode("ascii") + body
    return "v1," + base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode("ascii")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta-seconds or HTTP-date, RFC 9110 §10.2.3), or None
    when absent or malformed (the caller then falls back to its own backoff)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP-dates are always UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


_DELIVERY_STATE = ("attempts", "next_attempt_at", "dead_reason")


def requeue_dead(spool_dir: str | Path) -> int:
    """Move dead-lettered deliveries back into the spool with their attempt state cleared; returns how many.

    For after the receiver (or the secret) is fixed. File names keep their enqueue time, so they go out
    in their original order, ahead of newer deliveries. Safe while a sink runs on the spool: each file
    appears there complete (written atomically) before the dead-letter copy is removed.
    """
    spool = Path(spool_dir)
    moved = 0
    for dead in sorted((spool / "dead").glob("*.json")):
        try:
            item = json.loads(dead.read_text(encoding="utf-8"))
            record = {k: v for k, v in item.items() if k not in _DELIVERY_STATE}
        except (OSError, ValueError, AttributeError) as err:
            log.error("requeue: %s is unreadable (%s); left in %s", dead.name, err, dead.parent)
            continue
        _write_atomic(spool / dead.name, json.dumps(record).encode("utf-8"))
        dead.unlink()
        moved += 1
    return moved


class WebhookSink:
    """POSTs event updates to `cfg.url` through the disk spool in `spool_dir`.

    One sink per spool directory: two live sinks on the same directory would deliver twice.
    Counters: `delivered` (2xx), `failures` (failed attempts), `retries` (attempts scheduled again),
    `dead` (dead-lettered) and `pending` (files waiting in the spool).
    """

    def __init__(self, cfg: WebhookConfig, spool_dir: str | Path, inline_snapshot_max_bytes: int = 64 * 1024) -> None:
        self.cfg = cfg
        self.spool = Path(spool_dir)
        self.dead_dir = self.spool / "dead"
        self.dead_dir.mkdir(parents=True, exist_ok=True)
        for partial in self.spool.glob(".*.tmp"):  # interrupted writes: never acknowledged to the caller
            partial.unlink()
        self.inline_snapshot_max_bytes = inline_snapshot_max_bytes
        self.delivered = self.failures = self.retries = self.dead = 0
        self._seq = itertools.count()
        self._kick = threading.Event()  # new work or closing
        self._closing = threading.Event()  # drain, then stop
        self._halt = threading.Event()  # stop now (close timed out)
        if self.pending:
            log.info("webhook %s: resuming %d pending deliveries from %s", cfg.url, self.pending, self.spool)
        self._thread = threading.Thread(target=self._run, name="streamvad-webhook", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return sum(1 for _ in self.spool.glob("*.json"))

    def stats(self) -> dict[str, int]:
        return {"delivered": self.delivered, "retries": self.retries, "failures": self.failures,
                "dead": self.dead, "pending": self.pending}

    # ------------------------------------------------------------------ caller's side

    def handle(self, update: EventUpdate) -> None:
        """Spool the update (durable when this returns) and wake the delivery thread."""
        record: dict[str, Any] = update_record(update)
        snap = update.snapshot_path
        if snap and self.inline_snapshot_max_bytes and os.path.isfile(snap) \
                and os.path.getsize(snap) <= self.inline_snapshot_max_bytes:
            record["snapshot_jpeg_base64"] = base64.b64encode(Path(snap).read_bytes()).decode("ascii")
        item = {
            "event_id": update.event.id, "kind": update.kind, "idempotency_key": update.idempotency_key,
            "enqueued_at": time.time(), "body": json.dumps(record, sort_keys=True, separators=(",", ":")),
        }
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}.json"
        _write_atomic(self.spool / name, json.dumps(item).encode("utf-8"))
        self._kick.set()

    def close(self, timeout: float = 5.0) -> None:
        """Try to drain the spool for up to `timeout` s, then stop; what is left resumes on next start."""
        self._closing.set()
        self._kick.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._halt.set()
            self._thread.join(self.cfg.timeout_s + 1.0)
        if self.pending:
            log.warning("webhook %s: %d deliveries still pending in %s; they are sent on next start",
                        self.cfg.url, self.pending, self.spool)

    # ------------------------------------------------------------------ delivery thread

    def _run(self) -> None:
        with httpx.Client(timeout=self.cfg.timeout_s) as client:
            while not self._halt.is_set():
                self._kick.clear()
                head = min(self.spool.glob("*.json"), default=None)
                if head is None:
                    if self._closing.is_set():
                        return
                    self._kick.wait(1.0)
                    continue
                try:
                    self._deliver(client, head)
                except Exception:  # the thread must outlive any one bad file or disk hiccup
                    log.exception("webhook %s: unexpected error delivering %s; retrying", self.cfg.url, head.name)
                    self._halt.wait(self.cfg.backoff_max_s)

    def _deliver(self, client: httpx.Client, path: Path) -> None:
        try:
            item = json.loads(path.read_text(encoding="utf-8"))
            body, key, event_id = item["body"].encode("utf-8"), item["idempotency_key"], item["event_id"]
            attempts, next_at = int(item.get("attempts", 0)), float(item.get("next_attempt_at", 0.0))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.error("webhook %s: unreadable spool file %s (%s), moved to %s", self.cfg.url, path.name, err,
                      self.dead_dir)
            os.replace(path, self.dead_dir / path.name)
            self.dead += 1
            return
        # backing off, maybe since before a restart; capped so a wall-clock jump cannot stall the queue
        wait = min(next_at - time.time(), self.cfg.backoff_max_s)
        if wait > 0 and self._halt.wait(wait):
            return
        attempt = attempts + 1
        error, retryable, retry_after = self._post(client, body, key)
        if error is None:
            path.unlink()
            self.delivered += 1
            return
        self.failures += 1
        if not retryable or (self.cfg.max_attempts and attempt >= self.cfg.max_attempts):
            self._dead_letter(path, item, attempt, error)
            return
        delay, why = self._retry_delay(attempt, retry_after)
        log.warning("webhook %s: event %s (%s) attempt %d failed: %s; next retry in %.1fs (%s)",
                    self.cfg.url, event_id, item.get("kind"), attempt, error, delay, why)
        state = {"attempts": attempt, "next_attempt_at": time.time() + delay}
        _write_atomic(path, json.dumps({**item, **state}).encode("utf-8"))
        self.retries += 1  # the wait itself happens on the next pass, the same way it does after a restart

    def _retry_delay(self, attempt: int, retry_after: float | None) -> tuple[float, str]:
        """-> (seconds until the next attempt, why that long): the receiver's Retry-After if it sent one,
        else exponential backoff with jitter; both capped at `backoff_max_s`."""
        cap = self.cfg.backoff_max_s
        if retry_after is not None:
            if retry_after > cap:
                return cap, f"Retry-After {retry_after:.0f}s capped at backoff_max_s"
            return retry_after, "Retry-After"
        return min(cap, self.cfg.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0), "backoff"

    def _post(self, client: httpx.Client, body: bytes, key: str) -> tuple[str | None, bool, float | None]:
        """-> (error or None on 2xx, whether the error is worth retrying, the response's Retry-After in s)."""
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "Idempotency-Key": key,
                   "X-StreamVAD-Timestamp": timestamp, "User-Agent": "streamvad-webhook"}
        if self.cfg.format == "standard" and self.cfg.secret:  # the id is the same on every retry
            headers.update({"webhook-id": key, "webhook-timestamp": timestamp,
                            "webhook-signature": sign_standard(key, timestamp, body, self.cfg.secret)})
        elif self.cfg.secret:
            headers["X-StreamVAD-Signature"] = sign(timestamp, body, self.cfg.secret)
        try:
            response = client.post(self.cfg.url, content=body, headers=headers)
        except httpx.HTTPError as err:
            return f"{type(err).__name__}: {err}", True, None
        status = response.status_code
        if 200 <= status < 300:
            return None, False, None
        error = f"HTTP {status} {response.reason_phrase}"
        detail = " ".join(response.text.split())[:200]  # e.g. why a receiver refused the signature
        if detail:
            error += f": {detail}"
        retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
        return error, status >= 500 or status in _RETRYABLE_4XX, retry_after

    def _dead_letter(self, path: Path, item: dict[str, Any], attempts: int, error: str) -> None:
        record = {k: v for k, v in item.items() if k != "next_attempt_at"}
        _write_atomic(self.dead_dir / path.name,
                      json.dumps({**record, "dead_reason": error, "attempts": attempts}).encode("utf-8"))
        path.unlink()
        self.dead += 1
        log.error("webhook %s: event %s (%s) dead-lettered after %d attempt(s): %s -> %s", self.cfg.url,
                  item["event_id"], item.get("kind"), attempts, error, self.dead_dir / path.name)
