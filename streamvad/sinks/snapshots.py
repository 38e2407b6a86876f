"""Snapshot JPEGs: the event's peak frame with its heatmap drawn over it, one file per update kind."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from streamvad.live.events import EventUpdate
from streamvad.overlay import overlay_heatmap, save_jpeg

log = logging.getLogger(__name__)


def safe_name(name: str) -> str:
    """A camera id as a single path component (no separators, no leading dots)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "_"


class SnapshotSink:
    """Writes `<dir>/<camera>/<event_id>_<kind>.jpg` and records the path on the event and the update.

    It must run before sinks that report the snapshot (JSONL, webhooks); `build_sinks` orders it first.
    "updated" overwrites its file as the peak grows, so an event leaves at most three files.
    """

    def __init__(self, directory: str | Path, quality: int = 90) -> None:
        self.directory = Path(directory)
        self.quality = quality

    def handle(self, update: EventUpdate) -> None:
        if update.peak_frame is None or update.peak_heatmap is None:
            log.debug("event %s %s: no peak frame kept, no snapshot", update.event.id, update.kind)
            return
        event = update.event
        path = self.directory / safe_name(event.camera) / f"{event.id}_{update.kind}.jpg"
        save_jpeg(overlay_heatmap(update.peak_frame, update.peak_heatmap), path, self.quality)
        update.snapshot_path = str(path)
        if update.snapshot_path not in event.snapshot_paths:
            event.snapshot_paths.append(update.snapshot_path)

    def close(self) -> None:
        """Nothing held open."""
