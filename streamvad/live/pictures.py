"""The pictures that leave a worker: which verdicts carry their frame, shrunk for the console, with each
camera's privacy regions blurred beyond recognition.

Only the worker ever holds a camera's full picture. Everything downstream (snapshots, event clips, the
console's live tiles, webhook payloads) is drawn from the frames it sends with its verdicts, so blurring
here, once, covers them all; scoring has already seen the frame as it came.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

from streamvad.config import EventsConfig
from streamvad.overlay import privacy_blur
from streamvad.sources.shrink import limit_size
from streamvad.types import Frame, Polygon, Verdict


class PicturePolicy:
    """Which verdicts go to the events process with their frame, and that frame as it may leave the worker.

    Anomalous verdicts always do (snapshots). With `events.clips` every verdict does, since a clip is cut from
    a ring buffer of every sampled frame; otherwise one frame per camera every `events.preview_s` keeps the
    console's live tile fresh.
    """

    def __init__(self, events: EventsConfig, privacy: Mapping[str, Sequence[Polygon]]) -> None:
        self.every_frame = events.clips
        self.preview_s = events.preview_s
        self.max_side = events.media_max_side
        self.privacy = {camera: list(polygons) for camera, polygons in privacy.items() if polygons}
        self._last: dict[str, float] = {}

    def picture(self, verdict: Verdict, frame: Frame) -> Frame | None:
        """The frame to send with `verdict` (shrunk and blurred), or None to send the verdict alone."""
        if not (self._due(frame.camera) or verdict.anomalous or self.every_frame):
            return None
        return self._leaving(frame)

    def preview(self, frame: Frame) -> Frame | None:
        """A frame of a camera that is not scored yet (learning), every `preview_s`: its live tile in the console
        while it learns, shrunk and blurred as any picture."""
        return self._leaving(frame) if self._due(frame.camera) else None

    def _due(self, camera: str) -> bool:
        """Whether the camera's live tile is due, and if so it counts as sent now."""
        now = time.monotonic()
        if now - self._last.get(camera, float("-inf")) < self.preview_s:
            return False
        self._last[camera] = now
        return True

    def _leaving(self, frame: Frame) -> Frame:
        small = limit_size(frame, self.max_side)
        return dataclasses.replace(small, image=privacy_blur(small.image, self.privacy.get(frame.camera, ())))
