"""Child processes of `serve`: start them, restart the ones that crash, stop them in order.

Every reader, worker and the events process is its own spawned process, so a camera whose decoder
segfaults or hangs takes nothing else down: the watchdog restarts just that child after an
exponentially growing delay (reset once it has run for a while). Children report to the
supervisor with `StatusReporter`, and leave shutdown to it: they ignore SIGINT (a Ctrl-C reaches
the whole process group) and act on the SIGTERM the supervisor sends in its chosen order. A child whose
supervisor is gone without a word (killed -9, or by the OOM killer) stops by itself.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from streamvad.live.health import ServeState
from streamvad.parent_watch import on_parent_exit
from streamvad.transport import FramePusher

log = logging.getLogger(__name__)

_RESERVED = ("camera", "type", "state", "v")  # header fields a status snapshot must not override


class Terminated(BaseException):
    """Raised in a child's main thread on SIGTERM, to unblock a read that has no timeout of its own."""


def setup_child(stop: threading.Event, log_level: int, *, interrupt: bool = False) -> None:
    """Logging and signals of a spawned child: SIGINT ignored, SIGTERM sets `stop` (and raises
    `Terminated` when `interrupt`, for children blocked in a source read)."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per webhook POST drowns the operator's log
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_term(_sig: int, _frame: object) -> None:
        stop.set()
        if interrupt:
            raise Terminated

    signal.signal(signal.SIGTERM, on_term)
    on_parent_exit(_stop_without_parent)


def _stop_without_parent(parent: int, grace_s: float = 10.0) -> None:
    """SIGTERM to this child once its supervisor is gone (parent_watch), and exit if that has not stopped it
    within `grace_s`: a reader or worker closes its camera session and sockets as on any stop."""
    log.error("my supervisor (pid %d) is gone; stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(1)


class StatusReporter:
    """Sends `snapshot()` to the supervisor as a status message every `interval_s`, plus once on close.

    It runs in its own thread with its own socket (ZeroMQ sockets are not thread-safe), so a child
    blocked on a camera still reports. Status is advisory: with no supervisor listening it is dropped.
    """

    def __init__(self, endpoint: str | None, name: str, role: str, snapshot: Callable[[], dict[str, Any]],
                 interval_s: float = 1.0) -> None:
        self.endpoint, self.name, self.role = endpoint, name, role
        self.snapshot = snapshot
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"status-{name}", daemon=True)

    def start(self) -> StatusReporter:
        if self.endpoint:
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.endpoint is not None
        pusher = FramePusher(self.endpoint, hwm=16, policy="drop", linger_ms=500)
        try:
            while True:
                stopping = self._stop.wait(self.interval_s)
                snap = self.snapshot()
                info = {k: v for k, v in snap.items() if k not in _RESERVED}
                pusher.send_status(self.name, str(snap.get("state", "running")), role=self.role, **info)
                if stopping:
                    return
        finally:
            pusher.close()

    def close(self) -> None:
        """Sends a last snapshot (e.g. state "stopped") and stops the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)


@dataclass
class ChildSpec:
    """A child process: `target(*args)` is a module-level function (spawn pickles it by name)."""

    name: str
    role: str  # "reader" | "worker" | "events" | "enrolment"
    target: Callable[..., None]
    args: tuple[Any, ...] = ()
    once: bool = False  # a job (an enrolment), not a service: never restarted, however it ended


@dataclass
class _Child:
    spec: ChildSpec
    process: BaseProcess
    started_at: float
    restarts: int = 0
    failures: int = 0  # consecutive, for the backoff
    restart_at: float | None = None
    finished: bool = False  # a reader whose finite source ended (exit code 0): not restarted
    history: list[int | None] = field(default_factory=list)  # exit codes, for tests and logs


class Supervisor:
    """Owns the child processes. Call `watch()` regularly from one thread (the serve loop)."""

    def __init__(self, state: ServeState, backoff_s: float = 1.0, backoff_max_s: float = 30.0) -> None:
        self.state = state
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self._ctx = mp.get_context("spawn")
        self.children: dict[str, _Child] = {}

    def _spawn(self, spec: ChildSpec) -> BaseProcess:
        proc = self._ctx.Process(target=spec.target, args=spec.args, name=f"streamvad-{spec.name}")
        proc.start()
        return proc

    def start(self, spec: ChildSpec) -> None:
        self.children[spec.name] = _Child(spec, self._spawn(spec), time.monotonic())
        self._publish(self.children[spec.name])
        log.info("started %s (pid %s)", spec.name, self.children[spec.name].process.pid)

    def _publish(self, child: _Child) -> None:
        self.state.set_process(child.spec.name, alive=child.process.is_alive(), pid=child.process.pid,
                               restarts=child.restarts, failures=child.failures)

    def watch(self) -> None:
        """Notice exits, schedule restarts with backoff, and perform the restarts that are due."""
        now = time.monotonic()
        for child in self.children.values():
            if child.finished:
                continue
            proc = child.process
            if proc.is_alive():
                if now - child.started_at > self.backoff_max_s:
                    child.failures = 0  # it has been stable for a while: the next crash restarts quickly
            elif child.restart_at is None:
                self._exited(child, proc.exitcode, now)
            elif now >= child.restart_at:
                child.process, child.started_at, child.restart_at = self._spawn(child.spec), now, None
                child.restarts += 1
                log.info("restarted %s (pid %s, restart %d)", child.spec.name, child.process.pid, child.restarts)
            self._publish(child)

    def _exited(self, child: _Child, code: int | None, now: float) -> None:
        child.history.append(code)
        if code == 0 and child.spec.role == "reader":
            child.finished = True
            log.info("%s: source ended", child.spec.name)
            return
        if child.spec.once:
            child.finished = True
            log.log(logging.INFO if code == 0 else logging.ERROR, "%s ended (exit code %s)", child.spec.name, code)
            return
        delay = min(self.backoff_max_s, self.backoff_s * 2.0 ** child.failures)
        child.failures += 1
        child.restart_at = now + delay
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        log.error("%s %s; restarting in %.1f s", child.spec.name, how, delay)

    def role(self, role: str) -> list[_Child]:
        return [c for c in self.children.values() if c.spec.role == role]

    def exited_before(self, name: str) -> bool:
        """True if the child has exited at least once (e.g. a worker that failed to load its model)."""
        child = self.children[name]
        return bool(child.history) or not child.process.is_alive()

    def all_finished(self, role: str) -> bool:
        children = self.role(role)
        return bool(children) and all(c.finished for c in children)

    def stop(self, role: str, timeout_s: float) -> None:
        """SIGTERM every child of `role`, wait up to `timeout_s`, then SIGKILL what is left."""
        children = [c for c in self.role(role) if c.process.is_alive()]
        for c in self.role(role):
            c.finished = True  # no restarts from here on
        for c in children:
            c.process.terminate()
        deadline = time.monotonic() + timeout_s
        for c in children:
            c.process.join(max(0.0, deadline - time.monotonic()))
            if c.process.is_alive():
                log.warning("%s did not stop within %.0f s; killing it", c.spec.name, timeout_s)
                c.process.kill()
                c.process.join(5.0)
            self._publish(c)
