"""The events process of `serve`: verdicts from every worker -> event trackers -> sinks, committed to the events
database before they are acknowledged.

It never embeds a frame, so it imports neither the backbones nor the normality model: spawned, it starts in under
a second of CPU with 95 MB resident, where importing it from `live/serve.py` (which references the worker's code)
loaded torch, ChromaDB and scikit-learn into it too (4-5 s, 395 MB). The kill -9 test of tests/test_serve.py checks
that only the worker maps libtorch.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from streamvad import security
from streamvad.config import StreamVADConfig
from streamvad.live.events import EventTracker, EventUpdate
from streamvad.live.events_db import EventsDB
from streamvad.live.media import EventMedia
from streamvad.live.supervisor import StatusReporter, setup_child
from streamvad.sinks import MqttSink, SinkFanout, WebhookSink, build_sinks
from streamvad.sources.shrink import limit_size
from streamvad.transport import Delivery, Message, VerdictInbox
from streamvad.types import TAMPER_TYPES, Event, Evidence, FrameKey

log = logging.getLogger(__name__)

# anomalous frames kept until their verdict arrives (it follows right after), bounded in count and in bytes
# (frames are shrunk to transport.frame_max_side first, whatever size a sender claims)
_FRAME_STASH = 256
_FRAME_STASH_BYTES = 64 << 20
_BATCH = 256  # deliveries per commit at most
_POLL_MS = 200
_PRUNE_EVERY_S = 3600.0  # how often old events are deleted (events.retention_days)
_SPACE_EVERY_S = 60.0  # how often the media disk's free space is checked (events.min_free_mb)
_SPACE_BATCH = 20  # the oldest events deleted at a time until there is room again


class EventsProcess:
    """Verdicts from every worker -> EventTracker -> SinkFanout (snapshots before webhooks), committed to the
    events database before they are acknowledged (see `VerdictLink`).

    Per batch of deliveries: sinks first, then one commit of the events, tracking state and link progress,
    then the acks. A crash before the commit means the workers resend the batch and it is processed again
    from the last committed state, giving the same events under the same ids, so a receiver sees repeats of
    a delivery key at most (at least once); a crash after it means the resends are recognised and dropped.
    """

    def __init__(self, cfg: StreamVADConfig) -> None:
        self.cfg = cfg
        self.tracker = EventTracker(cfg.events)
        # camera faults (verdict.tamper) are events of their own type, with their own hysteresis per camera
        self.faults = {kind: EventTracker(cfg.events, kind) for kind in TAMPER_TYPES}
        self.db = EventsDB(cfg.events.database)
        self.media = EventMedia(cfg.events)  # first: the sinks after it name its pictures
        self.sinks = SinkFanout([self.media, *build_sinks(cfg.sinks)])
        self.verdicts = 0
        self.repeats = 0  # resent messages already committed
        self.lost = 0  # messages a worker dropped from its full buffer before they were acknowledged
        self.events: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._frames: OrderedDict[FrameKey, tuple[np.ndarray, bytes | None]] = OrderedDict()  # and its JPEG
        self._stash_bytes = 0
        self._lock = threading.Lock()
        self._touched: set[str] = set()  # cameras whose state changed since the last commit
        self._changed: dict[str, Event] = {}  # events that changed since then, by id
        self._evidence: dict[str, Evidence] = {}  # peak evidence of those whose peak changed
        self._pruned_at = float("-inf")
        self._space_at = float("-inf")
        self.short_of_space = False  # under events.min_free_mb with no closed event left to delete
        self._acks: dict[str, tuple[bytes, int]] = {}  # sender -> (its peer, its last message taken in)
        self._restore()

    def _restore(self) -> None:
        now = time.time()
        trackers = {t.event_type: t for t in self._trackers()}
        for (kind, camera), state in self.db.trackers().items():
            if kind in trackers:
                trackers[kind].restore(camera, state, now)
        opened = sum(t.current_event(c) is not None for t in trackers.values() for c in t.cameras())
        if opened:
            log.info("events: resumed %d open event(s) from %s", opened, self.db.path)

    def _drop_frame(self, key: FrameKey) -> tuple[np.ndarray, bytes | None] | None:
        stashed = self._frames.pop(key, None)
        if stashed is not None:
            self._stash_bytes -= stashed[0].nbytes + len(stashed[1] or b"")
        return stashed

    def stats(self) -> dict[str, Any]:
        with self._lock:
            hooks = {s.cfg.url: s.stats() for s in self.sinks.sinks if isinstance(s, WebhookSink)}
            mqtt = next((s.stats() for s in self.sinks.sinks if isinstance(s, MqttSink)), None)
            return {"state": "running", "verdicts": self.verdicts, "late": dict(self.tracker.late),
                    "restarts": dict(self.tracker.restarts), "suppressed": dict(self.tracker.suppressed),
                    "events": {c: dict(k) for c, k in self.events.items()}, "webhooks": hooks, "mqtt": mqtt,
                    "sink_errors": self.sinks.errors, "failing_sinks": self.sinks.failing(),
                    "repeats": self.repeats, "lost": self.lost, "auth_denied": security.denied(),
                    "short_of_space": self.short_of_space}

    def accept(self, delivery: Delivery) -> None:
        """Take a worker's delivery in order: a repeat of one already taken is only acknowledged again, one
        past the next expected waits for the resend of what is missing (go back N)."""
        link = delivery.link
        taken = self._acks[link.sender][1] if link.sender in self._acks else self.db.acked(link.sender)
        start = max(taken + 1, link.oldest)
        if link.seq < start:
            self.repeats += 1
            self._acks[link.sender] = (delivery.peer, taken)
            return
        if link.seq > start:
            return
        if start > taken + 1:
            self.lost += start - taken - 1
            log.error("events: %d verdict(s) of sender %s never arrived (dropped from its full buffer)",
                      start - taken - 1, link.sender)
        for msg in delivery.messages:
            self.handle(msg)
        self._acks[link.sender] = (delivery.peer, link.seq)

    def handle(self, msg: Message) -> None:
        if msg.type == "frame" and msg.frame is not None:
            image = limit_size(msg.frame, self.cfg.transport.frame_max_side).image
            jpeg = msg.jpeg if image is msg.frame.image else None  # shrunk here: the sent JPEG is not this picture
            if msg.header.get("preview"):  # a learning camera's live tile: no verdict follows to take it
                self._pictures(msg.camera, lambda: self.media.preview(msg.camera, image, jpeg))
                return
            self._drop_frame(msg.frame.key)
            self._frames[msg.frame.key] = (image, jpeg)
            self._stash_bytes += image.nbytes + len(jpeg or b"")
            while len(self._frames) > _FRAME_STASH or self._stash_bytes > _FRAME_STASH_BYTES:
                self._drop_frame(next(iter(self._frames)))
        elif msg.type == "verdict" and msg.verdict is not None:
            stashed = self._drop_frame(msg.verdict.key)
            image = None if stashed is None else stashed[0]
            now = time.time()
            wall = msg.header.get("wall_time") or now
            verdict = msg.verdict
            if stashed is not None:
                self._pictures(verdict.key.camera, lambda: self.media.observe(verdict, *stashed))
            for kind, tracker in self.faults.items():
                self._emit(tracker.update(dataclasses.replace(verdict, anomalous=verdict.tamper == kind), wall, image,
                                          arrived=now))
            if verdict.tamper is not None:  # a covered or moved camera is a fault, not a scene anomaly
                verdict = dataclasses.replace(verdict, anomalous=False)
            self._emit(self.tracker.update(verdict, wall, image, arrived=now))
            self._touched.add(msg.camera)
            with self._lock:
                self.verdicts += 1
        elif msg.type == "eos":
            log.info("%s: end of stream after %s frames", msg.camera, msg.header.get("frames", "?"))
            for tracker in self._trackers():
                self._emit(tracker.end_of_stream(msg.camera, msg.last_key, time.time()))
            self.media.end_of_stream(msg.camera)
            self._touched.add(msg.camera)

    def _pictures(self, camera: str, write: Callable[[], None]) -> None:
        """The console's live tiles and event clips; a full disk costs pictures, never verdicts."""
        try:
            write()
        except OSError as err:
            self.sinks.errors += 1
            log.error("events: cannot write the pictures of %s under %s: %s", camera, self.cfg.events.media, err)

    def tick(self) -> None:
        """Closes events of cameras that went silent (a reader that died mid-event), ends their clips, once an
        hour deletes events and pictures older than `events.retention_days`, and once a minute makes room on the
        media disk (`make_room`)."""
        for tracker in self._trackers():
            self._emit(tracker.expire(time.time()))
        self.media.tick(self.cfg.events.silence_s)
        days = self.cfg.events.retention_days
        if days is not None and time.monotonic() - self._pruned_at >= _PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            files = self.db.prune(time.time() - days * 86400.0)
            self.media.delete(files)
            if files:
                log.info("events: deleted the events older than %g days and %d picture(s)", days, len(files))
        if time.monotonic() - self._space_at >= _SPACE_EVERY_S:
            self._space_at = time.monotonic()
            self.make_room()

    def make_room(self) -> None:
        """Below `events.min_free_mb` free on the media disk, delete the oldest closed events and their media
        until there is room again. A full disk would stop the pictures and clips of new events being written,
        and the newest events are the ones an operator has yet to review; retention by age alone cannot know
        how fast a site's clips fill its disk."""
        floor = self.cfg.events.min_free_mb
        if floor is None:
            return
        root = self.media.layout.root
        root.mkdir(parents=True, exist_ok=True)
        deleted, files = 0, 0
        while (free := shutil.disk_usage(root).free / 2**20) < floor:
            count, paths = self.db.prune_oldest(_SPACE_BATCH)
            if count == 0:
                break
            self.media.delete(paths)
            deleted, files = deleted + count, files + len(paths)
        if deleted:
            log.warning("events: %.0f MB free under %s (events.min_free_mb %g): deleted the %d oldest event(s) and "
                        "%d picture(s)", free, root, floor, deleted, files)
        if free < floor and not self.short_of_space:
            log.error("events: %.0f MB free under %s, below events.min_free_mb (%g), and no closed event is left to "
                      "delete: free space on that disk", free, root, floor)
        self.short_of_space = free < floor

    def _trackers(self) -> list[EventTracker]:
        return [self.tracker, *self.faults.values()]

    def _emit(self, updates: list[EventUpdate]) -> None:
        for update in updates:
            with self._lock:
                kind = update.kind if update.event.type == "anomaly" else f"{update.event.type}_{update.kind}"
                self.events[update.event.camera][kind] += 1
            self._touched.add(update.event.camera)
            self._changed[update.event.id] = update.event
            if update.peak_evidence is not None and update.kind != "closed":
                self._evidence[update.event.id] = update.peak_evidence
            self.sinks.handle(update)

    def commit(self, inbox: VerdictInbox | None = None) -> None:
        """Commit what changed since the last commit, then acknowledge what it covers. A failed commit is
        raised (the process exits and restarts from the last commit; the workers resend the rest)."""
        if not (self._touched or self._changed or self._acks):
            return
        states = {(t.event_type, c): t.state(c) for t in self._trackers() for c in self._touched}
        self.db.commit(self._changed.values(), states, {s: seq for s, (_peer, seq) in self._acks.items()},
                       self._evidence)
        if inbox is not None:
            for sender, (peer, seq) in self._acks.items():
                inbox.ack(peer, sender, seq)
        self._touched.clear()
        self._changed.clear()
        self._evidence.clear()
        self._acks.clear()

    def _take(self, inbox: VerdictInbox, timeout_ms: int) -> None:
        """Deliveries for one commit: what arrives within `timeout_ms`, and what is queued after it."""
        delivery = inbox.recv(timeout_ms)
        for _ in range(_BATCH):
            if delivery is None:
                return
            self.accept(delivery)
            delivery = inbox.recv(0)

    def run(self, stop: threading.Event) -> None:
        inbox = VerdictInbox(self.cfg.transport.verdicts, bind=True)
        log.info("events: receiving verdicts on %s, database %s", inbox.endpoint, self.db.path)
        try:
            while not stop.is_set():
                self._take(inbox, _POLL_MS)
                self.tick()
                self.commit(inbox)
            self._take(inbox, _POLL_MS)  # what the stopped workers sent last
            for tracker in self._trackers():
                self._emit(tracker.flush())
            self.commit(inbox)
        finally:
            inbox.close()
            self.sinks.close()
            self.db.close()


def events_main(cfg: StreamVADConfig, log_level: int) -> None:
    stop = threading.Event()
    setup_child(stop, log_level)
    security.configure(cfg.transport)
    proc = EventsProcess(cfg)
    reporter = StatusReporter(cfg.transport.status, "events", "events", proc.stats,
                              cfg.serve.status_interval_s).start()
    try:
        proc.run(stop)
    finally:
        reporter.close()
