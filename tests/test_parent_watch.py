"""parent_watch with real processes: a spawned child that asked to go with its parent exits when that parent is
killed -9, even one whose parent was gone before the child got to its watch; a child that did not ask runs on."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from streamvad.parent_watch import exit_with_parent
from tests.procs import alive


def _sleeper(watch: bool) -> None:
    if watch:
        exit_with_parent()
    time.sleep(120)


def _parent(pids: str, leave_at_once: bool) -> None:
    """Starts a watching and a plain child, writes their pids to `pids`, then waits to be killed (or leaves)."""
    ctx = mp.get_context("spawn")
    children = [ctx.Process(target=_sleeper, args=(watch,)) for watch in (True, False)]
    for child in children:
        child.start()
    Path(pids).write_text(" ".join(str(child.pid) for child in children))
    if leave_at_once:  # before the children have even imported this module
        os._exit(0)
    time.sleep(120)


@pytest.mark.parametrize("leave_at_once", [False, True], ids=["killed-9", "gone-before-the-watch"])
def test_a_child_that_follows_its_parent_exits_when_the_parent_is_gone(tmp_path: Path, leave_at_once: bool) -> None:
    pids = tmp_path / "pids"
    parent = mp.get_context("spawn").Process(target=_parent, args=(str(pids), leave_at_once))
    parent.start()
    deadline = time.monotonic() + 60  # hang guards: spawning imports the package, seconds on a busy box
    while not pids.is_file() or len(pids.read_text().split()) < 2:
        assert time.monotonic() < deadline and (parent.is_alive() or pids.is_file())
        time.sleep(0.1)
    watching, plain = map(int, pids.read_text().split())
    try:
        if not leave_at_once:
            time.sleep(1)  # both children are asleep by now, the watch running
            os.kill(parent.pid, signal.SIGKILL)
        parent.join(10)
        while alive(watching) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(watching)
        assert alive(plain)  # the watch, not the parent's death, stopped the other one
    finally:
        for pid in (watching, plain):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
