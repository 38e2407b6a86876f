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

import logging
import queue
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from streamvad import security
from streamvad.config import CameraConfig, StreamVADConfig
from streamvad.console.api import Site
from streamvad.console.server import ConsoleServer
from streamvad.enrolment import check_enrolment, enrolment_main
from streamvad.errors import ConfigError, StreamVADError
from streamvad.live.events_process import events_main
from streamvad.live.fleet import bind_endpoint, camera_endpoint, check_models, owned, worker_endpoints
from streamvad.live.health import ServeState
from streamvad.live.reader import reader_main
from streamvad.live.supervisor import ChildSpec, Supervisor
from streamvad.live.worker import worker_main
from streamvad.messages import EnrolRequest
from streamvad.scoring.engine import ModelInfo
from streamvad.transport import ControlServer, FramePuller

log = logging.getLogger(__name__)

_STATUS_POLL_MS = 200
_API_WAIT_S = 10.0  # the console waits this long for the main loop to take its request
_DROP_LOG_EVERY_S = 10.0
_LOCAL_STATUS = "tcp://127.0.0.1:*"  # a role's children report to it here (the port is picked at bind)

RoleName = Literal["all", "reader", "worker", "events"]
ROLES: tuple[RoleName, ...] = ("all", "reader", "worker", "events")


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
        msg = status.recv(_STATUS_POLL_MS)
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
