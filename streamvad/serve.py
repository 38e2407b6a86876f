"""`streamvad serve`: readers -> ZeroMQ -> worker(s) -> events process -> sinks, with /healthz and /metrics.

Process layout (all spawned by the supervisor in this process):
  reader-<camera>  one per camera; connects PUSH to every worker's frame endpoint
  worker-<i>       binds its frame endpoint, connects PUB to the events process
  events           binds the verdict endpoint (SUB): one event tracker for all workers, so a camera's
                   events stay consistent however its frames were spread, then snapshot/JSONL/webhooks
This process binds the status endpoint every child reports to, runs the HTTP health thread and
the watchdog, and on SIGINT/SIGTERM stops readers, then workers (they drain), then events (it
flushes open events and closes the sinks, which drain their webhook spool).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from streamvad.config import StreamVADConfig
from streamvad.engine import ModelInfo
from streamvad.errors import ConfigError
from streamvad.events import EventTracker, EventUpdate
from streamvad.health import HealthServer, ServeState
from streamvad.reader import reader_main
from streamvad.sinks import SinkFanout, WebhookSink, build_sinks
from streamvad.supervisor import ChildSpec, StatusReporter, Supervisor, setup_child
from streamvad.transport import FramePuller, Message, VerdictSubscriber
from streamvad.types import FrameKey
from streamvad.worker import worker_endpoints, worker_main

log = logging.getLogger(__name__)

_FRAME_STASH = 256  # anomalous frames kept until their verdict arrives (it follows right after)
_POLL_MS = 200
_DROP_LOG_EVERY_S = 10.0


class EventsProcess:
    """Verdicts from every worker -> EventTracker -> SinkFanout (snapshots before webhooks)."""

    def __init__(self, cfg: StreamVADConfig) -> None:
        self.cfg = cfg
        self.tracker = EventTracker(cfg.events)
        self.sinks = SinkFanout(build_sinks(cfg.sinks))
        self.verdicts = 0
        self.events: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._frames: OrderedDict[FrameKey, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            hooks = {s.cfg.url: s.stats() for s in self.sinks.sinks if isinstance(s, WebhookSink)}
            return {"state": "running", "verdicts": self.verdicts, "late": sum(self.tracker.late.values()),
                    "events": {c: dict(k) for c, k in self.events.items()}, "webhooks": hooks,
                    "sink_errors": self.sinks.errors}

    def handle(self, msg: Message) -> None:
        if msg.type == "frame" and msg.frame is not None:
            self._frames[msg.frame.key] = msg.frame.image
            while len(self._frames) > _FRAME_STASH:
                self._frames.popitem(last=False)
        elif msg.type == "verdict" and msg.verdict is not None:
            image = self._frames.pop(msg.verdict.key, None)
            wall = msg.header.get("wall_time") or time.time()
            self._emit(self.tracker.update(msg.verdict, wall, image))
            with self._lock:
                self.verdicts += 1
        elif msg.type == "eos":
            self._emit(self.tracker.flush(msg.camera))

    def tick(self) -> None:
        """Closes events of cameras that went silent (a reader that died mid-event)."""
        self._emit(self.tracker.expire(time.time()))

    def _emit(self, updates: list[EventUpdate]) -> None:
        for update in updates:
            with self._lock:
                self.events[update.event.camera][update.kind] += 1
            self.sinks.handle(update)

    def run(self, stop: threading.Event) -> None:
        sub = VerdictSubscriber(self.cfg.transport.verdicts, bind=True)
        log.info("events: receiving verdicts on %s", sub.endpoint)
        try:
            while not stop.is_set():
                msg = sub.recv(_POLL_MS)
                if msg is not None:
                    self.handle(msg)
                self.tick()
            while (msg := sub.recv(_POLL_MS)) is not None:  # what the stopped workers sent last
                self.handle(msg)
            self._emit(self.tracker.flush())
        finally:
            sub.close()
            self.sinks.close()


def events_main(cfg: StreamVADConfig, log_level: int) -> None:
    stop = threading.Event()
    setup_child(stop, log_level)
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


def _check(cfg: StreamVADConfig) -> None:
    """Fail in this process, with one line, before spawning anything."""
    if not cfg.cameras:
        raise ConfigError("cameras: serve needs at least one camera")
    if cfg.model_dir is None:
        raise ConfigError("model_dir: serve needs a fitted model directory (run `streamvad fit`)")
    ModelInfo.load(Path(cfg.model_dir))


class _Serve:
    def __init__(self, cfg: StreamVADConfig) -> None:
        self.cfg = cfg
        self.level = logging.getLogger().getEffectiveLevel()
        self.state = ServeState(cfg.serve.stale_after_s)
        self.sup = Supervisor(self.state, cfg.serve.restart_backoff_s, cfg.serve.restart_backoff_max_s)
        self.endpoints = worker_endpoints(cfg.transport.frames, cfg.serve.workers)
        self.stop = threading.Event()
        self.status_log = _StatusLog()
        self.ready: set[str] = set()

    def _receive(self, status: FramePuller) -> None:
        msg = status.recv(_POLL_MS)
        if msg is None or msg.type != "status":
            return
        old = self.state.update(msg.header)
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

    def run(self) -> int:
        status = FramePuller(self.cfg.transport.status, hwm=1000, bind=True)
        health = HealthServer(self.state, self.cfg.serve.http_host, self.cfg.serve.http_port).start()
        code = 0
        try:
            self.sup.start(ChildSpec("events", "events", events_main, (self.cfg, self.level)))
            for i, endpoint in enumerate(self.endpoints):
                self.sup.start(ChildSpec(f"worker-{i}", "worker", worker_main, (self.cfg, i, endpoint, self.level)))
            if not self._wait_workers(status):
                code = 0 if self.stop.is_set() else 1
            else:
                for cam in self.cfg.cameras:
                    self.sup.start(ChildSpec(f"reader-{cam.id}", "reader", reader_main, (
                        cam, self.cfg.transport, self.endpoints, self.cfg.transport.status,
                        self.cfg.serve.status_interval_s, self.level)))
                log.info("serving %d camera(s) with %d worker(s)", len(self.cfg.cameras), len(self.endpoints))
                while not self.stop.is_set() and not self.sup.all_finished("reader"):
                    self._receive(status)
                    self.sup.watch()
                if not self.stop.is_set():
                    log.info("all sources ended; shutting down")
        finally:
            self._shutdown()
            health.close()
            status.close()
        return code

    def _shutdown(self) -> None:
        log.info("shutting down: readers, then workers (draining), then events (flushing sinks)")
        self.sup.stop("reader", timeout_s=10.0)
        self.sup.stop("worker", timeout_s=self.cfg.serve.drain_timeout_s + 5.0)
        self.sup.stop("events", timeout_s=15.0)


def serve(cfg: StreamVADConfig) -> int:
    """Run the live pipeline until SIGINT/SIGTERM (or until every finite source has ended); exit code."""
    _check(cfg)
    runner = _Serve(cfg)

    def on_signal(sig: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(sig).name)
        runner.stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return runner.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
