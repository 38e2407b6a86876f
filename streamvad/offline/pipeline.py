"""Offline work on recorded footage: fit a model, replay sources through it, evaluate on a dataset.

All three read frames through the same sources and score them through the same `Engine` as the live
worker, so an evaluation measures exactly what a camera would get.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from streamvad.backbones.base import Backbone
from streamvad.backbones.registry import build_backbone
from streamvad.config import (
    EventsConfig,
    MotionConfig,
    StreamVADConfig,
    TamperConfig,
    TransportConfig,
)
from streamvad.datasets.base import Clip, iter_clip, stream_id
from streamvad.errors import InputError
from streamvad.live.tamper import TamperMonitor
from streamvad.motion import MotionTracker
from streamvad.offline.event_metrics import ClipVerdicts, event_metrics
from streamvad.offline.exemplars import thumbnail
from streamvad.overlay import overlay_heatmap, save_jpeg
from streamvad.scoring.budget import Budget
from streamvad.scoring.engine import Engine, FrameScorer, ModelInfo, embed_frames
from streamvad.scoring.kinds import KNNN, model_kind
from streamvad.scoring.smoothing import Smoother
from streamvad.sources.images import list_images
from streamvad.transport import as_transported
from streamvad.types import EmbeddingBatch, FeatureRequest, Frame, Polygon, Verdict

log = logging.getLogger(__name__)


def batched(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def clips_from_paths(paths: Sequence[str | Path], native_fps: float = 10.0) -> list[Clip]:
    """Wrap plain video files and image folders given on the command line as unlabelled clips."""
    clips = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            list_images(p)  # fails early, with the folder's name, when it holds no images
            clips.append(Clip(p.name, p, stream_id(p.name), "images", None, native_fps))
        elif p.is_file():
            clips.append(Clip(p.stem, p, stream_id(p.stem), "video", None, None))
        else:
            raise InputError(f"{p}: no such video file or image folder")
    return clips


def iter_frames(clips: Sequence[Clip], sample_fps: float | None) -> Iterator[Frame]:
    for clip in clips:
        yield from iter_clip(clip, sample_fps)


def progress_bar(desc: str, enabled: bool, total: int | None = None) -> tqdm:
    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, dynamic_ncols=True, leave=False)


@dataclass
class Embedded:
    """Embeddings of many frames, one batch row per frame (with their motion), and the clip and source of each."""

    batch: EmbeddingBatch
    clip_ids: np.ndarray  # [Q] index into the clip list
    sources: list[str]
    thumbnails: list[bytes] = field(default_factory=list)  # each frame's exemplar picture, when asked for

    def rows(self, mask: np.ndarray) -> Embedded:
        idx = np.flatnonzero(mask)
        return Embedded(self.batch.select(idx), self.clip_ids[idx], [self.sources[i] for i in idx],
                        [self.thumbnails[i] for i in idx] if self.thumbnails else [])


def embed_batches(
    backbone: Backbone,
    clips: Sequence[Clip],
    sample_fps: float | None,
    *,
    request: FeatureRequest | None = None,
    transport: TransportConfig | None = None,
    progress: bool = True,
    desc: str = "embedding",
) -> Iterator[tuple[int, list[Frame], EmbeddingBatch]]:
    """(clip index, frames, embeddings) for every batch of sampled frames of `clips`; with `transport`, each
    frame as a worker would receive it from a reader (shrunk, through JPEG: `as_transported`)."""
    request = request or FeatureRequest()
    bar = progress_bar(desc, progress)
    try:
        for ci, clip in enumerate(clips):
            for batch in batched(iter_clip(clip, sample_fps), backbone_batch(backbone)):
                frames = batch if transport is None else [
                    as_transported(f, transport.frame_max_side, transport.jpeg_quality) for f in batch]
                yield ci, frames, embed_frames(backbone, frames, request)
                bar.update(len(frames))
    finally:
        bar.close()


def embed_clips(backbone: Backbone, clips: Sequence[Clip], sample_fps: float | None, *,
                transport: TransportConfig | None = None, progress: bool = True,
                motion: MotionConfig | None = None, thumbnails: bool = False,
                privacy: Sequence[Polygon] = ()) -> Embedded:
    """Global and patch embeddings of every sampled frame of `clips`, one row per frame; with `motion`,
    each frame's motion since the previous frame of its clip, measured as the live worker measures it; with
    `thumbnails`, each frame's exemplar picture (privacy-blurred)."""
    pictures: list[bytes] = []
    batches: list[EmbeddingBatch] = []
    clip_ids: list[int] = []
    sources: list[str] = []
    tracker = None if motion is None else MotionTracker(backbone.grid, motion)
    last_clip = -1
    for ci, frames, batch in embed_batches(backbone, clips, sample_fps, transport=transport, progress=progress):
        clip_ids.extend([ci] * len(frames))
        sources.extend(f.source or clips[ci].name for f in frames)
        if tracker is not None:
            if ci != last_clip:  # a new clip starts afresh, even on the same camera
                tracker.forget(frames[0].camera)
                last_clip = ci
            batch.motion = tracker.observe(frames)
        if thumbnails:
            pictures.extend(thumbnail(f, privacy) for f in frames)
        batches.append(batch)
    if not batches:
        raise no_frames(clips)
    return Embedded(EmbeddingBatch.concat(batches), np.asarray(clip_ids), sources, pictures)


def no_frames(clips: Sequence[Clip]) -> InputError:
    return InputError(f"no frames could be read from {', '.join(str(c.path) for c in clips)}")


def backbone_batch(backbone: Backbone) -> int:
    return int(getattr(backbone, "batch_size", 16))


@dataclass
class FitResult:
    model_dir: Path
    kind: str
    n_train: int
    n_holdout: int
    thresholds: dict[str, float]
    seconds: float
    stages: dict[str, float]  # seconds of each stage (embed, cluster, hdbscan, motion, calibrate, write)
    serving_bytes: int  # memory serving the model holds (0: not measured)
    holdout_scores: list[float]  # the served scorer's raw scores of the hold-out, as recorded (quantiles)
    holdout_sequences: list[list[float]]  # ... every one, per held-out clip in stream order


def fit(
    cfg: StreamVADConfig,
    clips: Sequence[Clip],
    out: Path,
    *,
    sample_fps: float | None,
    detector: str | None = None,
    progress: bool = True,
    privacy: Sequence[Polygon] = (),
) -> FitResult:
    """Fit a k-NNN normality model (default) or an image detector on normal clips and save it to `out`; `privacy`:
    the camera's privacy polygons, blurred in the exemplar pictures the model keeps."""
    t0 = time.perf_counter()
    backbone = build_backbone(cfg.backbone)
    kind = model_kind(detector or KNNN)
    fitted = kind.fit(cfg, backbone, clips, sample_fps, out, progress, privacy)
    scores = _quantiles([s for clip in fitted.holdout_scores for s in clip])
    sequences = [[round(s, 5) for s in clip] for clip in fitted.holdout_scores]  # what alert budgets extrapolate from
    ModelInfo(kind.name, cfg.backbone, cfg.scoring, sample_fps, cfg.transport.frame_max_side,
              cfg.transport.jpeg_quality, fitted.holdout,
              fit={"seconds": fitted.seconds, "serving_bytes": fitted.serving_bytes, "holdout_scores": scores,
                   "holdout_sequences": sequences, "holdout_decided_by": fitted.holdout_decided_by}).save(out)
    return FitResult(out, kind.name, fitted.n_train, fitted.n_holdout, fitted.thresholds, time.perf_counter() - t0,
                     fitted.seconds, fitted.serving_bytes, scores, sequences)


def _quantiles(scores: Sequence[float], most: int = 1000) -> list[float]:
    """At most `most` evenly spaced quantiles of `scores` (all of them, sorted, when fewer): what a model keeps
    of its hold-out's score distribution."""
    if not len(scores):
        return []
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if len(values) > most:
        values = np.quantile(values, np.linspace(0.0, 1.0, most))
    return [round(float(v), 6) for v in values]


def rule_variants(engine: Engine, names: Sequence[str]) -> dict[str, FrameScorer]:
    """Scorers for several decision rules sharing the engine's fitted model (see each ModelKind's `variants`):
    embedding once and scoring several ways is how one evaluation compares them."""
    return model_kind(engine.info.kind).variants(engine, names)


def verdict_record(frame: Frame, v: Verdict) -> dict[str, Any]:
    """The JSON line `replay` writes for one frame."""
    return {
        "camera": frame.camera,
        "frame": frame.index,
        "pts": round(frame.pts, 4),
        "score": round(float(v.score), 6),
        "raw_score": round(float(v.raw_score), 6),
        "anomalous": bool(v.anomalous),
        "global_confidence": round(float(v.global_confidence), 6),
        "unsafe_patches": int(v.unsafe_patches),
        "n_patches": v.n_patches,
        "threshold": round(float(v.threshold), 6),
        "decided_by": v.decided_by,
        "motion_score": None if v.motion_score is None else round(float(v.motion_score), 6),
        "tamper": v.tamper,
        "label": frame.label,
        "source": frame.source,
    }


@dataclass
class ReplayResult:
    """Per-scorer records (first scorer = primary) and frames/s of the whole run."""

    records: dict[str, list[dict[str, Any]]]
    frames: int
    seconds: float


def replay(
    engine: Engine,
    clips: Sequence[Clip],
    *,
    sample_fps: float | None,
    scorers: dict[str, FrameScorer] | None = None,
    out_jsonl: Path | None = None,
    heatmaps: Path | None = None,
    heatmap_every: int = 1,
    tamper: TamperConfig | None = None,
    budget: Budget | None = None,
    progress: bool = True,
) -> ReplayResult:
    """Score every sampled frame; write JSON lines and heatmap overlays (every
    `heatmap_every`-th frame of each camera) for the primary scorer, whose verdicts are also checked for
    camera faults as the live worker checks them (`tamper`) and decided at an alert `budget`'s threshold, as a
    camera with that budget is (scoring/budget.py)."""
    scorers = scorers or {"primary": engine.scorer}
    primary = next(iter(scorers))
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in scorers}
    sink = _open_jsonl(out_jsonl)
    bar = progress_bar("scoring", progress)
    t0 = time.perf_counter()
    n = 0
    monitor = TamperMonitor(tamper or TamperConfig())
    smoothers = {name: Smoother(engine.smoother.seconds) for name in scorers}  # each scorer's own window per camera
    try:
        wire = engine.info.frame_max_side, engine.info.jpeg_quality  # what the model was fitted on
        for read in batched(iter_frames(clips, sample_fps), backbone_batch(engine.backbone)):
            frames = [as_transported(f, *wire) for f in read]
            batch = engine.embed(frames)
            for name, scorer in scorers.items():
                verdicts = smoothers[name].apply(scorer.score(batch))
                if budget is not None and name == primary:
                    verdicts = budget.apply(verdicts)
                for frame, v in zip(frames, monitor.annotate(frames, verdicts) if name == primary else verdicts,
                                    strict=True):
                    rec = verdict_record(frame, v)
                    records[name].append(rec)
                    if name == primary:
                        if sink is not None:
                            sink.write(json.dumps(rec) + "\n")
                        if heatmaps is not None and frame.index % heatmap_every == 0:
                            write_overlay(heatmaps, frame, v)
            n += len(frames)
            bar.update(len(frames))
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    return ReplayResult(records, n, time.perf_counter() - t0)


def _open_jsonl(path: Path | None) -> Any:
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("w", encoding="utf-8")


def write_overlay(folder: Path, frame: Frame, v: Verdict) -> Path:
    flag = "ANOM" if v.anomalous else "ok"
    name = f"{frame.camera}/{frame.index:06d}_{flag}_{v.score:.3f}.jpg"
    return save_jpeg(overlay_heatmap(frame.image, v.heatmap), folder / name)


def evaluate(
    engine: Engine,
    test: Sequence[Clip],
    out: Path,
    *,
    sample_fps: float | None,
    rules: Sequence[str] = (),
    oracle: bool = False,
    events: EventsConfig | None = None,
    normal: Sequence[Clip] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Replay labelled test clips, then write metrics.json, plots and heatmap overlays to `out`.

    The decision threshold is the one the model calibrated on held-out normal footage; the study's
    recall-weighted threshold, which looks at test labels, is only reported when `oracle` is asked.
    Event-level figures (segments detected, delays, false events per hour) use the `events` hysteresis;
    `normal` clips (the fit's hold-out, never trained on) add false events per hour on more normal footage.
    """
    from streamvad.offline.evaluation import write_report

    events = events or EventsConfig()
    scorers = rule_variants(engine, rules) if rules else {engine.info.kind: engine.scorer}
    result = replay(
        engine, test, sample_fps=sample_fps, scorers=scorers, out_jsonl=out / "verdicts.jsonl",
        heatmaps=out / "heatmaps", heatmap_every=25, progress=progress,
    )
    held = replay(engine, normal, sample_fps=sample_fps, scorers=scorers, progress=progress) if normal else None
    reports: dict[str, Any] = {}
    for i, (name, recs) in enumerate(result.records.items()):
        labelled = [r for r in recs if r["label"] is not None]
        if not labelled:
            raise InputError("evaluation needs labelled test frames; the dataset gave none")
        per_clip = _by_clip(labelled)
        extra: dict[str, Any] = {"scorer": name, "frames_per_second": result.frames / max(result.seconds, 1e-9)}
        extra.update(_event_summary(event_metrics(_clip_verdicts(labelled), events), "events"))
        if held is not None:
            extra.update(_event_summary(event_metrics(_clip_verdicts(held.records[name]), events), "holdout_events"))
        reports[name] = write_report(
            out if i == 0 else out / "rules" / name.replace("/", "-"),
            labels=[int(r["label"]) for r in labelled],
            scores=[float(r["raw_score"]) for r in labelled],
            threshold=float(labelled[0]["threshold"]),
            oracle=oracle,
            per_clip=per_clip,
            extra=extra,
        )
    if len(reports) > 1:
        (out / "by_rule.json").write_text(json.dumps(reports, indent=2), encoding="utf-8")
    return reports


def _by_clip(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    per_clip: dict[str, dict[str, list[float]]] = {}
    for r in records:
        clip = per_clip.setdefault(r["camera"], {"labels": [], "scores": [], "pts": [], "anomalous": []})
        clip["labels"].append(int(r["label"] or 0))
        clip["scores"].append(float(r["raw_score"]))
        clip["pts"].append(float(r["pts"]))
        clip["anomalous"].append(bool(r["anomalous"]))
    return per_clip


def _clip_verdicts(records: Sequence[dict[str, Any]]) -> dict[str, ClipVerdicts]:
    return {name: ClipVerdicts(np.asarray(c["pts"]), np.asarray(c["labels"], dtype=int),
                               np.asarray(c["anomalous"], dtype=bool)) for name, c in _by_clip(records).items()}


def _event_summary(metrics: dict[str, Any], key: str) -> dict[str, Any]:
    """The event metrics under `key`, with the headline figures also at the top level for the summary table."""
    prefix = "" if key == "events" else "holdout_"
    out: dict[str, Any] = {key: metrics, f"{prefix}false_events_per_hour": metrics["false_events_per_hour"]}
    if key == "events":
        out.update(segment_recall=metrics["segment_recall"], delay_median_s=metrics["delay_median_s"])
    return out
