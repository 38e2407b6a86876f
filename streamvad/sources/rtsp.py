"""RTSP cameras through PyAV (FFmpeg), over TCP by default.

TCP interleaving is the default because UDP loses packets (smeared frames) on busy networks and
does not cross NAT or most firewalls; `transport="udp"` remains for servers that only speak UDP.
FFmpeg's RTSP socket timeout is the `timeout` option in microseconds (FFmpeg 5 removed the old
`stimeout`); PyAV's own `timeout=(open, read)` additionally bounds each blocking call.
"""

from __future__ import annotations

from typing import Literal

import av

from streamvad.errors import InputError
from streamvad.sources.live import Backoff, LiveReader
from streamvad.sources.status import SourceStatus

RTSP_SCHEMES = ("rtsp://", "rtsps://")
_ANALYZE_US = 1_000_000  # probe one second of stream instead of FFmpeg's default five


class RTSPReader(LiveReader):
    """Reads an rtsp:// or rtsps:// stream forever, reconnecting with backoff; see `LiveReader`."""

    def __init__(self, url: str, camera: str, *, sample_fps: float | None = 4.0,
                 transport: Literal["tcp", "udp"] = "tcp", open_timeout_s: float = 10.0,
                 read_timeout_s: float = 5.0, watchdog_s: float = 10.0, backoff: Backoff | None = None,
                 status: SourceStatus | None = None, seed: int | None = None) -> None:
        if not url.lower().startswith(RTSP_SCHEMES):
            raise InputError(f"{url}: not an RTSP url (expected rtsp:// or rtsps://)")
        if transport not in ("tcp", "udp"):
            raise InputError(f"{url}: RTSP transport must be 'tcp' or 'udp', got {transport!r}")
        super().__init__(url, camera, sample_fps=sample_fps, open_timeout_s=open_timeout_s,
                         read_timeout_s=read_timeout_s, watchdog_s=watchdog_s, backoff=backoff, status=status,
                         seed=seed)
        self.transport = transport

    def ffmpeg_options(self) -> dict[str, str]:
        return {
            "rtsp_transport": self.transport,
            "timeout": str(int(self.read_timeout_s * 1_000_000)),
            "analyzeduration": str(_ANALYZE_US),
        }

    def _open(self) -> av.container.InputContainer:
        return av.open(self.url, mode="r", options=self.ffmpeg_options(),
                       timeout=(self.open_timeout_s, self.read_timeout_s))
