"""Where event updates go: snapshots, a JSONL log and webhooks, behind one `handle(update)` call.

`build_sinks` orders snapshots first so the sinks after it can name the snapshot file; `SinkFanout`
isolates sinks from each other, so a full disk or a bug in one never silences the others.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence

from streamvad.config import SinksConfig
from streamvad.events import EventUpdate
from streamvad.sinks.base import Sink, update_record
from streamvad.sinks.jsonl import JsonlSink
from streamvad.sinks.snapshots import SnapshotSink
from streamvad.sinks.webhook import WebhookSink, sign

log = logging.getLogger(__name__)

__all__ = ["JsonlSink", "Sink", "SinkFanout", "SnapshotSink", "WebhookSink", "build_sinks", "sign",
           "update_record"]


def build_sinks(cfg: SinksConfig) -> list[Sink]:
    """Sinks in the order they must run. Each webhook gets its own spool folder named after its URL,
    so the same URL finds its pending deliveries again after a restart or a config reorder."""
    sinks: list[Sink] = []
    if cfg.snapshots is not None:
        sinks.append(SnapshotSink(cfg.snapshots))
    if cfg.jsonl is not None:
        sinks.append(JsonlSink(cfg.jsonl))
    for hook in cfg.webhooks:
        digest = hashlib.sha256(hook.url.encode("utf-8")).hexdigest()[:12]
        sinks.append(WebhookSink(hook, cfg.spool / f"webhook-{digest}"))
    return sinks


class SinkFanout:
    """Calls every sink in order; an exception in one is logged and the rest still run."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)
        self.errors = 0

    def handle(self, update: EventUpdate) -> None:
        for sink in self.sinks:
            try:
                sink.handle(update)
            except Exception:
                self.errors += 1
                log.exception("sink %s failed on event %s (%s); other sinks continue",
                              type(sink).__name__, update.event.id, update.kind)

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
