"""Camera tampering and faults, told apart from scene anomalies: covered or black, frozen, moved.

These are what a site most needs to hear about and what an anomaly detector handles worst: a covered
lens is "anomalous" in every patch, forever, and a frozen feed is perfectly normal forever. So each
camera's frames are checked, from what the worker already has (the frame and its verdict), for:
- covered: the frame is dark (mean grey level below `dark_level`) or featureless (its grey standard
  deviation below `flat_std`: a hand, tape, a lens cap, fog);
- frozen: the frame is identical to the previous one (real sensors never repeat a frame exactly), or
  its pts did not advance;
- moved: most of the picture changes at once (`moved_fraction` of a grey thumbnail), which a person or a
  vehicle never does but a turned, shifted or refocused camera does, and the frames stay anomalous
  after it (the new view is not the normal one).
A condition must hold for `hold_s` of stream time (`frozen_s` for frozen: a static scene's encoder may
repeat frames exactly for a while) before the frame is marked, so a passing truck raises nothing; the
marked verdicts then open and close their own events (`Event.type`) with the usual hysteresis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from streamvad.config import TamperConfig
from streamvad.types import Frame, Verdict

_THUMB = (64, 48)  # width, height of the grey thumbnail a frame is compared by
_CHANGED = 25  # grey-level change of a thumbnail pixel that counts as the picture changing there


@dataclass
class _State:
    thumb: np.ndarray
    pts: float
    fault: str | None  # the condition the last frame showed...
    since: float  # ...and since which pts it has held


def _condition(cfg: TamperConfig, thumb: np.ndarray, last: _State | None, pts: float, verdict: Verdict) -> str | None:
    if thumb.mean() < cfg.dark_level or thumb.std() < cfg.flat_std:
        return "covered"
    if last is None:
        return None
    if pts <= last.pts or not np.any(thumb != last.thumb):
        return "frozen"
    changed = float((cv2.absdiff(thumb, last.thumb) > _CHANGED).mean()) >= cfg.moved_fraction
    if changed or (last.fault == "moved" and verdict.anomalous):
        return "moved"
    return None


class TamperMonitor:
    """Per-camera state (the previous thumbnail and pts, and since when each condition holds)."""

    def __init__(self, cfg: TamperConfig) -> None:
        self.cfg = cfg
        self._cams: dict[str, _State] = {}

    def annotate(self, frames: Sequence[Frame], verdicts: Sequence[Verdict]) -> list[Verdict]:
        """The verdicts, with `tamper` set where a condition has held for `hold_s` (frames in stream order)."""
        if not self.cfg.enabled:
            return list(verdicts)
        return [self._check(f, v) for f, v in zip(frames, verdicts, strict=True)]

    def _check(self, frame: Frame, verdict: Verdict) -> Verdict:
        thumb = cv2.resize(cv2.cvtColor(frame.image, cv2.COLOR_RGB2GRAY), _THUMB, interpolation=cv2.INTER_AREA)
        last = self._cams.get(frame.camera)
        if last is not None and frame.pts < last.pts - self.cfg.hold_s:  # a restarted stream starts afresh
            last = None
        found = _condition(self.cfg, thumb, last, frame.pts, verdict)
        since = last.since if last is not None and last.fault == found else frame.pts
        self._cams[frame.camera] = _State(thumb, max(frame.pts, last.pts) if last else frame.pts, found, since)
        hold = self.cfg.frozen_s if found == "frozen" else self.cfg.hold_s
        if found is None or frame.pts - since < hold:
            return verdict
        return replace(verdict, tamper=found)
