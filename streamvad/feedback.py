"""An operator's "this is normal": the event's evidence joins the camera's memory as a new model version.

A false alarm is a sight the enrolment footage never showed (a delivery van's usual spot, a new bench). The
console's "mark as normal" takes the evidence the worker sent with the event's peak frame (types.Evidence:
its most anomalous patches' embeddings and their velocities) and adds each patch's vector to the memory of
its own patch position, and each moving cell's velocity to that cell's motion memory, with no refit: the
next identical sight finds itself in the memory and scores as normal, while anything else at that place is
still measured against what was there before. Thresholds are kept, since nothing about the rest of the
scene's normality changed.

It writes the next version of the camera's store (a copy of the current one plus the additions, file hashes
recorded anew), makes it current, and the camera's worker swaps it in between batches. Undo is a rollback to
the version before, which names this event in its record. The version keeps the evidence it added, so that an
enrolment which began before the mark and lands after it makes the mark again on its own version
(`carry_marks`).

Every token's memory has one row per added vector, since the serving arrays are dense [T, M, D]: tokens
that received nothing repeat their first row, which changes no nearest distance. The Chroma system of
record gets the same rows from a process of its own (its client holds the GIL for seconds); until that is
done the new version's `chroma/` still holds the previous rows. A model recorded on a Chroma server gets its
new version's rows under a prefix of its own (`version_prefix`), so the previous version's record is kept.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
import traceback
import zipfile
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamvad.config import StoreConfig
from streamvad.errors import InputError, StreamVADError
from streamvad.layout import MOTION_DIR, NORMALITY_DIR
from streamvad.live.events_db import evidence_bytes, evidence_from
from streamvad.model_store import ModelStore, Version
from streamvad.motion.model import META as MOTION_META
from streamvad.motion.model import MotionModel
from streamvad.normality import chroma_store
from streamvad.scoring.engine import ModelInfo
from streamvad.types import Evidence

if TYPE_CHECKING:
    from streamvad.normality.model import NormalityModel

log = logging.getLogger(__name__)

MARKED_FILE = "marked.npz"  # a marked version's evidence (live/events_db.py evidence_bytes)


def add_to_memory(model: NormalityModel, evidence: Evidence, source: str) -> int:
    """Each evidence vector becomes a row of its patch's token (others repeat their first row); returns how many.
    The new rows' cluster and local density are those of their nearest existing row, so the study's k-NNN ratio
    of an identical patch is ~0 as well."""
    tokens = np.asarray(evidence.patches, dtype=np.int64) + 1  # token 0 is the global embedding
    vectors = np.asarray(evidence.vectors, dtype=np.float32)
    if vectors.shape[1] != model.dim:
        raise InputError(f"evidence of {vectors.shape[1]} dims, the model's memory has {model.dim}: another backbone")
    if len(tokens) and not 0 < tokens.min() <= tokens.max() < len(model.train):
        raise InputError(f"evidence of patches {tokens.min() - 1} to {tokens.max() - 1}, the model has "
                         f"{len(model.train) - 1}: another backbone or grid")
    k = len(tokens)
    frame = len(model.sources)
    rows = np.repeat(model.train[:, :1], k, axis=1)  # [T, K, D]: repeats of each token's first row
    clusters = np.repeat(model.clusters[:, :1], k, axis=1)
    loc_dens = np.repeat(model.loc_dens[:, :1], k, axis=1)
    frames = np.repeat(model.frame_of()[:, :1], k, axis=1).astype(np.int32)
    for i, (t, v) in enumerate(zip(tokens, vectors, strict=True)):
        memory = model.train[t].astype(np.float32)
        nearest = int(np.argmin(((memory - v) ** 2).sum(1)))
        rows[t, i] = v.astype(model.train.dtype)
        clusters[t, i], loc_dens[t, i], frames[t, i] = model.clusters[t, nearest], model.loc_dens[t, nearest], frame
    model.frames = np.concatenate([model.frame_of(), frames], axis=1).astype(np.int32)
    model.train = np.concatenate([model.train, rows], axis=1)
    model.clusters = np.concatenate([model.clusters, clusters], axis=1)
    model.loc_dens = np.concatenate([model.loc_dens, loc_dens], axis=1)
    model.sources = [*model.sources, source]
    model.rebuild_indexes()
    model.nnn = None  # the original k-NNN's neighbourhoods describe the old memory: rebuilt on first use
    return k


def add_velocities(motion: MotionModel, evidence: Evidence) -> int:
    """Each moving cell's velocity joins that cell's motion memory (at its own place: no neighbour cost);
    returns how many."""
    if evidence.velocities is None:
        return 0
    moving = np.isfinite(evidence.velocities).all(1)
    cells, velocities = np.asarray(evidence.patches)[moving], evidence.velocities[moving]
    if not len(cells):
        return 0
    extra = np.repeat(motion.memory[:, :1], len(cells), axis=1)
    for i, (cell, v) in enumerate(zip(cells, velocities, strict=True)):
        extra[cell, i] = [v[0] / motion.scale[cell], v[1] / motion.scale[cell], 0.0]
    motion.memory = np.concatenate([motion.memory, extra], axis=1)
    return len(cells)


def mark_normal(root: Path, evidence: Evidence, event_id: str, cfg: StoreConfig | None = None) -> Version:
    """The next version of the store at `root`: the current one with `evidence` added; it is made current, and
    the store keeps its newest `cfg.keep_versions` versions (`ModelStore.prune`; `cfg` the defaults if None).

    A process of its own (spawned, one per mark) builds the version: it needs the model's code and torch, which
    serve's supervisor, where the console runs, then never holds. An operator's click pays that process's start,
    a few seconds. It runs as the store's one writer (`ModelStore.writing`), so it builds on the version an
    enrolment or another mark made current before it; and it is stopped after `cfg.mark_timeout_s`, so a process
    that hangs (a stuck disk) cannot keep every later writer of the store waiting. The version's Chroma record is
    written by another process, started here."""
    with ModelStore(root).writing():
        return _mark(root, evidence, event_id, cfg or StoreConfig())


def carry_marks(root: Path, marks: list[Version], cfg: StoreConfig) -> list[Version]:
    """Each of `marks` (versions that marked an event normal, oldest first: `marks_since`) made again on top of
    the current version, which an enrolment has just made: the operator's word outlives a refit that began before
    it, and undo still works. The caller is the store's writer. A mark that cannot be made again (its evidence
    pruned with its version, or a model of another backbone) is logged and left out; the versions made."""
    evidence = []  # read first: a version made here prunes, and could take a later mark's version with it
    for mark in marks:
        kept = mark.path / MARKED_FILE
        try:
            evidence.append((mark, evidence_from(kept.read_bytes())))
        except FileNotFoundError:
            _not_carried(root, mark, f"{kept} is missing (marked by a StreamVAD that kept no evidence with a mark)")
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            _not_carried(root, mark, f"{kept} is unreadable ({err})")
    made = []
    for mark, sight in evidence:
        try:
            made.append(_mark(root, sight, str(mark.record["event"]), cfg, carried_from=mark.name))
        except StreamVADError as err:
            _not_carried(root, mark, str(err).splitlines()[0])
    return made


def _not_carried(root: Path, mark: Version, why: str) -> None:
    log.warning("%s: event %s, marked normal in %s, is not marked again on the new version: %s", root,
                mark.record["event"], mark.name, why)


def marks_since(store: ModelStore, base: str | None) -> list[Version]:
    """The versions that marked an event normal on the way from `base` to the current version, oldest first
    (following each version's `previous`); none if the current version does not descend from `base` (someone
    rolled back or activated another version meanwhile, on purpose)."""
    by_name = {v.name: v for v in store.versions()}
    current = store.current()
    name, marks = current and current.name, []
    while name is not None and name != base and name in by_name:
        version = by_name[name]
        if version.record.get("event"):
            marks.append(version)
        name = version.record.get("previous")
    return marks[::-1] if name == base else []


def _mark(root: Path, evidence: Evidence, event_id: str, cfg: StoreConfig, carried_from: str | None = None
          ) -> Version:
    """`mark_normal` once the store's lock is held."""
    version, record = _built_apart(root, evidence, event_id, carried_from, cfg)
    if record is not None:
        chroma_store.chroma_process(version.path / NORMALITY_DIR, record)
    log.info("%s: %s marks event %s normal (%d patch vectors, %d velocities added to %s%s)", root, version.name,
             event_id, version.record["added_vectors"], version.record["added_velocities"], version.record["previous"],
             f"; again, as {carried_from} did" if carried_from else "")
    return version


def _built_apart(root: Path, evidence: Evidence, event_id: str, carried_from: str | None, cfg: StoreConfig
                 ) -> tuple[Version, chroma_store.ChromaLocation | None]:
    """`_next_version` in a spawned process: its answer, or its error raised here. A process that outlives
    `cfg.mark_timeout_s` is killed, and what it left half-built removed."""
    ctx = mp.get_context("spawn")
    answers, answer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_answer, args=(answer, root, evidence, event_id, carried_from, cfg.keep_versions),
                        name=f"mark-{event_id[:12]}", daemon=True)
    child.start()
    answer.close()  # the child's end: once the child is gone, a read here ends instead of waiting
    try:
        if not answers.poll(cfg.mark_timeout_s):
            child.kill()
            child.join()
            shutil.rmtree(_work_folder(root, event_id), ignore_errors=True)
            current = ModelStore(root).current()
            raise StreamVADError(f"{root}: marking event {event_id} normal took longer than {cfg.mark_timeout_s:g} s "
                                 f"(store.mark_timeout_s) and was stopped; {root} stays on "
                                 f"{current.name if current else 'no version'}")
        try:
            built, failure, trace = answers.recv()
        except EOFError:
            raise StreamVADError(f"{root}: the process marking event {event_id} normal ended without an answer "
                                 "(killed, out of memory, or failed to start); see which version is current") from None
    finally:
        answers.close()
        child.join()
    if failure is None:
        return built
    if isinstance(failure, StreamVADError):  # one line that says it all
        raise failure
    raise failure from RuntimeError(f"in the process marking event {event_id} normal:\n{trace}")


def _answer(answer: Connection, root: Path, evidence: Evidence, event_id: str, carried_from: str | None,
            keep: int) -> None:
    """The marking process: (the new version and its Chroma record, None, "") or (None, the error, its traceback)."""
    try:
        reply = (_next_version(root, evidence, event_id, carried_from, keep), None, "")
    except BaseException as err:  # every error goes back to the parent, which raises it
        reply = (None, err, traceback.format_exc())
    answer.send(reply)
    answer.close()


def _work_folder(root: Path, event_id: str) -> Path:
    return root / f".normal-{event_id[:12]}"


def _next_version(root: Path, evidence: Evidence, event_id: str, carried_from: str | None, keep: int
                  ) -> tuple[Version, chroma_store.ChromaLocation | None]:
    """`mark_normal`'s process: the new version, current and pruned, and where its Chroma record goes (None: the
    model keeps none). The version keeps the evidence it added (`MARKED_FILE`), so that `carry_marks` can add it
    again to a version fitted later."""
    from streamvad.normality.model import NormalityModel
    from streamvad.normality.nnn import NNN_FILE

    store = ModelStore(root)
    current = store.current()
    if current is None:
        raise InputError(f"{root}: no current model version to add to (the camera is still learning)")
    work = _work_folder(root, event_id)
    shutil.rmtree(work, ignore_errors=True)
    try:
        shutil.copytree(current.path, work, symlinks=True, ignore=shutil.ignore_patterns("version.json"))
        model = NormalityModel.load(work / NORMALITY_DIR)
        if model.chroma_server is not None:  # the new rows under a prefix of their own: the old record stays
            model.chroma_server = {**model.chroma_server, "prefix": version_prefix(model.chroma_server["prefix"],
                                                                                   event_id)}
        added = add_to_memory(model, evidence, f"event:{event_id}")
        (work / NORMALITY_DIR / NNN_FILE).unlink(missing_ok=True)
        model.save(work / NORMALITY_DIR, write_chroma=False)
        velocities = 0
        if (work / MOTION_DIR / MOTION_META).is_file():
            motion = MotionModel.load(work / MOTION_DIR)
            velocities = add_velocities(motion, evidence)
            motion.save(work / MOTION_DIR)
        (work / MARKED_FILE).write_bytes(evidence_bytes(evidence))  # replaces the one a marked version copied
        ModelInfo.load(work).save(work)  # the file hashes of what changed
        version = store.add(work, {"source": "marked normal", "event": event_id, "previous": current.name,
                                   "added_vectors": added, "added_velocities": velocities,
                                   **({"carried_from": carried_from} if carried_from else {})})
    except BaseException as err:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(err, OSError):  # a full disk, a read-only volume: one line, and nothing changed
            raise InputError(f"{work}: cannot write the marked version ({err.strerror or err}); {root} stays on "
                             f"{current.name}") from None
        raise
    store.activate(version.name)
    store.prune(keep)
    recorded = model.config.chroma or model.chroma_server is not None
    return version, model.recorded_chroma(version.path / NORMALITY_DIR) if recorded else None


def version_prefix(prefix: str, event_id: str) -> str:
    """The Chroma server prefix of a version marked normal from a model recorded under `prefix`: the base
    prefix and the event, so undo and rollback find the previous version's collections as they were."""
    return f"{prefix.split('--')[0][:52]}--{event_id[:8]}"


def undo(root: Path, event_id: str) -> Version:
    """Roll the store back past the version that marked `event_id` normal, if it is still the current one."""
    store = ModelStore(root)
    with store.writing():
        current = store.current()
        if current is None or current.record.get("event") != event_id:
            raise InputError(f"{root}: the current version ({current.name if current else 'none'}) is not the one "
                             f"that marked event {event_id} normal; roll back by hand (streamvad models rollback)")
        return store.activate(str(current.record["previous"]))
