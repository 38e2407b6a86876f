"""What every sink is, and the one JSON shape of an event update that all sinks write."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

from streamvad.live.events import EventUpdate


@runtime_checkable
class Sink(Protocol):
    """Receives every event update. `handle` must be quick (no network round trips on the caller's
    thread); `close` releases files, threads and sockets."""

    def handle(self, update: EventUpdate) -> None: ...

    def close(self) -> None: ...


def update_record(update: EventUpdate) -> dict[str, Any]:
    """The event fields plus kind, seq and idempotency key, as JSON-ready values."""
    event = dataclasses.asdict(update.event)
    return {
        "kind": update.kind,
        "seq": update.seq,
        "idempotency_key": update.idempotency_key,
        **event,
        "peak_key": dataclasses.asdict(update.event.peak_key),
        "snapshot": update.snapshot_path,
    }
