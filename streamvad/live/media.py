"""The console's pictures, written by the events process under `events.media`:

    latest/<camera>.jpg                 the camera's latest frame with its heatmap (the live tile)
    snapshots/<camera>/<event>.jpg      the event's peak frame
    snapshots/<camera>/<event>_heatmap.jpg   its heatmap drawn over it
    clips/<camera>/<event>.mp4          the event, from `clip_pre_s` before it opened to `clip_post_s` after it
                                        closed (H.264, on stream time)

Behaviour cannot be judged from one snapshot, so each event gets a clip: every camera keeps a ring buffer
of its last `clip_pre_s` of sampled frames (as JPEG, as the worker sent them: shrunk and privacy-blurred),
and an opened event records from it on until its end plus `clip_post_s`. Encoding runs on a thread of its
own, so a long clip never holds up the commits the workers wait for. Paths are fixed by camera and event id,
so a restarted events process still names the pictures of an event it resumes.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from streamvad.config import EventsConfig
from streamvad.live.events import EventUpdate
from streamvad.overlay import overlay_heatmap
from streamvad.sinks.snapshots import safe_name
from streamvad.types import Event, Verdict

log = logging.getLogger(__name__)

_QUALITY = 85
_CLIP_MAX_FRAMES = 2400  # 10 min at 4 fps: a longer event's clip is cut there (its pictures go on)
_MS = Fraction(1, 1000)


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=_QUALITY)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Readers (the console) never see half a file: write beside it, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_clip(path: Path, frames: list[tuple[float, bytes]]) -> None:
    """JPEG frames at their stream times -> an H.264 MP4 (millisecond time base, so shed frames keep their gaps)."""
    first = Image.open(io.BytesIO(frames[0][1]))
    width, height = first.width // 2 * 2, first.height // 2 * 2  # 4:2:0 needs even sides
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", options={"preset": "veryfast", "crf": "26"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = stream.codec_context.time_base = _MS
        t0, last = frames[0][0], -1
        for pts, data in frames:
            ms = max(last + 1, round((pts - t0) * 1000))  # strictly increasing, whatever the stream did
            picture = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[:height, :width]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
            frame.pts, frame.time_base, last = ms, _MS, ms
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    os.replace(tmp, path)


class MediaLayout:
    """Where the pictures of events and cameras are (the module docstring), for the writer and the console."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def event(self, event: Event) -> tuple[Path, Path, Path]:
        """(snapshot, heatmap, clip) of an event, fixed by its camera and id."""
        cam = safe_name(event.camera)
        snap = self.root / "snapshots" / cam
        return snap / f"{event.id}.jpg", snap / f"{event.id}_heatmap.jpg", self.root / "clips" / cam / f"{event.id}.mp4"

    def latest(self, camera: str) -> Path:
        return self.root / "latest" / f"{safe_name(camera)}.jpg"


@dataclass
class _Recording:
    event_id: str
    camera: str
    path: Path
    start_pts: float
    end_pts: float | None = None  # set when the event closes: record up to here
    frames: list[tuple[float, bytes]] = field(default_factory=list)


class EventMedia:
    """The media sink: a `Sink` (run first, so later sinks can name its files) that also `observe`s every verdict
    that came with a frame."""

    def __init__(self, cfg: EventsConfig) -> None:
        self.cfg = cfg
        self.layout = MediaLayout(cfg.media)
        self._ring: dict[str, deque[tuple[float, bytes]]] = {}
        self._recording: dict[str, _Recording] = {}  # event id -> its clip in the making
        self._tile_at: dict[str, float] = {}
        self._seen_at: dict[str, float] = {}  # when each camera's last frame came (monotonic)
        self._ended: set[str] = set()  # cameras whose stream ended (EOS) with no frame since
        self._jobs: queue.Queue[_Recording | None] = queue.Queue()
        self._queued: set[Path] = set()  # clips handed to the encoder and not yet written
        self._dropped: set[Path] = set()  # of those, the clips of events deleted meanwhile
        self._lock = threading.Lock()  # both sets, between this thread and the encoder's
        self._writer = threading.Thread(target=self._write_clips, name="streamvad-clips", daemon=True)
        self._writer.start()
        self.clips_written = 0
        self.clip_errors = 0

    # ----------------------------------------------------------------- every frame

    def observe(self, verdict: Verdict, image: np.ndarray, jpeg: bytes | None = None, now: float | None = None) -> None:
        """A scored frame as the worker sent it (decoded, and its JPEG when it came as one): the camera's live tile
        (every `preview_s`), its ring buffer and the clips being recorded of it."""
        camera, pts = verdict.key.camera, verdict.key.pts
        self._ended.discard(camera)
        self._tile(camera, now, lambda: _jpeg(overlay_heatmap(image, verdict.heatmap)))
        if not self.cfg.clips:
            return
        ring = self._ring.setdefault(camera, deque())
        if ring and pts < ring[-1][0]:  # the stream restarted: what was recorded of it ends here
            ring.clear()
            for rec in [r for r in self._recording.values() if r.camera == camera]:
                self._finish(rec)
        data = jpeg if jpeg is not None else _jpeg(image)
        ring.append((pts, data))
        while ring and ring[0][0] < pts - self.cfg.clip_pre_s:
            ring.popleft()
        for rec in [r for r in self._recording.values() if r.camera == camera]:
            if rec.end_pts is not None and pts > rec.end_pts:
                self._finish(rec)
            elif pts >= rec.start_pts:
                rec.frames.append((pts, data))
                if len(rec.frames) >= _CLIP_MAX_FRAMES:
                    log.warning("%s: event clip %s cut at %d frames", camera, rec.path.name, _CLIP_MAX_FRAMES)
                    self._finish(rec)

    def preview(self, camera: str, image: np.ndarray, jpeg: bytes | None = None, now: float | None = None) -> None:
        """A frame of a camera its worker does not score yet (learning): the live tile, with no heatmap."""
        self._tile(camera, now, lambda: jpeg if jpeg is not None else _jpeg(image))

    def _tile(self, camera: str, now: float | None, picture: Callable[[], bytes]) -> None:
        now = time.monotonic() if now is None else now
        self._seen_at[camera] = now
        if now - self._tile_at.get(camera, float("-inf")) >= self.cfg.preview_s:
            self._tile_at[camera] = now
            _write_atomic(self.layout.latest(camera), picture())

    # ----------------------------------------------------------------- sink

    def handle(self, update: EventUpdate) -> None:
        """Pictures of the peak when it changes, the clip's start and end, and every path on the event."""
        event = update.event
        snapshot, heatmap, clip = self.layout.event(event)
        if update.kind in ("opened", "updated") and update.peak_frame is not None and update.peak_heatmap is not None:
            _write_atomic(snapshot, _jpeg(update.peak_frame))
            _write_atomic(heatmap, _jpeg(overlay_heatmap(update.peak_frame, update.peak_heatmap)))
        if self.cfg.clips and update.kind == "opened" and event.id not in self._recording:
            start = event.start_pts - self.cfg.clip_pre_s
            ring = self._ring.get(event.camera, deque())
            self._recording[event.id] = _Recording(event.id, event.camera, clip, start,
                                                   frames=[f for f in ring if f[0] >= start])
        if update.kind == "closed" and event.id in self._recording:
            self._recording[event.id].end_pts = (event.end_pts or event.start_pts) + self.cfg.clip_post_s
            if event.camera in self._ended:
                self._finish(self._recording[event.id])
        event.snapshot = str(snapshot) if snapshot.is_file() else None
        event.heatmap = str(heatmap) if heatmap.is_file() else None
        event.clip = str(clip) if self.cfg.clips and (event.id in self._recording or clip.is_file()) else None

    def end_of_stream(self, camera: str) -> None:
        """No frame of `camera` follows: its clips end with what they have."""
        self._ended.add(camera)
        for rec in [r for r in self._recording.values() if r.camera == camera and r.end_pts is not None]:
            self._finish(rec)

    def tick(self, silence_s: float, now: float | None = None) -> None:
        """Clips of closed events whose camera sent nothing for `silence_s` end with what they have."""
        now = time.monotonic() if now is None else now
        for rec in list(self._recording.values()):
            if rec.end_pts is not None and now - self._seen_at.get(rec.camera, now) >= silence_s:
                self._finish(rec)

    def _finish(self, rec: _Recording) -> None:
        self._recording.pop(rec.event_id, None)
        if rec.frames:
            with self._lock:
                self._queued.add(rec.path)
            self._jobs.put(rec)

    def _write_clips(self) -> None:
        while (rec := self._jobs.get()) is not None:
            try:
                write_clip(rec.path, rec.frames)
                self.clips_written += 1
            except (OSError, av.FFmpegError, ValueError) as err:
                self.clip_errors += 1
                log.error("%s: cannot write event clip %s: %s", rec.camera, rec.path, err)
            with self._lock:
                self._queued.discard(rec.path)
                dropped = rec.path in self._dropped
                self._dropped.discard(rec.path)
            if dropped:  # its event went while it was encoded: no row would ever name the file
                rec.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Write what is being recorded (the stream ends here) and wait for the encoder."""
        for rec in list(self._recording.values()):
            self._finish(rec)
        self._jobs.put(None)
        self._writer.join(60.0)

    def delete(self, paths: list[str]) -> None:
        """Remove the files of pruned events (retention, or room on the disk); ones already gone are fine. A clip
        still recorded or encoded is dropped too: written afterwards, it would be a file no event names, which
        making room could never delete."""
        gone = {Path(p) for p in paths}
        for rec in [r for r in self._recording.values() if r.path in gone]:
            del self._recording[rec.event_id]
        with self._lock:
            self._dropped |= gone & self._queued
        for path in gone:
            path.unlink(missing_ok=True)
