"""From per-frame verdicts to events an operator wants to be told about.

A single anomalous frame is usually noise, and an alarm that flaps open/closed every second is
useless, so events use hysteresis per camera: open when `open_n` of the last `open_m` verdicts are
anomalous, stay open while anomalies continue, close after `close_quiet_s` of presentation time
without one, then stay quiet for `cooldown_s` (suppressed openings are counted, not reported).
Time is the stream's pts, so a replay at any speed gives the same events as the live run did, and a
slow worker (verdicts seconds behind their frames) cannot split an event. Only a camera from which no
verdict arrives at all for `silence_s` of wall-clock time has its event closed without pts.

With several workers a camera's verdicts can arrive slightly out of pts order (each worker batches at
its own pace). A late verdict still newer than the oldest one in the hysteresis window is slotted into
the window by pts and counts as if it had come in order; only one older than the whole window is too
late to matter (a closed event's window is gone, an open one has moved past it) and is dropped.
In-order verdicts are handled at once: nothing is held back to wait for stragglers.

End of stream closes a camera's events, but only once the verdict of the last frame its reader queued
has arrived: with several workers the EOS comes through whichever worker got it and can overtake
verdicts other workers are still computing. The wait is bounded (`eos_wait_s`), since that frame may
never be scored (dropped or shed as stale).

A camera's tracking state (`state`) goes into the events database with every commit, and `restore` takes it
back in a restarted events process, so an open event continues under its id instead of opening again. An
event's id is derived from the verdict that opened it, so reprocessing the same verdicts after a crash
gives the same event and the same delivery keys, which receivers drop as repeats.

A reader restarted by the supervisor numbers its frames from pts 0 again. A verdict more than
`restart_after_s` behind the camera's last pts is therefore taken as a new stream, not as a late one:
otherwise every verdict of the new stream would be ignored until its pts passed the old run's.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import uuid
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from streamvad.config import EventsConfig
from streamvad.transport import decode_verdict, encode_verdict
from streamvad.types import Event, Evidence, FrameKey, Verdict

log = logging.getLogger(__name__)

_EVENT_IDS = uuid.UUID("5f0b7d8e-3c1a-4e62-9d1e-7a4c2b9e6f10")  # namespace of event ids (uuid5)

UpdateKind = Literal["opened", "updated", "closed"]


@dataclass
class EventUpdate:
    """What sinks receive: a snapshot of the event plus its peak frame and heatmap (None if the tracker
    was not given frames). `seq` numbers the updates of one event from 0, so (event id, seq) identifies
    a delivery; `snapshot_path` is filled in by the snapshot sink for the sinks after it."""

    kind: UpdateKind
    event: Event
    peak_frame: np.ndarray | None
    peak_heatmap: np.ndarray | None
    seq: int = 0
    snapshot_path: str | None = None
    peak_evidence: Evidence | None = None  # the peak verdict's (types.Evidence), for the events database

    @property
    def idempotency_key(self) -> str:
        return f"{self.event.id}:{self.seq}:{self.kind}"


@dataclass
class _Seen:
    verdict: Verdict
    wall_time: float
    frame: np.ndarray | None


def _finite(value: float) -> float | None:
    return None if value in (float("inf"), float("-inf")) else value


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """The inverse of `dataclasses.asdict` on an Event (its peak key is a FrameKey again)."""
    return Event(**{**data, "peak_key": FrameKey(**data["peak_key"])})


def _seen_state(seen: _Seen) -> dict[str, Any]:
    """A window entry as JSON values, without its evidence (the peak's is in the events table)."""
    header, payload = encode_verdict(dataclasses.replace(seen.verdict, evidence=None))
    return {"header": header.decode("utf-8"), "heatmap": base64.b64encode(payload).decode("ascii"),
            "wall_time": seen.wall_time}


def _seen_from(data: Mapping[str, Any]) -> _Seen:
    verdict, _ = decode_verdict([data["header"].encode("utf-8"), base64.b64decode(data["heatmap"])])
    return _Seen(verdict, float(data["wall_time"]), None)


@dataclass
class _Camera:
    window: deque[_Seen]
    event: Event | None = None
    peak_frame: np.ndarray | None = None
    peak_heatmap: np.ndarray | None = None
    peak_evidence: Evidence | None = None
    seq: int = 0
    last_anomalous_pts: float = 0.0
    last_anomalous_wall: float = 0.0
    last_pts: float = float("-inf")
    last_arrival: float = 0.0  # wall-clock time the camera's last verdict reached the tracker
    cooldown_until: float = float("-inf")
    eos_pts: float | None = None  # an EOS waits for the verdict at this pts (its reader's last frame)...
    eos_deadline: float = float("inf")  # ...until this wall-clock time


class EventTracker:
    """Per-camera hysteresis over the `open_m` most recent verdicts by pts. A verdict older than the
    last one seen (several workers) is inserted into the window if it is newer than the window's oldest
    verdict, else ignored and counted in `late`; one more than `restart_after_s` older means the camera's
    reader restarted (counted in `restarts`)."""

    def __init__(self, cfg: EventsConfig, event_type: str = "anomaly") -> None:
        self.cfg = cfg
        self.event_type = event_type  # what this tracker's events are (Event.type): anomalies or a camera fault
        self._cams: dict[str, _Camera] = {}
        self.suppressed: Counter[str] = Counter()  # verdicts that would have opened an event in cooldown
        self.late: Counter[str] = Counter()
        self.restarts: Counter[str] = Counter()

    def _cam(self, camera: str) -> _Camera:
        if camera not in self._cams:
            self._cams[camera] = _Camera(window=deque(maxlen=self.cfg.open_m))
        return self._cams[camera]

    def state(self, camera: str) -> dict[str, Any] | None:
        """The camera's tracking state as JSON values (None: not tracked), for the events database. Frames are
        left out (a restored event's next snapshot comes with its next peak)."""
        cam = self._cams.get(camera)
        if cam is None:
            return None
        return {"window": [_seen_state(s) for s in cam.window],
                "event": None if cam.event is None else dataclasses.asdict(cam.event), "seq": cam.seq,
                "last_anomalous_pts": cam.last_anomalous_pts, "last_anomalous_wall": cam.last_anomalous_wall,
                "last_pts": _finite(cam.last_pts),
                "cooldown_until": _finite(cam.cooldown_until), "eos_pts": cam.eos_pts}

    def restore(self, camera: str, state: Mapping[str, Any], now: float) -> None:
        """Continue from `state(camera)` as saved by an earlier process; silence and an awaited end of stream
        are timed from `now`, since the wall-clock time in between was this process not running."""
        cam = self._cams[camera] = _Camera(window=deque(maxlen=self.cfg.open_m))
        cam.window.extend(_seen_from(s) for s in state["window"][-self.cfg.open_m:])
        cam.event = None if state["event"] is None else event_from_dict(state["event"])
        cam.seq, cam.last_anomalous_pts = int(state["seq"]), float(state["last_anomalous_pts"])
        cam.last_anomalous_wall = float(state.get("last_anomalous_wall", 0.0))  # absent in states before v2
        cam.last_pts = float("-inf") if state["last_pts"] is None else float(state["last_pts"])
        cam.cooldown_until = float("-inf") if state["cooldown_until"] is None else float(state["cooldown_until"])
        cam.last_arrival = now
        if state["eos_pts"] is not None:
            cam.eos_pts, cam.eos_deadline = float(state["eos_pts"]), now + self.cfg.eos_wait_s
        if cam.event is not None:
            log.info("%s event %s on %s resumed (open since pts %.2f)", self.event_type, cam.event.id, camera,
                     cam.event.start_pts)

    def cameras(self) -> list[str]:
        return list(self._cams)

    def current_event(self, camera: str) -> Event | None:
        cam = self._cams.get(camera)
        return None if cam is None else cam.event

    def update(self, verdict: Verdict, wall_time: float, frame: np.ndarray | None = None,
               arrived: float | None = None) -> list[EventUpdate]:
        """`wall_time`: when the frame was captured (events report it); `arrived`: when the verdict got here
        (default `wall_time`), which `expire` measures a camera's silence from."""
        camera, pts = verdict.key.camera, verdict.key.pts
        cam = self._cam(camera)
        out: list[EventUpdate] = []
        if pts < cam.last_pts - self.cfg.restart_after_s:
            out.extend(self._restart(camera, pts))
            cam = self._cam(camera)
        cam.last_arrival = max(cam.last_arrival, wall_time if arrived is None else arrived)
        if pts < cam.last_pts:
            return self._reordered(cam, _Seen(verdict, wall_time, frame))
        cam.last_pts = pts
        if cam.event is not None and self._quiet_elapsed(cam, verdict):
            out.append(self._close(cam, closed_at=pts))
        cam.window.append(_Seen(verdict, wall_time, frame))
        if cam.event is not None:
            if verdict.anomalous:
                out.extend(self._extend(cam, cam.window[-1]))
        elif verdict.anomalous:
            out.extend(self._try_open(camera, cam))
        if cam.eos_pts is not None and pts >= cam.eos_pts:
            out.extend(self.flush(camera))
        return out

    def end_of_stream(self, camera: str, last: FrameKey | None, now: float) -> list[EventUpdate]:
        """The reader of `camera` ended after queueing `last`: close its events now if that frame's verdict
        (or a later one) was already seen, else when it arrives or at `now + eos_wait_s`, whichever is first.
        Without `last` (a reader that queued nothing, or predates the field) close now, as before."""
        cam = self._cam(camera)
        if last is None or cam.last_pts >= last.pts:
            return self.flush(camera)
        cam.eos_pts, cam.eos_deadline = last.pts, now + self.cfg.eos_wait_s
        return []

    def _restart(self, camera: str, pts: float) -> list[EventUpdate]:
        """The camera's stream began again at `pts`: close its event where the old stream ended and drop
        all its state, since the old stream's pts (window, cooldown, an awaited EOS frame) mean nothing
        on the new one."""
        log.info("%s: stream restarted, pts jumped back from %.3f to %.3f; tracking it from scratch",
                 camera, self._cams[camera].last_pts, pts)
        self.restarts[camera] += 1
        closed = self.flush(camera)
        del self._cams[camera]
        return closed

    def _reordered(self, cam: _Camera, seen: _Seen) -> list[EventUpdate]:
        """A verdict that another worker delivered after newer ones: put it where it belongs in the window
        and apply the same rules as in order. Only the newest pts drives closing, and since a close clears
        the window, a verdict from before the close finds no place and cannot revive that event."""
        camera, pts = seen.verdict.key.camera, seen.verdict.key.pts
        if not cam.window or pts <= cam.window[0].verdict.key.pts:
            self.late[camera] += 1
            log.debug("%s: ignoring verdict at pts %.3f older than the hysteresis window", camera, pts)
            return []
        if len(cam.window) == cam.window.maxlen:
            cam.window.popleft()  # the oldest is no longer among the open_m most recent
        cam.window.insert(bisect_right(cam.window, pts, key=lambda s: s.verdict.key.pts), seen)
        if not seen.verdict.anomalous:
            return []
        return self._extend(cam, seen) if cam.event is not None else self._try_open(camera, cam)

    def _try_open(self, camera: str, cam: _Camera) -> list[EventUpdate]:
        """Open if enough of the window is anomalous. In cooldown the opening is suppressed unless the
        newest anomaly is past it: in order, that verdict would have been the one to open the event."""
        hits = [s for s in cam.window if s.verdict.anomalous]
        if len(hits) < self.cfg.open_n:
            return []
        if hits[-1].verdict.key.pts < cam.cooldown_until:
            self.suppressed[camera] += 1
            return []
        return [self._open(cam)]

    def _quiet_elapsed(self, cam: _Camera, verdict: Verdict) -> bool:
        """A non-anomalous verdict closes once the quiet period is reached; an anomalous one only when
        a gap in the stream (dropped frames, paused camera) already spans more than the quiet period."""
        quiet = verdict.key.pts - cam.last_anomalous_pts
        return quiet > self.cfg.close_quiet_s if verdict.anomalous else quiet >= self.cfg.close_quiet_s

    def _open(self, cam: _Camera) -> EventUpdate:
        hits = [s for s in cam.window if s.verdict.anomalous]
        first, peak = hits[0], max(hits, key=lambda s: s.verdict.score)
        key = first.verdict.key
        opened_by = json.dumps([self.event_type, key.camera, key.index, key.pts, first.wall_time])
        cam.event = Event(
            id=uuid.uuid5(_EVENT_IDS, opened_by).hex, camera=key.camera, start_pts=first.verdict.key.pts,
            end_pts=None, start_wall_time=first.wall_time, peak_score=peak.verdict.score,
            peak_key=peak.verdict.key, frame_count=len(hits), type=self.event_type,
            model_version=peak.verdict.model_version,
        )
        cam.peak_frame, cam.peak_heatmap = peak.frame, peak.verdict.heatmap.copy()
        cam.peak_evidence = peak.verdict.evidence
        cam.last_anomalous_pts, cam.last_anomalous_wall = hits[-1].verdict.key.pts, hits[-1].wall_time
        cam.seq = 0
        log.info("%s event %s opened on %s at pts %.2f (peak %.3f)", self.event_type, cam.event.id,
                 cam.event.camera, cam.event.start_pts, cam.event.peak_score)
        return self._emit(cam, "opened")

    def _extend(self, cam: _Camera, seen: _Seen) -> list[EventUpdate]:
        """Count an anomalous verdict toward the open event; `seen` may be a reordered one from before the
        newest anomaly, or even from before the start (the opening would have counted it in order)."""
        assert cam.event is not None
        pts = seen.verdict.key.pts
        cam.event.frame_count += 1
        if pts >= cam.last_anomalous_pts:
            cam.last_anomalous_pts, cam.last_anomalous_wall = pts, seen.wall_time
        if pts < cam.event.start_pts:
            cam.event.start_pts, cam.event.start_wall_time = pts, seen.wall_time
        if seen.verdict.score <= cam.event.peak_score:
            return []
        cam.event.peak_score, cam.event.peak_key = seen.verdict.score, seen.verdict.key
        cam.event.model_version = seen.verdict.model_version
        cam.peak_frame, cam.peak_heatmap = seen.frame, seen.verdict.heatmap.copy()
        cam.peak_evidence = seen.verdict.evidence
        return [self._emit(cam, "updated")]

    def _close(self, cam: _Camera, closed_at: float) -> EventUpdate:
        assert cam.event is not None
        cam.event.end_pts, cam.event.end_wall_time = cam.last_anomalous_pts, cam.last_anomalous_wall
        cam.event.state = "closed"
        cam.cooldown_until = closed_at + self.cfg.cooldown_s
        cam.window.clear()  # the anomalies that opened this event must not reopen the next one
        log.info("event %s closed on %s: pts %.2f-%.2f, %d anomalous frames, peak %.3f", cam.event.id,
                 cam.event.camera, cam.event.start_pts, cam.event.end_pts, cam.event.frame_count,
                 cam.event.peak_score)
        update = self._emit(cam, "closed")
        cam.event, cam.peak_frame, cam.peak_heatmap, cam.peak_evidence = None, None, None, None
        return update

    def _emit(self, cam: _Camera, kind: UpdateKind) -> EventUpdate:
        """A copy of the event, so later changes do not alter what a sink queued; the snapshot path
        list is shared on purpose so paths recorded by the snapshot sink accumulate on the event."""
        assert cam.event is not None
        update = EventUpdate(kind, dataclasses.replace(cam.event), cam.peak_frame, cam.peak_heatmap, cam.seq,
                             peak_evidence=cam.peak_evidence)
        cam.seq += 1
        return update

    def flush(self, camera: str | None = None) -> list[EventUpdate]:
        """Close open events (all cameras, or one) now; a waiting end of stream is done with."""
        names = list(self._cams) if camera is None else [camera] if camera in self._cams else []
        out = []
        for cam in (self._cams[n] for n in names):
            cam.eos_pts, cam.eos_deadline = None, float("inf")
            if cam.event is not None:
                out.append(self._close(cam, cam.last_pts))
        return out

    def expire(self, wall_time: float) -> list[EventUpdate]:
        """Close events of cameras from which no verdict arrived for `silence_s` of wall-clock time, so a
        camera that dies mid-event does not leave it open forever, and of cameras whose end of stream
        waited `eos_wait_s` in vain for its last verdict. Everything else is decided on pts: verdicts that
        keep arriving, however late, never let an event expire."""
        out = []
        for name, cam in self._cams.items():
            if cam.eos_pts is not None and wall_time >= cam.eos_deadline:
                log.info("%s: no verdict for the stream's last frame (pts %.3f) within %.1f s of its end; "
                         "closing its events", name, cam.eos_pts, self.cfg.eos_wait_s)
                out.extend(self.flush(name))
            elif cam.event is not None and wall_time - cam.last_arrival >= self.cfg.silence_s:
                out.append(self._close(cam, cam.last_pts))
        return out
