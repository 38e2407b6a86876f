"""Event-level evaluation: what an operator would have been told, not how frames rank.

Frame AUROC says whether anomalous frames score higher; an operator cares whether each incident raised
an alert, how long after it began, and how many alerts came for nothing. So the verdicts of each clip
go through the live `EventTracker` with the configured hysteresis, at the calibrated threshold, and:
- a labelled anomalous segment (a run of anomalous frames) is detected when an event overlaps it;
- its delay is from the segment's first frame to the verdict that opened that event (0 when an event
  was already open);
- an event that overlaps no segment is a false event; per hour of the normal footage evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from streamvad.config import EventsConfig
from streamvad.live.events import EventTracker, EventUpdate
from streamvad.types import FrameKey, Verdict

_CELL = np.zeros(1, dtype=np.float32)


@dataclass(frozen=True)
class ClipVerdicts:
    """One clip's frames in pts order: pts [T] s, labels [T] (0/1), anomalous [T] at the threshold."""

    pts: np.ndarray
    labels: np.ndarray
    anomalous: np.ndarray


@dataclass(frozen=True)
class RaisedEvent:
    opened_at: float  # pts of the verdict that opened it
    start: float
    end: float


def segments(pts: np.ndarray, labels: np.ndarray) -> list[tuple[float, float]]:
    """(first, last) pts of every run of anomalous frames."""
    edges = np.diff(np.r_[0, np.asarray(labels, dtype=int), 0])
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return [(float(pts[a]), float(pts[b])) for a, b in zip(starts, stops, strict=True)]


def raise_events(clip: str, data: ClipVerdicts, cfg: EventsConfig) -> list[RaisedEvent]:
    """The events the live tracker raises on this clip's verdicts."""
    tracker = EventTracker(cfg)
    opened: dict[str, float] = {}
    out: list[RaisedEvent] = []
    for i, (t, flag) in enumerate(zip(data.pts, data.anomalous, strict=True)):
        v = Verdict(key=FrameKey(clip, i, float(t)), score=float(flag), raw_score=float(flag), anomalous=bool(flag),
                    global_confidence=0.0, patch_confidences=_CELL, grid=(1, 1), unsafe_patches=0, threshold=0.5,
                    decided_by="eval")
        for update in tracker.update(v, wall_time=float(t)):
            _collect(update, float(t), opened, out)
    for update in tracker.flush():
        _collect(update, float(data.pts[-1]), opened, out)
    return out


def _collect(update: EventUpdate, at: float, opened: dict[str, float], out: list[RaisedEvent]) -> None:
    if update.kind == "opened":
        opened[update.event.id] = at
    elif update.kind == "closed":
        end = update.event.end_pts if update.event.end_pts is not None else at
        out.append(RaisedEvent(opened.pop(update.event.id, update.event.start_pts), update.event.start_pts, end))


def _overlaps(event: RaisedEvent, first: float, last: float, step: float) -> bool:
    """Whether the event overlaps the segment of frames first..last (each frame spans half a step either side)."""
    return event.start <= last + step / 2 and event.end >= first - step / 2


def frame_spans(pts: np.ndarray) -> np.ndarray:
    """The stream time each frame stands for: up to the next frame's pts, the last the typical step. Not one
    typical step for every frame: 4 fps sampled from 10 fps footage steps 0.2, 0.3, 0.2, ... s, whose median
    (0.3) overstates the footage by a fifth. A gap (a stream outage) counts at most two typical steps."""
    if len(pts) < 2:
        return np.zeros(len(pts))
    steps = np.diff(pts)
    typical = float(np.median(steps))
    return np.minimum(np.r_[steps, typical], 2 * typical)


def event_metrics(clips: Mapping[str, ClipVerdicts], cfg: EventsConfig) -> dict[str, object]:
    """Segments detected, detection delays and false events per hour of normal footage, pooled and per clip."""
    per_clip: dict[str, dict[str, object]] = {}
    delays: list[float] = []
    n_segments = n_detected = n_false = 0
    normal_s = 0.0
    for name, data in clips.items():
        if not len(data.pts):
            continue
        spans = frame_spans(data.pts)
        step = float(np.mean(spans))
        events = raise_events(name, data, cfg)
        segs = segments(data.pts, data.labels)
        clip_delays: list[float | None] = []
        for s0, s1 in segs:
            hit = [e for e in events if _overlaps(e, s0, s1, step)]
            clip_delays.append(None if not hit else max(0.0, min(e.opened_at for e in hit) - s0))
        false = [e for e in events if not any(_overlaps(e, s0, s1, step) for s0, s1 in segs)]
        found = [d for d in clip_delays if d is not None]
        delays += found
        n_segments += len(segs)
        n_detected += len(found)
        n_false += len(false)
        normal_s += float(spans[data.labels == 0].sum())
        per_clip[name] = {"segments": len(segs), "segment_spans": segs, "detected": len(found), "delay_s": clip_delays,
                          "false_events": len(false), "events": len(events)}
    hours = normal_s / 3600.0
    return {
        "segments": n_segments, "segments_detected": n_detected,
        "segment_recall": n_detected / n_segments if n_segments else float("nan"),
        "false_events": n_false, "normal_hours": hours,
        "false_events_per_hour": n_false / hours if hours > 0 else float("nan"),
        "delay_median_s": float(np.median(delays)) if delays else float("nan"),
        "delay_p90_s": float(np.quantile(delays, 0.9)) if delays else float("nan"),
        "per_clip": per_clip,
    }
