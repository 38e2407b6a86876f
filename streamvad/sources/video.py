"""Video files as a camera, decoded with PyAV and sampled by presentation time.

Every frame must be decoded (inter-frame codecs need their references), but only the frames the
sampler keeps are converted to RGB, which is most of the cost saved at 4 fps out of 25-30.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av

from streamvad.errors import InputError
from streamvad.sources.emit import RawFrame, emit_frames
from streamvad.sources.status import SourceStatus
from streamvad.types import Frame

_FALLBACK_FPS = 25.0  # when a container states no frame rate at all


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frames: int
    width: int
    height: int
    duration: float  # seconds


def _open(path: Path) -> av.container.InputContainer:
    """Opens a video file for reading, turning every way it can fail into one InputError line."""
    if not path.is_file():
        raise InputError(f"{path}: no such video file")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: contains no video stream")
    return container


def _fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else _FALLBACK_FPS


def probe_video(path: Path) -> VideoInfo:
    """Frame rate, frame count, size and duration; counts packets when the header has no count."""
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = _fps(stream)
        frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = frames / fps
        return VideoInfo(fps=fps, frames=int(frames), width=stream.codec_context.width,
                         height=stream.codec_context.height, duration=duration)


def _decode_pass(path: Path) -> Iterator[RawFrame]:
    """One pass over the file's frames, in presentation order."""
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        period = 1.0 / _fps(stream)
        number = -1
        try:
            for frame in container.decode(stream):
                number += 1
                pts = frame.time if frame.time is not None else number * period
                yield RawFrame(number=number, pts=pts, image=lambda f=frame: f.to_ndarray(format="rgb24"),
                               source=str(path))
        except av.FFmpegError as exc:
            raise InputError(f"{path}: decoding failed after frame {number} ({exc})") from None


def iter_video(path: Path, camera: str, *, sample_fps: float | None = 4.0, labels: Sequence[int] | None = None,
               realtime: bool = False, loop: bool = False, status: SourceStatus | None = None) -> Iterator[Frame]:
    """Frames of a video file; `labels[n]` labels the n-th decoded frame.

    `realtime` paces frames by pts like a camera would; `loop` replays the file forever with pts
    continuing after the end instead of restarting at 0.
    """
    path = Path(path)
    info = probe_video(path)
    if labels is not None and len(labels) != info.frames:
        raise InputError(f"{path}: {len(labels)} labels given for {info.frames} frames")
    return emit_frames(lambda: _decode_pass(path), camera, period=1.0 / info.fps, sample_fps=sample_fps,
                       labels=labels, realtime=realtime, loop=loop, status=status)
