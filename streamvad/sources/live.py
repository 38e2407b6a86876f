"""Live sources (network cameras, local devices): read forever, survive outages, report status.

A camera that drops off the network, a server that restarts, a stream that keeps the socket open
but stops sending pictures: all end the same way here, with the reader closing the connection,
waiting an exponentially growing, jittered delay and opening it again, while the frames it
yields keep one monotonic pts timeline and one running index.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import av

from streamvad.sources.sampler import MonotonicPts, PtsSampler
from streamvad.sources.status import SourceStatus
from streamvad.types import Frame

log = logging.getLogger(__name__)

_NOMINAL_PERIOD = 1.0 / 25  # pts step used only when a live clock jumps backwards


@dataclass(frozen=True)
class Backoff:
    """Delay before reconnect attempt n (from 0): base * 2**n, capped at max_s, then +-jitter.

    Jitter (a fraction of the delay) keeps many cameras behind one failed switch from all
    reconnecting in the same instant.
    """

    base_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        nominal = min(self.max_s, self.base_s * 2.0 ** min(attempt, 30))
        return max(0.0, nominal * (1.0 + rng.uniform(-self.jitter, self.jitter)))


class StalledStreamError(Exception):
    """Packets may still arrive, but no picture has been decoded for the watchdog's time."""


def redact_url(url: str) -> str:
    """The url without its password, fit for logs and the health endpoint."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class LiveReader:
    """Iterates sampled `Frame`s from a live source until `stop()` is called.

    Subclasses only say how to open the source (`_open`). Timeouts: `open_timeout_s` bounds
    connecting, `read_timeout_s` bounds any single blocking read, and `watchdog_s` bounds the
    time without a decoded picture even while bytes still flow. `stop()` may be called from any
    thread; it takes effect at the next packet, during a backoff wait at once, and otherwise
    within the read timeout.
    """

    def __init__(self, url: str, camera: str, *, sample_fps: float | None = 4.0, open_timeout_s: float = 10.0,
                 read_timeout_s: float = 5.0, watchdog_s: float = 10.0, backoff: Backoff | None = None,
                 status: SourceStatus | None = None, seed: int | None = None) -> None:
        self.url = url
        self.camera = camera
        self.sample_fps = sample_fps
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.watchdog_s = watchdog_s
        self.backoff = backoff or Backoff()
        self.status = status or SourceStatus(camera=camera, url=redact_url(url))
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._last_picture: float | None = None  # monotonic time of the last decoded picture

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _open(self) -> av.container.InputContainer:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        try:
            yield from self._run()
        finally:
            self.status.went_offline(None)

    def _run(self) -> Iterator[Frame]:
        sampler = PtsSampler(self.sample_fps)
        timeline = MonotonicPts(_NOMINAL_PERIOD, zero_start=True)
        index = 0
        failures = 0
        first_attempt = True
        restart = False  # the next frame is a reconnected stream's first: no continuation of the last one seen
        while not self._stop.is_set():
            if not first_attempt:
                self.status.reconnects += 1
                restart = True
                if self._last_picture is not None:  # pts resumes after the outage, as the wall clock did
                    timeline.restart(gap=time.monotonic() - self._last_picture)
            first_attempt = False
            error = "stream ended"
            try:
                with self._open() as container:
                    for pts, frame in self._decode(container, timeline):
                        failures = 0
                        if not sampler.accept(pts):
                            continue
                        yield Frame(camera=self.camera, index=index, pts=pts, wall_time=time.time(),
                                    image=frame.to_ndarray(format="rgb24"), source=self.status.url, restart=restart)
                        index += 1
                        restart = False
                        self.status.frame_emitted()
            except (av.FFmpegError, OSError, StalledStreamError) as exc:
                error = f"{type(exc).__name__}: {exc}".replace(self.url, self.status.url)
            if self._stop.is_set():
                return
            delay = self.backoff.delay(failures, self._rng)
            log.warning("%s (%s): %s; reconnecting in %.1f s", self.camera, self.status.url, error, delay)
            self.status.went_offline(error)
            failures += 1
            self._stop.wait(delay)

    def _decode(self, container: av.container.InputContainer,
                timeline: MonotonicPts) -> Iterator[tuple[float, av.VideoFrame]]:
        """Decoded pictures of one connection with their timeline pts; raises StalledStreamError."""
        if not container.streams.video:
            raise StalledStreamError("the stream has no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        connected = time.monotonic()
        last_picture = connected
        for packet in container.demux(stream):
            if self._stop.is_set():
                return
            now = time.monotonic()
            if now - last_picture > self.watchdog_s:
                raise StalledStreamError(f"no picture for {now - last_picture:.1f} s")
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                self.status.frames_dropped += 1
                continue
            for frame in frames:
                last_picture = self._last_picture = time.monotonic()
                if not self.status.online:
                    log.info("%s (%s): receiving frames", self.camera, self.status.url)
                    self.status.went_online()
                self.status.frame_in(last_picture)
                raw_pts = frame.time if frame.time is not None else last_picture - connected
                yield timeline(raw_pts), frame
