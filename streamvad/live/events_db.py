"""The events database: one SQLite file (WAL) that is the system of record of events and of the verdict link.

The events process commits, in one transaction per batch of verdicts: every event that changed, the
tracking state of every camera those verdicts touched, and how far each worker's messages are taken in.
Only then does it acknowledge them to the workers, which keep and resend whatever is unacknowledged. So a
killed events process restarts from its last commit and the workers resend exactly what came after it:
no verdict is lost, none is counted twice, and an open event continues under its id.

The schema is versioned (`PRAGMA user_version`) and migrated in place: v2 added what the operator console
reads and writes (end wall time, model version, the event's pictures and clip, its review state and the
peak frame's evidence). The console (streamvad/console/) is the second writer, of review columns only;
the events process never overwrites them, so a review survives the event's later updates.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from streamvad.errors import StreamVADError
from streamvad.live.events import event_from_dict
from streamvad.types import Event, Evidence

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_SENDER_RETENTION_S = 7 * 24 * 3600.0  # a worker session not heard from in a week is long gone
REVIEW_STATES = ("unreviewed", "reviewed", "normal")
Review = Literal["unreviewed", "reviewed", "normal"]

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
# v1 -> v2: what the console reads and writes
_V2_COLUMNS = {
    "end_wall_time": "REAL", "model_version": "TEXT", "snapshot": "TEXT", "heatmap": "TEXT", "clip": "TEXT",
    "review": "TEXT NOT NULL DEFAULT 'unreviewed'", "reviewed_at": "REAL", "evidence": "BLOB",
}
# written by the events process on every update (never the review columns, which the console owns)
_EVENT_COLUMNS = ("id", "type", "camera", "state", "start_pts", "end_pts", "start_wall_time", "end_wall_time",
                  "peak_score", "frame_count", "model_version", "snapshot", "heatmap", "clip", "record", "updated_at")
_UPSERT = (f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(_EVENT_COLUMNS))}) "
           f"ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _EVENT_COLUMNS[1:])}")
_ROW = "id, type, camera, state, start_pts, end_pts, start_wall_time, end_wall_time, peak_score, frame_count, " \
       "model_version, snapshot, heatmap, clip, review, reviewed_at, record"


def evidence_bytes(evidence: Evidence) -> bytes:
    """An Evidence as an npz (no pickle: read back with allow_pickle=False)."""
    buf = io.BytesIO()
    arrays = {"patches": evidence.patches, "vectors": evidence.vectors}
    if evidence.velocities is not None:
        arrays["velocities"] = evidence.velocities
    np.savez(buf, **arrays)
    return buf.getvalue()


def evidence_from(blob: bytes) -> Evidence:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return Evidence(z["patches"], z["vectors"], z["velocities"] if "velocities" in z.files else None)


@dataclass(frozen=True)
class EventQuery:
    """Which events the console lists: newest first, filtered, a page at a time."""

    camera: str | None = None
    type: str | None = None
    review: Review | None = None
    since: float | None = None  # start wall time, inclusive
    until: float | None = None  # start wall time, exclusive
    limit: int = 50
    offset: int = 0

    def where(self) -> tuple[str, list[Any]]:
        clauses, args = [], []
        for column, value in (("camera", self.camera), ("type", self.type), ("review", self.review)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if self.since is not None:
            clauses.append("start_wall_time >= ?")
            args.append(self.since)
        if self.until is not None:
            clauses.append("start_wall_time < ?")
            args.append(self.until)
        return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), args


class EventsDBError(StreamVADError):
    """The events database cannot be opened or written (one line naming the file)."""


class EventsDB:
    """The events process's database; one writer (the events process), any number of readers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit (and so an ack) survives power loss too
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise EventsDBError(f"{path}: events database schema v{version} is newer than this build's "
                                    f"v{SCHEMA_VERSION}; upgrade StreamVAD or point events.database elsewhere")
            self._migrate()
            self._db.execute("DELETE FROM senders WHERE updated_at < ?", (time.time() - _SENDER_RETENTION_S,))
        except (OSError, sqlite3.Error) as err:
            raise EventsDBError(f"{path}: cannot open the events database ({err})") from None

    def _migrate(self) -> None:
        """Create the tables, or bring an older file up to this schema (added columns only, in one transaction)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
            for column, kind in _V2_COLUMNS.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE events ADD COLUMN {column} {kind}")
            self._db.execute("CREATE INDEX IF NOT EXISTS events_by_review ON events (review, start_wall_time)")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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
        rows, _ = self.query(EventQuery(camera=camera, limit=limit))
        return [event_from_dict(json.loads(r["record"])) for r in rows]

    def query(self, q: EventQuery) -> tuple[list[dict[str, Any]], int]:
        """(one page of events as column dicts, newest first; how many match in all)."""
        where, args = q.where()
        total = int(self._db.execute(f"SELECT COUNT(*) FROM events {where}", args).fetchone()[0])
        cur = self._db.execute(f"SELECT {_ROW} FROM events {where} ORDER BY start_wall_time DESC, id LIMIT ? OFFSET ?",
                               [*args, q.limit, q.offset])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()], total

    def event(self, event_id: str) -> dict[str, Any] | None:
        cur = self._db.execute(f"SELECT {_ROW} FROM events WHERE id = ?", (event_id,))
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))

    def evidence(self, event_id: str) -> Evidence | None:
        """The peak frame's evidence (what "mark as normal" adds to the memory), if the worker sent one."""
        row = self._db.execute("SELECT evidence FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if row is None or row[0] is None else evidence_from(row[0])

    def set_review(self, event_id: str, review: Review) -> bool:
        """The console's verdict on an event; False if there is no such event."""
        if review not in REVIEW_STATES:
            raise ValueError(f"review: expected one of {', '.join(REVIEW_STATES)}, got {review!r}")
        with self._db:
            cur = self._db.execute("UPDATE events SET review = ?, reviewed_at = ? WHERE id = ?",
                                   (review, time.time(), event_id))
        return cur.rowcount > 0

    def commit(self, events: Iterable[Event], trackers: Mapping[tuple[str, str], dict[str, Any] | None],
               acked: Mapping[str, int], evidence: Mapping[str, Evidence] | None = None) -> None:
        """One transaction: the events as they are now (with the peak frame's evidence of those whose peak
        changed), each camera's state (None: no longer tracked) and each sender's last message taken in.
        Raises EventsDBError; then nothing of it was written."""
        now = time.time()
        try:
            with self._db:  # commits the transaction begun here, or rolls it back on error
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(_UPSERT, [
                    (e.id, e.type, e.camera, e.state, e.start_pts, e.end_pts, e.start_wall_time, e.end_wall_time,
                     e.peak_score, e.frame_count, e.model_version, e.snapshot, e.heatmap, e.clip,
                     json.dumps(dataclasses.asdict(e)), now) for e in events])
                self._db.executemany("UPDATE events SET evidence = ? WHERE id = ?",
                                     [(evidence_bytes(ev), eid) for eid, ev in (evidence or {}).items()])
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

    def prune(self, before: float) -> list[str]:
        """Delete closed events that started before `before` (wall time); returns their media files, for the
        caller to delete (the rows go first: a file left behind is harmless, a row pointing nowhere is not)."""
        return self._delete("start_wall_time < ?", (before,))[1]

    def prune_oldest(self, count: int) -> tuple[int, list[str]]:
        """Delete the `count` oldest closed events, whatever their age (the media disk runs short of space);
        returns how many went and their media files, as `prune`."""
        return self._delete("id IN (SELECT id FROM events WHERE state = 'closed' ORDER BY start_wall_time LIMIT ?)",
                            (count,))

    def _delete(self, where: str, params: tuple[float | int, ...]) -> tuple[int, list[str]]:
        rows = self._db.execute(f"SELECT snapshot, heatmap, clip, record FROM events WHERE state = 'closed' AND "
                                f"{where}", params).fetchall()
        with self._db:
            self._db.execute(f"DELETE FROM events WHERE state = 'closed' AND {where}", params)
        # the console's pictures, and the snapshot sink's (sinks.snapshots) the event's record names
        return len(rows), [path for *files, record in rows
                           for path in [*files, *json.loads(record).get("snapshot_paths", [])] if path]

    def close(self) -> None:
        self._db.close()
