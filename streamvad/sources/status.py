"""What a reader reports about its source, for logs, metrics and the health endpoint.

One `SourceStatus` per camera is owned by the reader that fills it and read (never written) by
other threads, so every field is a plain value that is safe to read at any moment.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

_RATE_WINDOW = 32  # arrivals the incoming frame rate is measured over
_MIN_SPAN_S = 0.5  # shorter spans are bursts (buffered frames after connecting), not a rate


@dataclass
class SourceStatus:
    """Live counters of one source.

    `frames_in` counts decoded frames, `frames_emitted` the frames the sampler kept and the reader
    yielded, `frames_dropped` frames that were decoded but lost (undecodable or dropped downstream
    under backpressure); frames the sampler skips on purpose are `frames_in - frames_emitted`.
    `fps_in` is the arrival rate of decoded frames over the last few dozen frames, by wall clock
    (0 until half a second of arrivals has been seen).
    """

    camera: str
    url: str
    online: bool = False
    fps_in: float = 0.0
    frames_in: int = 0
    frames_emitted: int = 0
    frames_dropped: int = 0
    reconnects: int = 0
    last_frame_wall: float | None = None
    last_error: str | None = None
    _arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=_RATE_WINDOW), repr=False)

    def frame_in(self, now: float | None = None) -> None:
        """Counts one decoded frame and updates the incoming rate."""
        now = time.monotonic() if now is None else now
        self._arrivals.append(now)
        self.frames_in += 1
        self.last_frame_wall = time.time()
        span = self._arrivals[-1] - self._arrivals[0]
        if span >= _MIN_SPAN_S:
            self.fps_in = (len(self._arrivals) - 1) / span

    def frame_emitted(self) -> None:
        self.frames_emitted += 1

    def went_online(self) -> None:
        """Frames flow again; `last_error` stays, so an operator can still see why it went down."""
        self.online = True

    def went_offline(self, error: str | None) -> None:
        """Marks the source down; the rate restarts from scratch once frames flow again."""
        self.online = False
        self.fps_in = 0.0
        self._arrivals.clear()
        if error is not None:
            self.last_error = error

    def as_dict(self) -> dict[str, Any]:
        """The public fields, JSON-ready, for the health endpoint."""
        data = asdict(self)
        data.pop("_arrivals")
        return data
