"""RTSPReader against a real RTSP server on loopback, and against a server that never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from streamvad.errors import InputError
from streamvad.sources import Backoff, RTSPReader
from streamvad.types import Frame
from tests.rtsp_server import RTSPTestServer, rtsp_clip, rtsp_server  # noqa: F401  (fixtures)

FAST_BACKOFF = Backoff(base_s=0.2, max_s=1.0, jitter=0.1)


def _take(frames: Iterator[Frame], n: int) -> list[Frame]:
    return [next(frames) for _ in range(n)]


@pytest.mark.slow
def test_reads_sampled_frames_over_tcp(rtsp_server: RTSPTestServer) -> None:  # noqa: F811
    reader = RTSPReader(rtsp_server.url, "cam1", sample_fps=4.0, read_timeout_s=3.0, backoff=FAST_BACKOFF)
    frames = iter(reader)
    got = _take(frames, 10)
    assert [f.index for f in got] == list(range(10))
    assert got[0].pts == 0.0
    gaps = np.diff([f.pts for f in got])
    assert gaps.min() >= 0.2 - 1e-6 and gaps.max() <= 0.3 + 1e-6  # 10 fps source sampled at 4 fps
    assert all(f.image.shape == (120, 160, 3) and f.camera == "cam1" for f in got)
    status = reader.status
    assert status.online and status.reconnects == 0
    assert status.frames_in >= 2 * status.frames_emitted
    assert 5.0 < status.fps_in < 20.0
    reader.stop()
    with pytest.raises(StopIteration):
        next(frames)
    assert not status.online


@pytest.mark.slow
def test_reconnects_after_server_restart(rtsp_server: RTSPTestServer) -> None:  # noqa: F811
    reader = RTSPReader(rtsp_server.url, "cam1", sample_fps=4.0, read_timeout_s=2.0, watchdog_s=3.0,
                        backoff=FAST_BACKOFF, seed=0)
    frames = iter(reader)
    got = _take(frames, 4)
    rtsp_server.stop()
    restart = threading.Timer(1.0, rtsp_server.start)
    restart.start()
    while reader.status.reconnects == 0:  # frames still buffered from the first connection come first
        got.append(next(frames))
    got += _take(frames, 4)
    restart.join()
    status = reader.status
    assert status.reconnects >= 1 and status.online
    assert status.last_error is not None
    gaps = np.diff([f.pts for f in got])
    assert gaps.min() > 0  # the new stream restarts its clock; ours keeps going
    assert gaps.max() >= 0.9  # the outage (about 1 s) shows as a gap in pts
    assert [f.index for f in got] == list(range(len(got)))
    # the reconnected stream's first frame, and only it, has no past to measure motion against
    assert [f.restart for f in got] == [i == int(np.argmax(gaps)) + 1 for i in range(len(got))]
    reader.stop()


@pytest.mark.slow
def test_hung_server_read_timeout_then_recovers(rtsp_server: RTSPTestServer) -> None:  # noqa: F811
    reader = RTSPReader(rtsp_server.url, "cam1", sample_fps=4.0, open_timeout_s=1.0, read_timeout_s=1.0,
                        backoff=FAST_BACKOFF)
    frames = iter(reader)
    got = _take(frames, 2)
    rtsp_server.freeze()
    thaw = threading.Timer(2.5, rtsp_server.thaw)
    thaw.start()
    while reader.status.reconnects == 0:
        got.append(next(frames))
    got += _take(frames, 3)
    thaw.join()
    assert reader.status.online and reader.status.last_error
    assert np.diff([f.pts for f in got]).min() > 0
    reader.stop()


def test_unresponsive_server_times_out_and_stop_is_prompt() -> None:
    """A listener that accepts and never answers: open times out, the reader backs off and retries."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"rtsp://user:pw@127.0.0.1:{listener.getsockname()[1]}/cam"
        reader = RTSPReader(url, "mute", open_timeout_s=0.5, read_timeout_s=0.5, backoff=FAST_BACKOFF)
        frames: list[Frame] = []
        worker = threading.Thread(target=lambda: frames.extend(reader), daemon=True)
        worker.start()
        deadline = time.monotonic() + 10
        while reader.status.reconnects < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        reader.stop()
        worker.join(timeout=3)
    assert not worker.is_alive()
    assert frames == []
    status = reader.status
    assert status.reconnects >= 2 and not status.online and status.last_error
    assert "pw" not in status.url and "pw" not in status.last_error.replace("/cam", "")


def test_rejects_non_rtsp_url() -> None:
    with pytest.raises(InputError, match="not an RTSP url"):
        RTSPReader("http://127.0.0.1/cam", "cam")
    with pytest.raises(InputError, match="transport"):
        RTSPReader("rtsp://127.0.0.1/cam", "cam", transport="sctp")  # type: ignore[arg-type]
