"""Frame sources: iterators of `Frame` from RTSP cameras, devices, video files and image folders.

Sources know nothing of models; `open_source` picks the right one from a camera's url.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from streamvad.errors import InputError
from streamvad.sources.device import DEVICE_PREFIX, DeviceReader
from streamvad.sources.images import iter_image_folder, list_images, read_image
from streamvad.sources.live import Backoff, LiveReader
from streamvad.sources.rtsp import RTSP_SCHEMES, RTSPReader
from streamvad.sources.sampler import MonotonicPts, PtsSampler
from streamvad.sources.status import SourceStatus
from streamvad.sources.video import VideoInfo, iter_video, probe_video
from streamvad.types import Frame

__all__ = [
    "Backoff", "DeviceReader", "LiveReader", "MonotonicPts", "PtsSampler", "RTSPReader", "SourceStatus",
    "VideoInfo", "iter_image_folder", "iter_video", "list_images", "open_source", "probe_video", "read_image",
]


def open_source(url: str, camera: str, *, sample_fps: float | None = 4.0, loop: bool = False,
                realtime: bool = False, status: SourceStatus | None = None) -> Iterator[Frame]:
    """Frames from `url`: rtsp(s)://, /dev/videoN, a folder of images, or a video file.

    Live sources ignore `loop` and `realtime` (they are both by nature) and run until the
    iterator is closed.
    """
    if url.lower().startswith(RTSP_SCHEMES):
        return iter(RTSPReader(url, camera, sample_fps=sample_fps, status=status))
    if url.startswith(DEVICE_PREFIX):
        return iter(DeviceReader(url, camera, sample_fps=sample_fps, status=status))
    path = Path(url)
    if path.is_dir():
        return iter_image_folder(path, camera, sample_fps=sample_fps, realtime=realtime, loop=loop, status=status)
    if path.is_file():
        return iter_video(path, camera, sample_fps=sample_fps, realtime=realtime, loop=loop, status=status)
    if "://" in url:
        raise InputError(f"{url}: unsupported source (expected rtsp://, rtsps://, /dev/videoN, a folder or a file)")
    raise InputError(f"{url}: no such file, folder or device")
