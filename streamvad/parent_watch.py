"""Spawned processes that go when the process that started them goes.

A multiprocessing child outlives a parent killed -9 (or by the OOM killer): a reader would go on holding its
camera's session (many cameras allow one or two), a worker the sockets the next `serve` binds, and an
enrolment's fit and its Chroma writer would run to their end for nobody. multiprocessing hands every spawned
child a sentinel, the end of a pipe its parent holds, that becomes readable when the parent is gone, so one
thread blocked on it notices at once, without polling, and a parent that died before the watch began is seen
too (a `getppid()` poll would take the new parent, init or a subreaper, for the old one).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def on_parent_exit(action: Callable[[int], None]) -> None:
    """Run `action(parent pid)` in a daemon thread once this process's multiprocessing parent is gone; nothing
    in a process that multiprocessing did not start (a CLI, a test)."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        action(parent.pid)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def exit_with_parent() -> None:
    """Exit (code 1) as soon as the parent is gone: for a child whose work only its parent can use (an
    enrolment's fit, a Chroma writer), which has nothing to close first."""
    on_parent_exit(_exit_now)


def _exit_now(parent: int) -> None:
    log.error("my parent (pid %d) is gone; exiting", parent)
    os._exit(1)
