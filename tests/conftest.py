"""Fixtures shared by several test modules."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models run several times faster single-threaded on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _own_runtime_dir() -> Iterator[None]:
    """Each test process's own runtime directory, for what module-scoped fixtures start (the console's `serve`),
    which runs before the per-test one below: the default ipc:// sockets never land in /tmp/streamvad-<uid>,
    where a serve outside the tests, or another test run, would meet them."""
    with tempfile.TemporaryDirectory(prefix="sv-") as runtime, pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_RUNTIME_DIR", runtime)
        yield


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test, and every process it starts, runs in its own folder: relative defaults such as
    `runs/events.db` and `runs/spool` then never carry state from one test to the next, or into the checkout.
    Its own runtime directory too, where the default ipc:// sockets live: two tests' `serve`s running at once
    on two test processes would otherwise both bind /tmp/streamvad-<uid>/control. (A short path: a socket's
    path must fit in 107 bytes.)"""
    monkeypatch.chdir(tmp_path)
    with tempfile.TemporaryDirectory(prefix="sv-") as runtime:
        monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
        yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, longest hang guard first. `make test` hands each test process an equal, contiguous share
    of this order (the first share, with every slow test, to the first process), and a process whose queue runs dry
    takes the back half of another's (xdist's `worksteal`). So the longest test, the demo, starts at once, where
    alphabetically it could start late and run on alone at the end."""

    def order(item: pytest.Item) -> tuple[bool, float]:
        guard = item.get_closest_marker("timeout")
        seconds = (guard.args[0] if guard.args else guard.kwargs.get("timeout", 0)) if guard else 0
        return item.get_closest_marker("slow") is None, -float(seconds)

    items.sort(key=order)
