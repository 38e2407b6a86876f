"""Enrol a camera from its own stream: record it, fit a model on it, add that as the store's next version.

`streamvad enroll --config live.yaml --camera gate --duration 30m` reads the camera the way its reader does
(same source, sampling rate and shrink; the fit applies the wire's JPEG round trip, so the model learns the
pixels a worker will score), records `--duration` of stream time as contiguous segments (whole segments are the
calibration hold-out, since neighbouring frames are near-duplicates), fits in a child process that is
niced and runs one torch thread (a worker on the same box keeps its cores), and adds the result to the
camera's model store as a new version, then makes it current. A running `serve` notices and swaps the
camera's model between batches (live/fleet.py ModelWatcher): no restart.

Enrolment footage is rarely all normal. Frames unlike the rest of the enrolment (scored leave one segment
out, `outlier_frames`) are left out of the fit, and so are, when the camera already has a model, the frames
it finds anomalous. Until something goes wrong the store is left as it was: the recording and the
fit happen in a hidden folder inside the store, and only a finished fit becomes a version.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from streamvad import feedback
from streamvad.config import WIRE_MAX_SIDE, BackboneConfig, CameraConfig, StoreConfig, StreamVADConfig
from streamvad.datasets.base import Clip
from streamvad.errors import ConfigError, InputError, StreamVADError
from streamvad.live.fleet import model_path, owned, owner
from streamvad.model_store import ModelStore, Version
from streamvad.normality import chroma_store
from streamvad.parent_watch import exit_with_parent
from streamvad.scoring.engine import ModelInfo
from streamvad.sources import open_source
from streamvad.sources.live import redact_url
from streamvad.sources.shrink import limit_size

log = logging.getLogger(__name__)
_WORK = ".enrol-"  # the store's hidden folder of an enrolment under way: .enrol-<unix time>-<pid>

Report = Callable[..., None]  # hears of an enrolment's progress: report(phase=..., recorded_s=...)

OUTLIER_MADS = 5.0
REFERENCE_FRAMES = 512  # frames of other segments each frame is compared with (a seeded sample)
MIN_SEGMENTS = 10  # with the default 10% hold-out, one whole segment is held out for calibration
MIN_SEGMENT_FRAMES = 2
SEGMENT_S = 60.0  # longer enrolments are cut into segments of about this length


@dataclass
class Enrolment:
    camera: str
    version: Version
    frames: int
    excluded: int  # frames left out: outliers in the enrolment, or anomalous to the camera's previous model
    seconds: float
    marked_again: list[Version]  # operators' marks made during the enrolment, made again on `version` (`land`)

    @property
    def current(self) -> Version:
        """The version current when the enrolment ended: its own, or the last mark made again on it."""
        return self.marked_again[-1] if self.marked_again else self.version


def camera_store(cfg: StreamVADConfig, camera_id: str) -> tuple[CameraConfig, ModelStore]:
    """The camera and its model store, or one line saying why it cannot be enrolled."""
    camera = cfg.camera(camera_id)
    root = camera.model or cfg.model_dir
    if root is None:
        raise ConfigError(f"cameras.{camera_id}.model: no model store to enrol into; set it to a directory "
                          "(an empty one is a store with no version yet)")
    store = ModelStore(Path(root))
    if store.root.is_dir() and store.is_plain_model():
        raise ConfigError(f"cameras.{camera_id}.model: {store.root} is one model directory, not a store of versions; "
                          "point the camera at an empty directory to enrol into")
    return camera, store


def site_backbone(cfg: StreamVADConfig, camera: CameraConfig) -> BackboneConfig:
    """The backbone the camera's worker runs: that of a model its other cameras are already served with (a
    worker runs one backbone), with the fields the config sets explicitly on top, as `load_engine` does; the
    config's own backbone when the worker serves no model yet."""
    for other in owned(cfg, owner(camera, cfg.serve.workers)):
        try:
            path = model_path(cfg, other) if other.id != camera.id else None
        except StreamVADError:
            continue
        if path is not None:
            fitted = ModelInfo.load(path).backbone
            return BackboneConfig.model_validate({**fitted.model_dump(), **cfg.backbone.model_dump(exclude_unset=True)})
    return cfg.backbone


def _segments(duration_s: float, fps: float) -> int:
    """How many contiguous segments the recording is cut into; refuses a duration too short for a hold-out."""
    n = max(MIN_SEGMENTS, round(duration_s / SEGMENT_S))
    if duration_s * fps < n * MIN_SEGMENT_FRAMES:
        least = MIN_SEGMENTS * MIN_SEGMENT_FRAMES / fps
        raise InputError(f"--duration: {duration_s:g} s at {fps:g} fps is too short to keep whole segments aside for "
                         f"calibration; enrol for at least {least:g} s")
    return n


def record(camera: CameraConfig, cfg: StreamVADConfig, duration_s: float, folder: Path, *,
           progress: bool = True, report: Report | None = None) -> list[Clip]:
    """Record `duration_s` of the camera's stream time into `folder`, one image folder per segment, and return
    the segments as clips. Frames are shrunk as a reader shrinks them and kept lossless (PNG): the fit then
    applies the wire's JPEG round trip once, as a worker sees it (`as_transported`)."""
    n = _segments(duration_s, camera.fps)
    length = duration_s / n
    frames = open_source(camera.url, camera.id, sample_fps=camera.fps, loop=camera.loop, realtime=camera.realtime)
    first: float | None = None
    counts = [0] * n
    bar = tqdm(total=round(duration_s), desc=f"enrolling {camera.id}", unit="s", disable=not progress,
               dynamic_ncols=True, leave=False)
    try:
        for frame in frames:
            first = frame.pts if first is None else first
            t = frame.pts - first
            if t >= duration_s:
                break
            seg = min(int(t / length), n - 1)
            shown = limit_size(frame, cfg.transport.frame_max_side or WIRE_MAX_SIDE)
            (folder / f"seg-{seg:03d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(shown.image).save(folder / f"seg-{seg:03d}" / f"{frame.index:08d}.png")
            counts[seg] += 1
            bar.update(round(t) - bar.n)
            if report is not None:
                report(phase="recording", recorded_s=round(t, 1))
    finally:
        bar.close()
        close = getattr(frames, "close", None)
        if close is not None:
            close()
    if sum(c >= MIN_SEGMENT_FRAMES for c in counts) < MIN_SEGMENTS:
        raise InputError(f"{redact_url(camera.url)}: the stream gave {sum(counts)} frames in "
                         f"{0 if first is None else duration_s:g} s of enrolment; too few to fit and calibrate on")
    return [Clip(f"seg-{i:03d}", folder / f"seg-{i:03d}", camera.id, "images", None, camera.fps)
            for i, c in enumerate(counts) if c]


def _robust_z(values: np.ndarray, axis: int = 0) -> np.ndarray:
    median = np.median(values, axis=axis, keepdims=True)
    mad = 1.4826 * np.median(np.abs(values - median), axis=axis, keepdims=True)
    return (values - median) / np.maximum(mad, 1e-9)


def outlier_frames(patches: np.ndarray, segments: np.ndarray, *, reference: int = REFERENCE_FRAMES,
                   seed: int = 0) -> np.ndarray:
    """Bool per frame: the frame is unlike the rest of the enrolment (scored leave one segment out).

    Each patch's distance to the nearest same-position patch of the frames of *other* segments (a seeded sample
    of at most `reference` frames) is put on its position's scale (robust z over all frames: a textured patch
    varies more than the sky), and a frame scores its most unusual patch. Something that passed through once
    (a person where nobody walks) is near nothing outside its own segment; the normal scene is near itself
    everywhere. A frame scoring more than OUTLIER_MADS robust deviations above the frames' median is an
    outlier. `patches` [N, P, D], `segments` [N]."""
    n = patches.shape[0]
    ref = np.sort(np.random.default_rng(seed).choice(n, size=min(reference, n), replace=False))
    ref_patches, ref_segments = patches[ref], segments[ref]
    ref_sq = np.einsum("rpd,rpd->pr", ref_patches, ref_patches)
    nearest = np.empty(patches.shape[:2], dtype=np.float32)
    for start in range(0, n, 64):
        block = patches[start:start + 64]
        dist = (np.einsum("bpd,bpd->bp", block, block)[:, :, None] + ref_sq[None]
                - 2.0 * np.einsum("bpd,rpd->bpr", block, ref_patches))
        own = segments[start:start + 64, None] == ref_segments[None, :]  # its own segment is no evidence
        nearest[start:start + 64] = np.sqrt(np.maximum(np.where(own[:, None, :], np.inf, dist).min(axis=2), 0.0))
    worst = _robust_z(nearest).max(axis=1)
    return _robust_z(worst) > OUTLIER_MADS


def _drop_outliers(clips: list[Clip], cfg: StreamVADConfig) -> int:
    """Delete the recorded frames that are outliers against the rest of the enrolment; returns how many."""
    from streamvad.backbones import build_backbone
    from streamvad.offline.pipeline import embed_clips

    embedded = embed_clips(build_backbone(cfg.backbone), clips, None, transport=cfg.transport, progress=False)
    out = outlier_frames(embedded.batch.patches, embedded.clip_ids, seed=cfg.normality.seed)
    for i in np.flatnonzero(out):
        Path(embedded.sources[i]).unlink(missing_ok=True)
    return int(out.sum())


def _drop_anomalous(previous: Path, clips: list[Clip], cfg: StreamVADConfig) -> int:
    """Delete the recorded frames that the camera's current model finds anomalous; returns how many."""
    from streamvad.offline.pipeline import replay
    from streamvad.scoring.engine import load_engine

    engine = load_engine(previous, backbone=cfg.backbone)
    result = replay(engine, clips, sample_fps=None, progress=False)
    dropped = 0
    for rec in result.records["primary"]:
        if rec["anomalous"]:
            Path(rec["source"]).unlink(missing_ok=True)
            dropped += 1
    return dropped


def _fit_child(cfg: StreamVADConfig, clips: list[Clip], out: Path, previous: Path | None,
               result: Any, privacy: list[list[tuple[float, float]]]) -> None:
    """The fit, in its own process: niced and on one torch thread, so a worker on this box keeps its cores."""
    import torch

    from streamvad.offline.pipeline import fit

    exit_with_parent()  # an enrolment killed -9 leaves no fit running for nobody
    os.nice(10)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    excluded = _drop_anomalous(previous, clips, cfg) if previous is not None else 0
    outliers = _drop_outliers([c for c in clips if any(c.path.iterdir())], cfg)
    kept = [c for c in clips if any(c.path.iterdir())]
    res = fit(cfg, kept, out, sample_fps=None, progress=False, privacy=privacy)  # in the exemplar pictures
    scores = res.holdout_scores
    quantiles = {f"p{q}": float(np.quantile(scores, q / 100, method="nearest")) for q in (50, 90, 99)} if scores else {}
    result.put({"excluded": excluded, "outliers": outliers, "n_train": res.n_train, "n_holdout": res.n_holdout,
                "thresholds": res.thresholds, "holdout_scores": quantiles,
                "serving_bytes": res.serving_bytes, "stages": res.stages})


def _remove_dead_work(root: Path) -> None:
    """The hidden folders of enrolments whose process is gone (killed -9, a power cut): a recording no fit will
    finish, which would hold its disk space forever. A folder whose process still runs is another enrolment's."""
    for work in root.glob(f"{_WORK}*"):
        pid = work.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(work, ignore_errors=True)
            log.warning("%s: removed the unfinished enrolment of a process that is gone", work)


def _running(pid: int) -> bool:
    """Whether a process `pid` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def check_enrolment(cfg: StreamVADConfig, camera_id: str, duration_s: float) -> tuple[CameraConfig, ModelStore]:
    """The camera and its store, once an enrolment of `duration_s` is known to make sense (else one line)."""
    camera, store = camera_store(cfg, camera_id)
    _segments(duration_s, camera.fps)  # refuse a too-short duration before touching anything
    return camera, store


def enrol(cfg: StreamVADConfig, camera_id: str, duration_s: float, *, progress: bool = True,
          report: Report | None = None) -> Enrolment:
    """Record, fit and add a new current version to the camera's store (see the module docstring); `report`
    hears of each phase (recording, with the stream seconds recorded; fitting)."""
    t0 = time.monotonic()
    camera, store = check_enrolment(cfg, camera_id, duration_s)
    _remove_dead_work(store.root)
    work = store.root / f"{_WORK}{int(time.time())}-{os.getpid()}"
    try:
        work.mkdir(parents=True)
    except OSError as err:
        raise InputError(f"{store.root}: cannot write to the model store ({err.strerror or err})") from None
    try:
        started = datetime.now(UTC).isoformat(timespec="seconds")
        base = store.current()  # what the operator's marks made from now on build on (`land`)
        clips = record(camera, cfg, duration_s, work / "frames", progress=progress, report=report)
        recorded = [started, datetime.now(UTC).isoformat(timespec="seconds")]
        if report is not None:
            report(phase="fitting")
        current = store.current()
        # a Chroma server holds every camera's versions side by side: this version's collections get a prefix
        # of their own (the fit's directory, ".../model", would give every enrolment of every camera "model")
        prefix = f"{chroma_store.prefix_of(cfg.normality.chroma_prefix or camera_id, limit=30)}-" \
                 f"{datetime.now(UTC):%Y%m%d%H%M%S%f}"  # 51 characters at most: room for feedback's "--<event>"
        cfg = cfg.model_copy(update={"backbone": site_backbone(cfg, camera),
                                     "normality": cfg.normality.model_copy(update={"chroma_prefix": prefix})})
        ctx = mp.get_context("spawn")
        result = ctx.SimpleQueue()
        child = ctx.Process(target=_fit_child, name=f"streamvad-enrol-{camera_id}",
                            args=(cfg, clips, work / "model", current and current.path, result, camera.privacy))
        child.start()
        try:
            child.join()
        finally:
            if child.is_alive():  # interrupted (serve stopping): the fit goes with it
                child.terminate()
                child.join()
        if child.exitcode != 0 or result.empty():
            raise InputError(f"{camera_id}: the enrolment fit failed (exit code {child.exitcode}; see its log above); "
                             f"the store {store.root} is unchanged")
        fitted = result.get()
        frames = sum(1 for c in clips for _ in c.path.iterdir())
        left_out = fitted["excluded"] + fitted["outliers"]
        version, again = land(store, work / "model", {
            "camera": camera_id, "source": redact_url(camera.url), "duration_s": duration_s,
            "recorded_frames": frames + left_out, "fitted_frames": frames, "excluded_anomalous": fitted["excluded"],
            "excluded_outliers": fitted["outliers"],
            "segments": len(clips), "n_train": fitted["n_train"], "n_holdout": fitted["n_holdout"],
            "thresholds": fitted["thresholds"], "recorded": recorded,
            "holdout_scores": fitted["holdout_scores"], "serving_bytes": fitted["serving_bytes"],
            "fit_seconds": fitted["stages"],
        }, base and base.name, cfg.store)
    except OSError as err:
        raise InputError(f"{store.root}: cannot write to the model store ({err.strerror or err}); "
                         "the current version is unchanged") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("%s: enrolled version %s on %d frames (%d left out) in %.0f s", camera_id, version.name, frames,
             left_out, time.monotonic() - t0)
    return Enrolment(camera_id, version, frames, left_out, time.monotonic() - t0, again)


def land(store: ModelStore, fitted: Path, record: dict[str, Any], base: str | None, cfg: StoreConfig
         ) -> tuple[Version, list[Version]]:
    """The enrolment's model `fitted` as the store's next version, current, with `record` and its `previous` (the
    version it replaced); returns it and the versions of the marks made again on top of it. The operator's marks
    made since the enrolment began on `base` are made again (`feedback.carry_marks`): its footage may never have
    shown the sight an operator called normal meanwhile, and the operator's word must not be lost to a fit that
    started before it."""
    with store.writing():
        marks = feedback.marks_since(store, base)
        replaced = store.current()
        version = store.add(fitted, {**record, "previous": replaced and replaced.name})
        store.activate(version.name)
        again = feedback.carry_marks(store.root, marks, cfg)
        store.prune(cfg.keep_versions)
    return version, again


def enrolment_main(cfg: StreamVADConfig, camera_id: str, duration_s: float, log_level: int) -> None:
    """Process entry of an enrolment `serve` runs on a control message: it reports its phase to the supervisor
    (/healthz shows it under the camera) and exits 0 once the new version is current, 2 if it failed."""
    from streamvad import security
    from streamvad.live.supervisor import StatusReporter, Terminated, setup_child

    stop = threading.Event()
    setup_child(stop, log_level, interrupt=True)
    security.configure(cfg.transport)
    state: dict[str, Any] = {"state": "running", "phase": "starting", "duration_s": duration_s}
    reporter = StatusReporter(cfg.transport.status, camera_id, "enrolment", lambda: dict(state),
                              cfg.serve.status_interval_s).start()
    code = 2
    try:
        res = enrol(cfg, camera_id, duration_s, progress=False, report=state.update)
        state.update(state="done", phase="done", version=res.current.name, recorded_s=duration_s)
        code = 0
    except StreamVADError as err:
        state.update(state="failed", phase="failed", error=str(err))
        log.error("%s", err)
    except Terminated:
        state.update(state="failed", phase="failed", error="serve stopped before the enrolment ended")
    finally:
        reporter.close()
    raise SystemExit(code)
