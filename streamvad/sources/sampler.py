"""Frame sampling by presentation time, and presentation times that never go backwards.

Cameras run at 25, 30, 29.97 fps or a variable rate, and a reconnect or a looped file restarts
their clock. Counting frames ("keep every 7th") drifts with all of these; sampling on the
presentation time keeps the requested rate whatever the source does.
"""

from __future__ import annotations

_EPS = 1e-6  # seconds of float slack, so that 0.1 * 3 counts as due at 0.3


class PtsSampler:
    """Keeps about `fps` frames per second of presentation time; `fps=None` keeps every frame.

    A frame is due when its pts reaches `next_due`. After a kept frame, `next_due` advances by one
    period from the *due time* (not the frame's pts) so the long-run rate is exact even when the
    source rate is not a multiple of `fps`. A gap longer than a period, or a pts that goes
    backwards (reconnect, loop), resynchronises on the current frame instead of bursting or
    starving.
    """

    def __init__(self, fps: float | None) -> None:
        if fps is not None and not fps > 0:
            raise ValueError(f"PtsSampler: fps must be > 0 or None, got {fps}")
        self._period = None if fps is None else 1.0 / fps
        self._next_due: float | None = None
        self._last_pts: float | None = None

    def accept(self, pts: float) -> bool:
        """True when the frame at `pts` (seconds) should be kept."""
        went_back = self._last_pts is not None and pts < self._last_pts
        self._last_pts = pts
        if self._period is None:
            return True
        if self._next_due is None or went_back:
            self._next_due = pts
        if pts + _EPS < self._next_due:
            return False
        self._next_due += self._period
        if self._next_due + _EPS <= pts:  # behind by more than a period: a gap or a jump forward
            self._next_due = pts + self._period
        return True


class MonotonicPts:
    """Maps a source's pts onto one timeline that only moves forward.

    Within a run of increasing pts the spacing is kept as is. When the source clock restarts
    (pts goes backwards or does not advance), the timeline continues one `period` after the last
    output, or `gap` seconds after it when the caller knows how long the source was away
    (a reconnect). With `zero_start` the timeline begins at 0 whatever the first pts is, as live
    streams start their clocks at arbitrary values.
    """

    def __init__(self, period: float, *, zero_start: bool = False) -> None:
        self._period = period
        self._zero_start = zero_start
        self._offset = 0.0
        self._last_out: float | None = None
        self._pending_gap: float | None = None

    @property
    def last(self) -> float | None:
        return self._last_out

    def restart(self, gap: float | None = None) -> None:
        """Announces that the next pts starts a new run (reconnect or loop)."""
        self._pending_gap = self._period if gap is None else max(gap, self._period)

    def __call__(self, pts: float) -> float:
        if self._last_out is None and self._zero_start:
            self._offset = -pts
        out = pts + self._offset
        if self._last_out is not None and (self._pending_gap is not None or out <= self._last_out):
            step = self._period if self._pending_gap is None else self._pending_gap
            self._offset = self._last_out + step - pts
            out = self._last_out + step
        self._pending_gap = None
        self._last_out = out
        return out
