"""Event log as JSON Lines: one object per event update, appended, readable with `jq` or pandas."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from streamvad.live.events import EventUpdate
from streamvad.sinks.base import update_record


class JsonlSink:
    """Appends one line per update and flushes it, so a crash loses at most the line being written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def handle(self, update: EventUpdate) -> None:
        line = json.dumps(update_record(update), separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
