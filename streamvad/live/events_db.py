"""The events database: one SQLite file (WAL) that is the system of record of events and of the verdict link.

The events process commits, in one transaction per batch of verdicts: every event that changed, the
tracking state of every camera those verdicts touched, and how far each worker's messages are taken in.
Only then does it acknowledge them to the workers, which keep and resend whatever is unacknowledged. So a
killed events process restarts from its last commit and the workers resend exactly what came after it:
no verdict is lost, none is counted twice, and an open event continues under its id.

The schema is versioned (`PRAGMA user_version`); later work (the operator console's review columns) adds
columns here with a new version and a migration step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from streamvad.errors import StreamVADError
from streamvad.live.events import event_from_dict
from streamvad.types import Event

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SENDER_RETENTION_S = 7 * 24 * 3600.0  # a worker session not heard from in a week is long gone

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    camera TEXT NOT NULL,
    state TEXT NOT NULL,
    start_pts REAL NOT NULL,
    end_pts REAL,
    start_wall_time REAL NOT NULL,
    peak_score REAL NOT NULL,
    frame_count INTEGER NOT NULL,
    record TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_camera ON events (camera, start_wall_time);
CREATE TABLE IF NOT EXISTS trackers (
    tracker TEXT NOT NULL,
    camera TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (tracker, camera)
);
CREATE TABLE IF NOT EXISTS senders (
    sender TEXT PRIMARY KEY,
    acked INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
"""


class EventsDBError(StreamVADError):
    """The events database cannot be opened or written (one line naming the file)."""


class EventsDB:
    """The events process's database; one writer (the events process), any number of readers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit (and so an ack) survives power loss too
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise EventsDBError(f"{path}: events database schema v{version} is newer than this build's "
                                    f"v{SCHEMA_VERSION}; upgrade StreamVAD or point events.database elsewhere")
            self._db.executescript(_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
            self._db.execute("DELETE FROM senders WHERE updated_at < ?", (time.time() - _SENDER_RETENTION_S,))
        except (OSError, sqlite3.Error) as err:
            raise EventsDBError(f"{path}: cannot open the events database ({err})") from None

    def acked(self, sender: str) -> int:
        """The last message number of `sender` committed (0: none)."""
        row = self._db.execute("SELECT acked FROM senders WHERE sender = ?", (sender,)).fetchone()
        return 0 if row is None else int(row[0])

    def trackers(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(tracker, camera) -> the tracking state last committed (EventTracker.state)."""
        rows = self._db.execute("SELECT tracker, camera, state FROM trackers").fetchall()
        return {(tracker, camera): json.loads(state) for tracker, camera, state in rows}

    def events(self, camera: str | None = None, limit: int = 100) -> list[Event]:
        """The most recent events, newest first (of one camera, or all)."""
        where, args = ("WHERE camera = ?", [camera]) if camera is not None else ("", [])
        rows = self._db.execute(f"SELECT record FROM events {where} ORDER BY start_wall_time DESC LIMIT ?",
                                [*args, limit]).fetchall()
        return [event_from_dict(json.loads(r[0])) for r in rows]

    def commit(self, events: Iterable[Event], trackers: Mapping[tuple[str, str], dict[str, Any] | None],
               acked: Mapping[str, int]) -> None:
        """One transaction: the events as they are now, each camera's state (None: no longer tracked) and
        each sender's last message taken in. Raises EventsDBError; then nothing of it was written."""
        now = time.time()
        try:
            with self._db:  # commits the transaction begun here, or rolls it back on error
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(e.id, e.type, e.camera, e.state, e.start_pts, e.end_pts, e.start_wall_time, e.peak_score,
                      e.frame_count, json.dumps(dataclasses.asdict(e)), now) for e in events])
                for (tracker, camera), state in trackers.items():
                    if state is None:
                        self._db.execute("DELETE FROM trackers WHERE tracker = ? AND camera = ?", (tracker, camera))
                    else:
                        self._db.execute("INSERT OR REPLACE INTO trackers VALUES (?, ?, ?)",
                                         (tracker, camera, json.dumps(state)))
                self._db.executemany("INSERT OR REPLACE INTO senders VALUES (?, ?, ?)",
                                     [(sender, seq, now) for sender, seq in acked.items()])
        except sqlite3.Error as err:
            raise EventsDBError(f"{self.path}: cannot commit to the events database ({err})") from None

    def close(self) -> None:
        self._db.close()
