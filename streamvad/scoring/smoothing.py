"""A frame's score as the mean over the last `smooth_s` seconds of its camera's stream.

Anomalies in surveillance last seconds (a cyclist crosses the walkway for many frames), while the
noise of one frame's score does not: a walker's flow vector jitters, one patch looks odd for a frame.
A causal mean over a short window of stream time keeps the first kind and averages out the second.
The window is in seconds of pts, not frames, so 4 fps live and 10 fps replay average the same span
of time, and a shed frame shortens the window instead of stretching it.

The thresholds stay the ones calibrated on single frames: a window's mean passes a threshold only
when one of its frames does. That does not bound events, though: a one-frame spike, which the events'
2-of-4 hysteresis ignores, becomes two anomalous frames after averaging. So the whole-score window is opt-in
(`scoring.smooth_s`, 0 by default). The motion part has a window of its own, calibrated on normal footage
windowed alike (`normality.motion.smooth_s`, motion/fusion.py), which `causal_means` applies at calibration.

A window is a mean over the last `seconds` ("mean") or exponential by stream time ("exponential", `seconds` its
time constant tau: m = m' + (1 - exp(-dt / tau)) (x - m'), m' the camera's previous value). The mean weighs a frame
`seconds` old as much as the newest and then drops it; the exponential weighs the newest most and forgets
gradually, so it can smooth as much as a longer mean while it rises as early as a short one. Both reset when pts
goes backwards, and both forget what came before a gap in the stream (the exponential by the gap's dt).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from math import exp

import numpy as np

from streamvad.config import Window
from streamvad.types import Verdict

_EPS = 1e-6  # pts are floats: a frame exactly `smooth_s` old has left the window


class Smoother:
    """Each camera's recent (pts, score, raw score); `apply` replaces every verdict's scores by the window's value
    (its mean, or the exponential's state) and re-decides it. Verdicts of one camera must come in stream order, as
    the tracker's frames do; a pts that goes backwards (a restarted stream, the next replayed clip) starts the
    camera afresh."""

    def __init__(self, seconds: float, window: Window = "mean") -> None:
        self.seconds = seconds
        self.window = window
        self._recent: dict[str, deque[tuple[float, float, float]]] = {}

    def apply(self, verdicts: Sequence[Verdict]) -> list[Verdict]:
        if self.seconds <= 0:
            return list(verdicts)
        out = []
        for v in verdicts:
            score, raw = self.mean(v.key.camera, v.key.pts, v.score, v.raw_score)
            out.append(replace(v, score=score, raw_score=raw, anomalous=raw > v.threshold))
        return out

    def mean(self, camera: str, pts: float, score: float, raw: float) -> tuple[float, float]:
        """(score, raw score) of `camera`'s window ending with this frame (the frame's own with no window)."""
        if self.seconds <= 0:
            return score, raw
        recent = self._recent.setdefault(camera, deque())
        if recent and pts < recent[-1][0]:
            recent.clear()
        if self.window == "exponential":
            if recent:  # the camera's previous value, one entry
                last, s, r = recent.pop()
                keep = exp(-(pts - last) / self.seconds)
                score, raw = score + keep * (s - score), raw + keep * (r - raw)
            recent.append((pts, score, raw))
            return score, raw
        recent.append((pts, score, raw))
        while recent[0][0] <= pts - self.seconds + _EPS:
            recent.popleft()
        return sum(r[1] for r in recent) / len(recent), sum(r[2] for r in recent) / len(recent)


def causal_means(values: np.ndarray, streams: Sequence[object], pts: np.ndarray, seconds: float,
                 window: Window = "mean") -> np.ndarray:
    """Each value replaced by its stream's `window` over the last `seconds` of pts, up to and including it, as a
    `Smoother` fed the same rows in order gives them: what calibration applies to normal frames so that a
    threshold is cut from the statistic that serving compares with it."""
    smoother = Smoother(seconds, window)
    return np.array([smoother.mean(str(stream), float(t), float(v), float(v))[0]
                     for stream, t, v in zip(streams, pts, values, strict=True)], dtype=np.float32)
