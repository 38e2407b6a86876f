"""A real RTSP server on loopback for the reader tests: GStreamer's gst-rtsp-server.

Why GStreamer: it serves RTP interleaved over the RTSP TCP connection (the transport the reader
uses by default) as well as UDP, and it is packaged by Debian. rtsp-server-perl was tried first:
it only relays RTP over UDP and answers a TCP SETUP with "400 Bad Request".

The server runs in Debian's own python (`/usr/bin/python3`, where python3-gi lives), not in the
project's venv. Each client gets its own playback of the clip from the start, paced in real time.
Debian packages: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
gstreamer1.0-plugins-good.
"""

from __future__ import annotations

import functools
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from tests.ports import HeldPort

SYSTEM_PYTHON = "/usr/bin/python3"
DEBIAN_PACKAGES = "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
_PAYLOADERS = {"h264": "rtph264pay", "mpeg4": "rtpmp4vpay"}

_SERVER = """
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer
Gst.init(None)
port, mount, clip, payloader = sys.argv[1:5]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(f"( filesrc location={clip} ! qtdemux ! {payloader} name=pay0 pt=96 config-interval=1 )")
factory.set_shared(False)
server.get_mount_points().add_factory(mount, factory)
if server.attach(None) == 0:
    sys.exit("cannot listen on port " + port)
print("ready", flush=True)
GLib.MainLoop().run()
"""

_PROBE = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("filesrc", "qtdemux", "rtph264pay") if Gst.ElementFactory.find(e) is None]
if missing:
    raise SystemExit("missing GStreamer elements: " + " ".join(missing))
"""


@functools.cache
def gstreamer_missing() -> str | None:
    """Why the server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found; apt-get install {DEBIAN_PACKAGES}"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", _PROBE], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        detail = (probe.stderr.strip().splitlines() or ["missing GStreamer elements"])[-1]
        return f"GStreamer RTSP server unavailable ({detail}); apt-get install {DEBIAN_PACKAGES}"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _codec(clip: Path) -> str:
    with av.open(str(clip)) as container:
        return container.streams.video[0].codec_context.name


class RTSPTestServer:
    """Serves one clip at rtsp://127.0.0.1:<port>/cam; can be stopped and started on the same port, which is held
    while it is down (`HeldPort`)."""

    def __init__(self, clip: Path, *, port: int | None = None, mount: str = "/cam") -> None:
        self.clip = Path(clip)
        self._held = HeldPort(port or 0)
        self.port = self._held.port
        self.mount = mount
        self.payloader = _PAYLOADERS[_codec(self.clip)]
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def start(self, timeout_s: float = 15.0) -> None:
        """Starts the server and returns once it answers an RTSP DESCRIBE for the mount."""
        self._held.release()
        self._proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", _SERVER, str(self.port), self.mount, str(self.clip), self.payloader],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"RTSP test server exited: {self._proc.stderr.read().strip()}")
            if self._describes():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"RTSP test server on port {self.port} not ready after {timeout_s} s")

    def _describes(self) -> bool:
        request = f"DESCRIBE {self.url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(request.encode())
                return sock.recv(64).startswith(b"RTSP/1.0 200")
        except OSError:
            return False

    def freeze(self) -> None:
        """Suspends the server: connections stay open but nothing is sent, like a hung camera."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Kills the server abruptly, as a crashed camera or server would disappear."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None
        self._held.hold()


@pytest.fixture(scope="session")
def rtsp_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40 s synthetic scene, small so serving and decoding it is cheap."""
    from streamvad.datasets.synthetic import make_scene

    return make_scene(tmp_path_factory.mktemp("rtsp"), seconds=40, fps=10, size=(120, 160), seed=3,
                      name="cam").path


@pytest.fixture
def rtsp_server(rtsp_clip: Path) -> Iterator[RTSPTestServer]:
    """A running loopback RTSP server (skips the test when GStreamer's server is not installed)."""
    reason = gstreamer_missing()
    if reason:
        pytest.skip(reason)
    server = RTSPTestServer(rtsp_clip)
    server.start()
    try:
        yield server
    finally:
        server.stop()
