"""Where event updates go: snapshots, a JSONL log, webhooks and MQTT, behind one `handle(update)` call.

`build_sinks` orders snapshots first so the sinks after it can name the snapshot file; `SinkFanout`
isolates sinks from each other, so a full disk or a bug in one never silences the others.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from streamvad.config import SinksConfig
from streamvad.live.events import EventUpdate
from streamvad.sinks.base import Sink, update_record
from streamvad.sinks.jsonl import JsonlSink
from streamvad.sinks.mqtt import MqttSink
from streamvad.sinks.snapshots import SnapshotSink
from streamvad.sinks.webhook import WebhookSink, requeue_dead, sign

log = logging.getLogger(__name__)

__all__ = ["JsonlSink", "MqttSink", "Sink", "SinkFanout", "SnapshotSink", "WebhookSink", "build_sinks",
           "requeue_dead", "sign", "update_record", "webhook_spool"]


def webhook_spool(cfg: SinksConfig, url: str) -> Path:
    """The spool folder of the webhook at `url`, named after the URL, so the same URL finds its pending
    deliveries again after a restart or a config reorder."""
    return cfg.spool / f"webhook-{hashlib.sha256(url.encode('utf-8')).hexdigest()[:12]}"


def build_sinks(cfg: SinksConfig) -> list[Sink]:
    """Sinks in the order they must run; each webhook with its own spool folder (`webhook_spool`)."""
    sinks: list[Sink] = []
    if cfg.snapshots is not None:
        sinks.append(SnapshotSink(cfg.snapshots))
    if cfg.jsonl is not None:
        sinks.append(JsonlSink(cfg.jsonl))
    for hook in cfg.webhooks:
        sinks.append(WebhookSink(hook, webhook_spool(cfg, hook.url)))
    if cfg.mqtt is not None:
        sinks.append(MqttSink(cfg.mqtt))
    return sinks


class SinkFanout:
    """Calls every sink in order; an exception in one is logged and the rest still run."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)
        self.errors = 0
        self._failing: dict[str, str] = {}  # sink -> its last error, until it next succeeds

    def failing(self) -> dict[str, str]:
        """Sinks whose last update failed, with the error: /healthz reports them (a full or unwritable disk)."""
        return dict(self._failing)

    def handle(self, update: EventUpdate) -> None:
        for sink in self.sinks:
            name = type(sink).__name__
            try:
                sink.handle(update)
            except Exception as err:
                self.errors += 1
                self._failing[name] = f"{type(err).__name__}: {err}"[:300]
                log.exception("sink %s failed on event %s (%s); other sinks continue", name, update.event.id,
                              update.kind)
            else:
                self._failing.pop(name, None)

    __call__ = handle

    def handle_all(self, updates: Iterable[EventUpdate]) -> None:
        for update in updates:
            self.handle(update)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("sink %s failed to close", type(sink).__name__)
