"""One camera's reader: its source's sampled frames onto the frame queue, and its status to the supervisor.

The reader is the only part that knows the camera's protocol; everything downstream sees `Frame`s.
Under policy "drop" a frame the worker(s) cannot take right now is dropped and counted in the
camera's status (live cameras: recent frames matter more than complete ones); under "block" the
reader waits (replays: every frame is scored). A finite source ends with an explicit EOS. Frames
larger than `transport.frame_max_side` are shrunk here (see sources/shrink.py), where the cost is spread
over cameras, not in the worker that decodes all of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from streamvad import security
from streamvad.config import WIRE_MAX_SIDE, CameraConfig, TransportConfig
from streamvad.live.supervisor import StatusReporter, Terminated, setup_child
from streamvad.sources import SourceStatus, open_source
from streamvad.sources.live import redact_url
from streamvad.sources.shrink import limit_size
from streamvad.transport import FramePusher

log = logging.getLogger(__name__)


def run_reader(camera: CameraConfig, transport: TransportConfig, *, endpoints: Sequence[str] | None = None,
               status_endpoint: str | None = None, status_interval_s: float = 1.0,
               stop: threading.Event | None = None) -> SourceStatus:
    """Read `camera` until its source ends or `stop` is set; returns the final status.

    `endpoints` are the workers' frame endpoints (default `transport.frames`); with several, ZeroMQ
    deals frames round-robin among the workers that have room.
    """
    stop = stop or threading.Event()
    status = SourceStatus(camera=camera.id, url=redact_url(camera.url))
    pusher = FramePusher(list(endpoints or [transport.frames]), hwm=transport.hwm, policy=transport.policy,
                         quality=transport.jpeg_quality)
    state = {"value": "starting"}

    def snapshot() -> dict[str, Any]:
        return {**status.as_dict(), "state": state["value"], "sent": pusher.sent}

    reporter = StatusReporter(status_endpoint, camera.id, "reader", snapshot, status_interval_s).start()
    frames = open_source(camera.url, camera.id, sample_fps=camera.fps, loop=camera.loop, realtime=camera.realtime,
                         status=status)
    state["value"] = "running"
    try:
        for frame in frames:
            if not status.online:
                status.went_online()  # file and folder sources do not mark themselves; live ones already have
            if not pusher.send(limit_size(frame, transport.frame_max_side or WIRE_MAX_SIDE)):
                status.frames_dropped += 1
            if stop.is_set():
                break
        else:
            status.went_offline("end of stream")
            pusher.send_eos(camera.id)
            log.info("%s: end of stream after %d frames (%d dropped)", camera.id, pusher.sent, status.frames_dropped)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
        state["value"] = "stopped"
        reporter.close()
        pusher.close()
    return status


def reader_main(camera: CameraConfig, transport: TransportConfig, endpoints: list[str], status_endpoint: str,
                status_interval_s: float, log_level: int) -> None:
    """Process entry point: exits 0 when a finite source ends or on SIGTERM; a crash exits non-zero."""
    stop = threading.Event()
    setup_child(stop, log_level, interrupt=True)
    security.configure(transport)
    try:
        run_reader(camera, transport, endpoints=endpoints, status_endpoint=status_endpoint,
                   status_interval_s=status_interval_s, stop=stop)
    except Terminated:
        log.info("%s: reader stopped", camera.id)
