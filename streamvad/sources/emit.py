"""The part every file-backed source shares: sample, label, pace, loop, count, build `Frame`s.

A source only says how to walk its native frames once (`RawFrame`s, whose pixels are produced
lazily so skipped frames are never converted); `emit_frames` does the rest the same way for
image folders and video files, so a dataset replay samples exactly like a live camera.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from streamvad.errors import InputError
from streamvad.sources.sampler import MonotonicPts, PtsSampler
from streamvad.sources.status import SourceStatus
from streamvad.types import Frame

_MAX_LATE_S = 1.0  # a realtime consumer this far behind re-anchors instead of bursting to catch up


@dataclass
class RawFrame:
    """One native frame of a source, before sampling."""

    number: int  # native frame number within one pass; indexes the labels
    pts: float  # seconds, the source's own clock
    image: Callable[[], np.ndarray]  # RGB uint8 [H, W, 3], computed only for kept frames
    source: str


class Pacer:
    """Holds frames back until their pts is due on the monotonic clock, the way a camera delivers.

    The first frame anchors pts to "now". A consumer that falls far behind re-anchors rather than
    receiving a burst, as a live camera would simply have moved on.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._anchor: float | None = None

    def wait(self, pts: float) -> None:
        now = self._clock()
        if self._anchor is None or now - (self._anchor + pts) > _MAX_LATE_S:
            self._anchor = now - pts
            return
        delay = self._anchor + pts - now
        if delay > 0:
            self._sleep(delay)


def emit_frames(one_pass: Callable[[], Iterator[RawFrame]], camera: str, *, period: float,
                sample_fps: float | None, labels: Sequence[int] | None, realtime: bool, loop: bool,
                status: SourceStatus | None) -> Iterator[Frame]:
    """Yields sampled `Frame`s from `one_pass()`, calling it again for each loop.

    `period` is the native frame period; it spaces the first frame of a loop after the last
    one so pts stays monotonic, and that frame is marked `restart`. `Frame.index` counts emitted frames
    across loops.
    """
    sampler = PtsSampler(sample_fps)
    timeline = MonotonicPts(period)
    pacer = Pacer() if realtime else None
    index = 0
    restart = False  # the next frame emitted starts a new pass
    while True:
        seen = 0
        for raw in one_pass():
            seen += 1
            if status is not None:
                status.frame_in()
            pts = timeline(raw.pts)
            if not sampler.accept(pts):
                continue
            label = _label(labels, raw)
            if pacer is not None:
                pacer.wait(pts)
            yield Frame(camera=camera, index=index, pts=pts, wall_time=time.time(), image=raw.image(),
                        label=label, source=raw.source, restart=restart)
            index += 1
            restart = False
            if status is not None:
                status.frame_emitted()
        if not loop or seen == 0:
            return
        timeline.restart()
        restart = True


def _label(labels: Sequence[int] | None, raw: RawFrame) -> int | None:
    if labels is None:
        return None
    if raw.number >= len(labels):
        raise InputError(f"{raw.source}: frame {raw.number} has no label (only {len(labels)} labels given)")
    return int(labels[raw.number])
