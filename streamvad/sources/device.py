"""Local capture devices (/dev/videoN) through FFmpeg's v4l2 input.

A USB camera unplugged and plugged back behaves like a network camera that went away, so the
device reader inherits the same reconnect, watchdog and status logic as RTSP.
"""

from __future__ import annotations

from pathlib import Path

import av

from streamvad.errors import InputError
from streamvad.sources.live import Backoff, LiveReader
from streamvad.sources.status import SourceStatus

DEVICE_PREFIX = "/dev/video"


class DeviceReader(LiveReader):
    """Reads a V4L2 device forever; `video_size` ("640x480") and `framerate` ask the driver for a mode."""

    def __init__(self, device: str, camera: str, *, sample_fps: float | None = 4.0, video_size: str | None = None,
                 framerate: float | None = None, read_timeout_s: float = 5.0, watchdog_s: float = 10.0,
                 backoff: Backoff | None = None, status: SourceStatus | None = None) -> None:
        if not Path(device).exists():
            raise InputError(f"{device}: no such video device")
        super().__init__(device, camera, sample_fps=sample_fps, open_timeout_s=read_timeout_s,
                         read_timeout_s=read_timeout_s, watchdog_s=watchdog_s, backoff=backoff, status=status)
        self.video_size = video_size
        self.framerate = framerate

    def _open(self) -> av.container.InputContainer:
        options = {}
        if self.video_size:
            options["video_size"] = self.video_size
        if self.framerate:
            options["framerate"] = f"{self.framerate:g}"
        return av.open(self.url, mode="r", format="v4l2", options=options,
                       timeout=(self.open_timeout_s, self.read_timeout_s))
