"""`streamvad serve`: readers -> ZeroMQ -> worker(s) -> events process -> sinks, with /healthz and /metrics.

Process layout (all spawned by the supervisor in this process):
  reader-<camera>  one per camera; connects PUSH to the frame endpoint of the worker that owns the camera
  worker-<i>       binds its frame endpoint, loads only its own cameras' models (streamvad/live/fleet.py),
                   connects PUB to the events process
  events           binds the verdict endpoint (SUB): one event tracker for all workers, so a camera's
                   events stay consistent whichever worker scored them, then snapshot/JSONL/webhooks
This process binds the status endpoint every child reports to, runs the HTTP health thread and
the watchdog, and on SIGINT/SIGTERM stops readers, then workers (they drain), then events (it
flushes open events and closes the sinks, which drain their webhook spool).

Roles (`serve --role`, one per host, container or pod; see docker/README.md and deploy/): the same
supervisor runs only part of the pipeline. `reader` runs the readers (one `--camera`, or all),
`worker` worker `--worker-index` (its own cameras), `events` the events process. Each role process
keeps the watchdog for its own children and serves its own /healthz and /metrics on serve.http_port
about them alone (healthy: reader = a camera online, worker = its worker ready, events = reporting);
its children report to it on a private loopback status socket, so `transport.status` is only used
by `--role all`. Every endpoint is bound by the role that owns it (events: verdicts; worker i: its
frame endpoint) and connected to by the others, so one config file, with host names in the
endpoints, serves every host.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import shutil
import signal
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from streamvad import security
from streamvad.config import CameraConfig, StreamVADConfig
from streamvad.console.api import Site
from streamvad.console.server import ConsoleServer
from streamvad.enrolment import check_enrolment, enrolment_main
from streamvad.errors import ConfigError, StreamVADError
from streamvad.live.events import EventTracker, EventUpdate
from streamvad.live.events_db import EventsDB
from streamvad.live.fleet import bind_endpoint, camera_endpoint, check_models, owned, worker_endpoints
from streamvad.live.health import ServeState
from streamvad.live.media import EventMedia
from streamvad.live.reader import reader_main
from streamvad.live.supervisor import ChildSpec, StatusReporter, Supervisor, setup_child
from streamvad.live.worker import worker_main
from streamvad.messages import EnrolRequest
from streamvad.scoring.engine import ModelInfo
from streamvad.sinks import MqttSink, SinkFanout, WebhookSink, build_sinks
from streamvad.sources.shrink import limit_size
from streamvad.transport import ControlServer, Delivery, FramePuller, Message, VerdictInbox
from streamvad.types import TAMPER_TYPES, Event, Evidence, FrameKey

log = logging.getLogger(__name__)

# anomalous frames kept until their verdict arrives (it follows right after), bounded in count and in bytes
# (frames are shrunk to transport.frame_max_side first, whatever size a sender claims)
_FRAME_STASH = 256
_FRAME_STASH_BYTES = 64 << 20
_BATCH = 256  # deliveries per commit at most
_POLL_MS = 200
_API_WAIT_S = 10.0  # the console waits this long for the main loop to take its request
_PRUNE_EVERY_S = 3600.0  # how often old events are deleted (events.retention_days)
_SPACE_EVERY_S = 60.0  # how often the media disk's free space is checked (events.min_free_mb)
_SPACE_BATCH = 20  # the oldest events deleted at a time until there is room again
_DROP_LOG_EVERY_S = 10.0
_LOCAL_STATUS = "tcp://127.0.0.1:*"  # a role's children report to it here (the port is picked at bind)

RoleName = Literal["all", "reader", "worker", "events"]
ROLES: tuple[RoleName, ...] = ("all", "reader", "worker", "events")


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


class _StatusLog:
    """Turns status reports into operator log lines: camera up/down, reconnects, drops."""

    def __init__(self) -> None:
        self._drop_logged: dict[str, tuple[float, int]] = {}

    def reader(self, new: dict[str, Any], old: dict[str, Any] | None) -> None:
        cam = new["camera"]
        was_online = bool(old and old.get("online"))
        if new.get("online") and not was_online:
            log.info("camera %s online (%s)", cam, new.get("url"))
        elif was_online and not new.get("online"):
            log.warning("camera %s offline: %s", cam, new.get("last_error") or new.get("state"))
        if old and new.get("reconnects", 0) > old.get("reconnects", 0):
            log.info("camera %s reconnected (%d reconnects so far)", cam, new["reconnects"])
        dropped = int(new.get("frames_dropped") or 0)
        when, seen = self._drop_logged.get(cam, (0.0, 0))
        if dropped > seen and time.monotonic() - when >= _DROP_LOG_EVERY_S:
            log.warning("camera %s: %d frames dropped so far (%d new): the worker cannot keep up", cam, dropped,
                        dropped - seen)
            self._drop_logged[cam] = (time.monotonic(), dropped)


@dataclass(frozen=True)
class Role:
    """Which part of the pipeline this process runs (`serve --role`); "all" is the single-host layout."""

    name: RoleName = "all"
    camera: str | None = None  # reader role: only this camera (None: every configured camera)
    worker_index: int = 0  # worker role: which of serve.workers this process is (its cameras and endpoint)

    def runs(self, part: str) -> bool:
        return self.name in ("all", part)


def _check(cfg: StreamVADConfig, role: Role) -> None:
    """Fail in this process, with one line, before spawning anything."""
    security.check(cfg.transport)
    if role.runs("reader") and not cfg.cameras:
        raise ConfigError("cameras: serve needs at least one camera")
    if role.runs("worker"):
        if not cfg.cameras and cfg.model_dir is None:
            raise ConfigError("model_dir: serve needs a fitted model directory (run `streamvad fit`)")
        if not cfg.cameras:
            ModelInfo.load(Path(cfg.model_dir))
        shards = range(cfg.serve.workers) if role.name == "all" else [role.worker_index]
        check_models(cfg, [c for i in shards for c in owned(cfg, i)])


def _cameras(cfg: StreamVADConfig, role: Role) -> list[CameraConfig]:
    if not role.runs("reader"):
        return []
    return list(cfg.cameras) if role.camera is None else [cfg.camera(role.camera)]


def _worker_endpoints(cfg: StreamVADConfig, role: Role,
                      which: Literal["frames", "control"] = "frames") -> dict[int, str]:
    """Worker index -> the frame (or control) endpoint it binds: all of them for `all`, the role's own for `worker`."""
    if not role.runs("worker"):
        return {}
    configured = getattr(cfg.transport, which)
    endpoints = {i: bind_endpoint(configured, ep)
                 for i, ep in enumerate(worker_endpoints(configured, cfg.serve.workers, f"transport.{which}"))}
    if role.name == "all":
        return endpoints
    if role.worker_index not in endpoints:
        raise ConfigError(f"--worker-index: {role.worker_index} is not below serve.workers ({cfg.serve.workers})")
    return {role.worker_index: endpoints[role.worker_index]}


class _RoleState(ServeState):
    """Health of one role's process: only its own children count (the parent's rule needs all of them)."""

    def __init__(self, stale_after_s: float, role: str) -> None:
        super().__init__(stale_after_s)
        self.role = role

    def health(self) -> tuple[bool, dict[str, Any]]:
        _ok, body = super().health()
        problems = {
            "reader": [] if any(c["online"] for c in body["cameras"].values()) else ["no camera online"],
            "worker": [f"{n} {s}" for n, s in body["workers"].items() if s != "ready"],
            "events": self.events_problems(),
        }.get(self.role, [])
        problems += self.unknown_problems()
        body.update(status="unavailable" if problems else "ok", reasons=problems, role=self.role)
        return not problems, body


class _Serve:
    def __init__(self, cfg: StreamVADConfig, role: Role) -> None:
        self.cfg = cfg
        self.role = role
        self.level = logging.getLogger().getEffectiveLevel()
        self.cameras = _cameras(cfg, role)
        self.workers = _worker_endpoints(cfg, role)
        self.state = ServeState(cfg.serve.stale_after_s) if role.name == "all" else _RoleState(
            cfg.serve.stale_after_s, role.name)
        self.sup = Supervisor(self.state, cfg.serve.restart_backoff_s, cfg.serve.restart_backoff_max_s)
        self.stop = threading.Event()
        self.status_log = _StatusLog()
        self.ready: set[str] = set()
        self.child_cfg = cfg  # what children get (`_child_config`), set in `run`
        self._api_requests: queue.Queue[tuple[EnrolRequest, Future[tuple[bool, str]]]] = queue.Queue()

    def _control(self, request: EnrolRequest) -> tuple[bool, str]:
        """A control message: enrol a camera in a child process of its own (phase and progress in /healthz)."""
        name = f"enrol-{request.camera}"
        running = self.sup.children.get(name)
        if running is not None and running.process.is_alive():
            return False, f"{request.camera}: an enrolment is already running (see /healthz)"
        try:
            check_enrolment(self.cfg, request.camera, request.duration_s)
        except StreamVADError as err:
            return False, str(err)
        self.state.expect("enrolment", request.camera, name)
        self.sup.start(ChildSpec(name, "enrolment", enrolment_main,
                                 (self.child_cfg, request.camera, request.duration_s, self.level), once=True))
        log.info("control: enrolling %s for %g s of its stream", request.camera, request.duration_s)
        return True, f"{request.camera}: enrolling {request.duration_s:g} s of its stream (progress in /healthz)"

    def _enrol_from_api(self, request: EnrolRequest) -> tuple[bool, str]:
        """The console's enrol button: handled on the main thread, which owns the supervisor."""
        done: Future[tuple[bool, str]] = Future()
        self._api_requests.put((request, done))
        try:
            return done.result(timeout=_API_WAIT_S)
        except TimeoutError:
            return False, "serve is busy starting or stopping; try again in a moment"

    def _serve_api(self) -> None:
        while not self._api_requests.empty():
            request, done = self._api_requests.get()
            done.set_result(self._control(request))

    def _receive(self, status: FramePuller) -> None:
        msg = status.recv(_POLL_MS)
        if msg is None or msg.type != "status":
            return
        known = self.state.known(msg.header)
        old = self.state.update(msg.header)
        if not known:
            return
        role = msg.header.get("role")
        if role == "reader":
            self.status_log.reader(msg.header, old)
        elif role == "worker" and msg.header.get("state") == "ready":
            self.ready.add(msg.camera)

    def _wait_workers(self, status: FramePuller) -> bool:
        deadline = time.monotonic() + self.cfg.serve.ready_timeout_s
        names = [c.spec.name for c in self.sup.role("worker")]
        while not self.stop.is_set() and not self.ready.issuperset(names):
            self._receive(status)
            failed = [n for n in names if self.sup.exited_before(n)]
            if failed:
                log.error("%s failed to start (see its error above); stopping", ", ".join(failed))
                return False
            if time.monotonic() > deadline:
                log.error("workers not ready after %.0f s; stopping", self.cfg.serve.ready_timeout_s)
                return False
        return not self.stop.is_set()

    def _child_config(self, status_endpoint: str) -> StreamVADConfig:
        """The config this role's children get: a role's children report to this process, not `transport.status`."""
        if self.role.name == "all":
            return self.cfg
        return self.cfg.model_copy(update={"transport": self.cfg.transport.model_copy(
            update={"status": status_endpoint})})

    def run(self) -> int:
        status = FramePuller(self.cfg.transport.status if self.role.name == "all" else _LOCAL_STATUS,
                             hwm=1000, bind=True)
        site = Site(self.cfg, self.state, self._enrol_from_api if self.role.runs("worker") else None) \
            if self.role.runs("events") else None
        health = ConsoleServer(self.state, self.cfg.serve.http_host, self.cfg.serve.http_port, site).start()
        # each worker's cameras are enrolled through its own control socket (fleet.camera_endpoint)
        control = ControlServer(list(_worker_endpoints(self.cfg, self.role, "control").values())) \
            if self.role.runs("worker") else None
        code = 0
        try:
            cfg = self.child_cfg = self._child_config(status.endpoint)
            if self.role.runs("events"):
                self.state.expect("events", "events", "events")
                self.sup.start(ChildSpec("events", "events", events_main, (cfg, self.level)))
            for cam in self.cameras:
                self.state.expect("reader", cam.id, f"reader-{cam.id}")
            for i, endpoint in self.workers.items():
                self.state.expect("worker", f"worker-{i}", f"worker-{i}")
                self.sup.start(ChildSpec(f"worker-{i}", "worker", worker_main, (cfg, i, endpoint, self.level)))
            if self.workers and not self._wait_workers(status):
                code = 0 if self.stop.is_set() else 1
            else:
                for cam in self.cameras:
                    self.sup.start(ChildSpec(f"reader-{cam.id}", "reader", reader_main, (
                        cam, cfg.transport, [camera_endpoint(cfg, cam)], cfg.transport.status,
                        cfg.serve.status_interval_s, self.level)))
                log.info("serving (role %s): %d camera(s), %d worker(s)", self.role.name, len(self.cameras),
                         len(self.workers))
                while not self.stop.is_set() and not self.sup.all_finished("reader"):
                    self._receive(status)
                    if control is not None:
                        control.serve_one(self._control)
                    self._serve_api()
                    self.sup.watch()
                if not self.stop.is_set():
                    log.info("all sources ended; shutting down")
        finally:
            self._shutdown()
            health.close()
            status.close()
            if control is not None:
                control.close()
        return code

    def _shutdown(self) -> None:
        log.info("shutting down: enrolments, readers, then workers (draining), then events (flushing sinks)")
        self.sup.stop("enrolment", timeout_s=10.0)
        self.sup.stop("reader", timeout_s=10.0)
        self.sup.stop("worker", timeout_s=self.cfg.serve.drain_timeout_s + 5.0)
        self.sup.stop("events", timeout_s=15.0)


def serve(cfg: StreamVADConfig, role: Role | None = None) -> int:
    """Run the live pipeline (or one `role` of it) until SIGINT/SIGTERM, or until every finite source of
    its readers has ended; exit code."""
    role = role or Role()
    _check(cfg, role)
    security.configure(cfg.transport)
    runner = _Serve(cfg, role)

    def on_signal(sig: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(sig).name)
        runner.stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return runner.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
