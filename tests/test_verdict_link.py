"""The acknowledged verdict link and the events database: real ZeroMQ sockets on loopback, a real SQLite file.

A worker keeps every verdict until the events process has committed it; an events process that dies (here:
dropped without its last commit, as kill -9 leaves it) loses nothing, counts nothing twice, and continues
the open event under its id. The real-process kill -9 test is in test_serve.py.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from streamvad.bench.throughput import free_tcp_endpoint
from streamvad.config import EventsConfig, SinksConfig, StreamVADConfig, TransportConfig
from streamvad.errors import StreamVADError
from streamvad.live.events_db import EventsDB
from streamvad.live.events_process import EventsProcess
from streamvad.transport import Delivery, VerdictInbox, VerdictLink, WireError, encode_eos, encode_verdict
from streamvad.types import FrameKey, Verdict


def verdict(index: int, anomalous: bool, camera: str = "cam") -> Verdict:
    return Verdict(FrameKey(camera, index, index * 0.25), 5.0 if anomalous else 1.0, 5.0 if anomalous else 1.0,
                   anomalous, 0.5, np.full(6, 0.9 if anomalous else 0.1, np.float32), (2, 3), 6 * anomalous, 3.0,
                   "test")


def wait_for(what: str, cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def receive(inbox: VerdictInbox, n: int, link: VerdictLink | None = None) -> list[Delivery]:
    """`n` deliveries, servicing `link` (acks, resends) meanwhile as a worker's loop does."""
    out: list[Delivery] = []
    deadline = time.monotonic() + 20
    while len(out) < n:
        assert time.monotonic() < deadline, f"got {len(out)} of {n} deliveries"
        if link is not None:
            link.service()
        delivery = inbox.recv(20)
        if delivery is not None:
            out.append(delivery)
    return out


def test_unacknowledged_verdicts_are_resent_in_order_until_acknowledged() -> None:
    endpoint = free_tcp_endpoint()
    inbox = VerdictInbox(endpoint)
    link = VerdictLink(endpoint, resend_after_s=0.3)
    try:
        for i in range(3):
            link.send(encode_verdict(verdict(i, False)))
        first = receive(inbox, 3, link)
        assert [d.link.seq for d in first] == [1, 2, 3] and {d.link.sender for d in first} == {link.sender}
        assert [d.messages[0].verdict.key.index for d in first if d.messages[0].verdict] == [0, 1, 2]
        again = receive(inbox, 3, link)  # nothing acknowledged: all of it again, in order
        assert [d.link.seq for d in again] == [1, 2, 3] and link.resent >= 3 and link.unacked == 3
        inbox.ack(first[0].peer, link.sender, 2)
        wait_for("the ack", lambda: (link.service(), link.unacked)[1] == 1)
        assert [d.link.seq for d in receive(inbox, 1, link)] == [3]  # only the unacknowledged one comes back
        inbox.ack(first[0].peer, link.sender, 3)
        assert link.flush(10.0) and link.unacked == 0
    finally:
        link.close()
        inbox.close()


def test_a_full_buffer_drops_the_oldest_and_tells_the_receiver_they_are_gone() -> None:
    endpoint = free_tcp_endpoint()
    link = VerdictLink(endpoint, capacity=3, resend_after_s=0.2)  # no events process yet: nothing goes out
    try:
        for i in range(5):
            link.send(encode_verdict(verdict(i, False)))
        assert link.unacked == 3 and link.lost == 2
        inbox = VerdictInbox(endpoint)
        try:
            got = receive(inbox, 3, link)
            assert [(d.link.seq, d.link.oldest) for d in got] == [(3, 3), (4, 3), (5, 3)]
        finally:
            inbox.close()
    finally:
        link.close()


def test_the_buffer_is_bounded_in_bytes_too() -> None:
    """Verdicts that carry frames are large: the link drops its oldest once their bytes pass `max_bytes`, and
    keeps the newest even when it alone is larger."""
    link = VerdictLink(free_tcp_endpoint(), capacity=100, max_bytes=1000, resend_after_s=0.2)
    try:
        for i in range(6):
            link.send([*encode_verdict(verdict(i, False)), b"x" * 300])
        assert link.bytes <= 1000 and link.unacked + link.lost == 6 and link.lost > 0
        assert link.bytes == sum(e.size for e in link._unacked.values())
        link.send([b"y" * 5000])
        assert (link.unacked, link.bytes) == (1, 5000)
    finally:
        link.close()


def _config(tmp_path: Path, endpoint: str) -> StreamVADConfig:
    return StreamVADConfig(
        transport=TransportConfig(verdicts=endpoint, insecure=True),
        events=EventsConfig(open_n=2, open_m=4, close_quiet_s=1.0, cooldown_s=30.0, database=tmp_path / "events.db"),
        sinks=SinksConfig(jsonl=tmp_path / "events.jsonl", spool=tmp_path / "spool"))


def _serve_events(proc: EventsProcess, inbox: VerdictInbox, link: VerdictLink, until: Callable[[], bool],
                  commit: bool = True) -> None:
    """The events process's loop (take, tick, commit and ack), and the worker's link servicing, until `until`."""
    deadline = time.monotonic() + 30
    while not until():
        assert time.monotonic() < deadline, "events loop did not get there"
        link.service()
        proc._take(inbox, 20)
        if commit:
            proc.commit(inbox)


def _bound_again(endpoint: str) -> VerdictInbox:
    """A new inbox on the endpoint of one just closed. ZeroMQ closes a socket in its I/O thread, after `close`
    returns, so the port may still be taken for a moment (a killed process's is free at once)."""
    deadline = time.monotonic() + 30  # a hang guard
    while True:
        try:
            return VerdictInbox(endpoint)
        except WireError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_an_events_process_killed_mid_incident_loses_nothing_and_reopens_nothing(tmp_path: Path) -> None:
    """40 verdicts: normal, 12 anomalous (the incident), normal. The first events process commits up to the
    middle of the incident, takes in a few more without committing, and dies; the second resumes."""
    endpoint = free_tcp_endpoint()
    cfg = _config(tmp_path, endpoint)
    stream = [verdict(i, 8 <= i < 20) for i in range(40)]
    link = VerdictLink(endpoint, resend_after_s=0.3)
    first_inbox = VerdictInbox(endpoint)
    first = EventsProcess(cfg)
    try:
        for v in stream[:14]:
            link.send(encode_verdict(v, 1000.0 + v.key.pts))
        _serve_events(first, first_inbox, link, lambda: link.unacked == 0)
        assert first.tracker.current_event("cam") is not None  # opened and committed
        opened = first.tracker.current_event("cam")
        for v in stream[14:18]:
            link.send(encode_verdict(v, 1000.0 + v.key.pts))
        _serve_events(first, first_inbox, link, lambda: first.verdicts == 18, commit=False)  # taken in, not committed
    finally:
        first_inbox.close()  # killed: no commit, no ack, no flush
        first.sinks.close()
        first.db.close()
    assert link.unacked == 4

    second_inbox = _bound_again(endpoint)
    second = EventsProcess(cfg)
    try:
        resumed = second.tracker.current_event("cam")
        assert resumed is not None and opened is not None and resumed.id == opened.id
        for v in stream[18:]:
            link.send(encode_verdict(v, 1000.0 + v.key.pts))
        link.send(encode_eos("cam", stream[-1].key, 40))
        _serve_events(second, second_inbox, link, lambda: link.unacked == 0)
        assert second.verdicts == 4 + 22  # the 4 uncommitted ones, resent, and the 22 new ones: nothing twice
        assert second.tracker.current_event("cam") is None
    finally:
        second_inbox.close()
        second.sinks.close()
        link.close()

    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert {line["id"] for line in lines} == {opened.id}
    assert [line["kind"] for line in lines].count("opened") == 1 and lines[-1]["kind"] == "closed"
    [event] = second.db.events()
    assert (event.id, event.state, event.start_pts, event.end_pts, event.frame_count) == (
        opened.id, "closed", 2.0, 4.75, 12)
    second.db.close()


def test_repeats_of_committed_verdicts_are_acknowledged_and_not_counted(tmp_path: Path) -> None:
    endpoint = free_tcp_endpoint()
    cfg = _config(tmp_path, endpoint)
    inbox = VerdictInbox(endpoint)
    proc = EventsProcess(cfg)
    link = VerdictLink(endpoint, resend_after_s=60.0)
    try:
        for i in range(3):
            link.send(encode_verdict(verdict(i, False)))
        got = receive(inbox, 3, link)  # the link sends once connected
        for d in got:
            proc.accept(d)
        proc.commit()  # committed, but the acks never left (the process died right after)
        for d in got:
            proc.accept(d)  # the worker's resends
        proc.commit(inbox)
        assert proc.verdicts == 3 and proc.repeats == 3
        assert link.flush(10.0)
    finally:
        link.close()
        inbox.close()
        proc.sinks.close()
        proc.db.close()


def test_the_events_database_is_sqlite_in_wal_mode_and_refuses_a_newer_schema_or_a_non_database(
        tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    EventsDB(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StreamVADError, match=r"events\.db: events database schema v99 is newer"):
        EventsDB(path)
    (tmp_path / "junk.db").write_bytes(b"not a database at all, " * 100)
    with pytest.raises(StreamVADError, match=r"junk\.db: cannot open the events database"):
        EventsDB(tmp_path / "junk.db")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StreamVADError, match=r"file/events\.db: cannot open the events database"):
        EventsDB(tmp_path / "file" / "events.db")  # a path under a regular file: unwritable, even as root
