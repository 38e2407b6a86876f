"""A camera's versioned model store: `<store>/<version>/` model directories and a `current` pointer.

A camera's `model` (or `model_dir`) may name a store instead of one model directory. Enrolment writes each
new fit as the next version (`v0001`, `v0002`, ...) with `version.json` beside its model (what it was fitted
on, when, its thresholds and hold-out), and then points `current` at it. `current` is a symlink swapped
with one rename, so a worker that reads it sees the old version or the new one, never a half-switched
store; a running worker notices the change and swaps the camera's model between batches (live/fleet.py).
A store with no `current` is a camera still learning. Every enrolment and every "mark as normal" adds a whole
model, so a store keeps its newest versions only (`store.keep_versions`, `prune`). Whatever reads `current` and
moves it (an enrolment, a mark, a reindex, an activation or rollback) does so as the store's one writer
(`writing`), from whichever process.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamvad.errors import ConfigError, InputError, StreamVADError
from streamvad.layout import NORMALITY_DIR
from streamvad.normality import chroma_store
from streamvad.normality.manifest import read_manifest
from streamvad.scoring.engine import MODEL_FILE

log = logging.getLogger(__name__)

CURRENT = "current"
VERSION_FILE = "version.json"
LOCK = ".lock"
_VERSION = re.compile(r"^v(\d{4,})$")


def version_name(model_dir: Path) -> str | None:
    """The version a model directory is in its store (None: an unversioned model directory)."""
    return model_dir.name if _VERSION.match(model_dir.name) else None


@dataclass(frozen=True)
class Version:
    name: str
    path: Path
    record: dict[str, Any]  # version.json: what it was fitted on (empty for a version written by hand)

    @property
    def created_at(self) -> float | None:
        value = self.record.get("created_at")
        return float(value) if isinstance(value, int | float) else None


class ModelStore:
    """The versions of one camera's model under `root`, and which one is current."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """The store's one writer, until the block ends. A writer reads `current`, builds on it and moves it: two
        at once would both build on the same version and the later would drop the other's (an operator's mark
        lost under an enrolment), or take the same version name. An exclusive `flock` on `.lock`, so it holds
        between processes (serve, a CLI) and goes with a writer that dies. Not re-entrant: take it once."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK).open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            yield

    def is_store(self) -> bool:
        """`root` holds only what a store holds (versions, `current`, hidden work folders), or nothing yet."""
        return all(p.name == CURRENT or p.name.startswith(".") or _VERSION.match(p.name) for p in self.root.iterdir())

    def is_plain_model(self) -> bool:
        """`root` is one model directory (the unversioned layout `streamvad fit --out` writes)."""
        return (self.root / MODEL_FILE).is_file()

    def versions(self) -> list[Version]:
        """Every version, oldest first."""
        if not self.root.is_dir():
            return []
        found = sorted((int(m.group(1)), p) for p in self.root.iterdir()
                       if (m := _VERSION.match(p.name)) and (p / MODEL_FILE).is_file())
        return [Version(p.name, p, self._record(p)) for _n, p in found]

    @staticmethod
    def _record(path: Path) -> dict[str, Any]:
        return json_object(path / VERSION_FILE)

    def current(self) -> Version | None:
        """The version `current` points at (None: learning, or a plain model directory)."""
        pointer = self.root / CURRENT
        if not pointer.is_symlink():
            return None
        name = os.readlink(pointer)
        path = self.root / name
        if not _VERSION.match(name) or not (path / MODEL_FILE).is_file():
            raise ConfigError(f"{pointer}: points at {name!r}, which is not a model version of this store")
        return Version(name, path, self._record(path))

    def resolve(self) -> tuple[Path, str | None] | None:
        """(the model directory to serve, its version name) or None while the camera is learning."""
        if self.is_plain_model():
            return self.root, None
        current = self.current()
        return None if current is None else (current.path, current.name)

    def next_version(self) -> str:
        numbers = [int(m.group(1)) for p in self.root.iterdir() if (m := _VERSION.match(p.name))] \
            if self.root.is_dir() else []
        return f"v{max(numbers, default=0) + 1:04d}"

    def add(self, fitted: Path, record: dict[str, Any]) -> Version:
        """Move a fitted model directory (on the store's file system) in as the next version, with its record."""
        name = self.next_version()
        path = self.root / name
        (fitted / VERSION_FILE).write_text(json.dumps({"created_at": time.time(), **record}, indent=2),
                                           encoding="utf-8")
        os.rename(fitted, path)
        return Version(name, path, self._record(path))

    def activate(self, name: str) -> Version:
        """Point `current` at version `name`, atomically (a new symlink renamed over the old one)."""
        version = next((v for v in self.versions() if v.name == name), None)
        if version is None:
            known = ", ".join(v.name for v in self.versions()) or "none"
            raise InputError(f"{self.root}: no model version {name!r} (versions: {known})")
        tmp = self.root / f".{CURRENT}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(name, tmp)
        os.replace(tmp, self.root / CURRENT)
        return version

    def rollback(self) -> Version:
        """Activate the version before the current one."""
        current = self.current()
        versions = self.versions()
        names = [v.name for v in versions]
        if current is None or names.index(current.name) == 0:
            raise InputError(f"{self.root}: no earlier version to roll back to (current: "
                             f"{current.name if current else 'none'})")
        return self.activate(names[names.index(current.name) - 1])

    def prune(self, keep: int) -> list[str]:
        """Delete the versions older than the newest `keep`, except the current one and the one it replaced (where
        rollback and undo return); returns their names. A version moves out of sight (a hidden name) before it is
        deleted, so no reader sees half of one; its collections on a Chroma server go too, unless a kept version
        records the same ones."""
        current = self.current()
        kept = {current.name, current.record.get("previous")} if current is not None else set()
        versions = self.versions()
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v.name not in kept]
        records = {v.name: _chroma_record(v.path) for v in versions}
        in_use = {records[v.name] for v in versions if v not in doomed}
        for version in doomed:
            hidden = self.root / f".pruned-{version.name}-{os.getpid()}"
            os.rename(version.path, hidden)
            shutil.rmtree(hidden, ignore_errors=True)
            record = records[version.name]
            if record is not None and record not in in_use:
                _delete_collections(record)
        if doomed:
            log.info("%s: deleted version(s) %s, keeping the newest %d", self.root, ", ".join(v.name for v in doomed),
                     keep)
        return [v.name for v in doomed]


def json_object(path: Path) -> dict[str, Any]:
    """A model's JSON file as a dict; {} when it is missing, unreadable or not an object: listings and the console
    show what they can of a version rather than fail on one damaged file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _chroma_record(version: Path) -> tuple[str, str, int] | None:
    """(server url, prefix, tokens) of a version whose system of record is on a Chroma server."""
    try:
        man = read_manifest(version / NORMALITY_DIR)
    except StreamVADError:
        return None  # a detector model, or no normality model
    server = man.get("chroma_server")
    return None if not server else (server["url"], server["prefix"], man["n_patches"] + 1)


def _delete_collections(record: tuple[str, str, int]) -> None:
    """Best effort: a server that cannot be reached keeps the collections, and says so in the log."""
    url, prefix, n_tokens = record
    location = chroma_store.ChromaLocation(url=url, prefix=prefix)
    try:
        log.info("%s: deleted %d collections of a removed version", location, chroma_store.delete(location, n_tokens))
    except Exception as err:  # any client or network failure: the version itself is gone already
        log.warning("%s: could not delete the collections of a removed version (%s); delete them by hand",
                    location, err)
