"""Hostile and broken input, as an attacker or a fault would send it: every message and file is bounded
before it is decoded, and each refusal is one line (real sockets on loopback, real files)."""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import zmq
from PIL import Image

from streamvad.cli import main
from streamvad.config import WIRE_MAX_SIDE, StreamVADConfig
from streamvad.errors import ConfigError, InputError
from streamvad.live.events_process import _FRAME_STASH_BYTES, EventsProcess
from streamvad.sources.images import read_image
from streamvad.transport import MAX_MESSAGE_BYTES, FramePuller, WireError, decode, encode_frame
from streamvad.types import Frame
from tests.test_worker import tiny_model

__all__ = ["tiny_model"]
TCP = "tcp://127.0.0.1:*"


def frame(h: int = 48, w: int = 64, camera: str = "cam1", index: int = 0) -> Frame:
    image = np.random.default_rng(index).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Frame(camera, index, pts=index * 0.25, wall_time=0.0, image=image)


def jpeg_claiming(h: int, w: int) -> bytes:
    """A tiny JPEG whose header (SOF0) claims h x w pixels: a decompression bomb under 1 kB."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 30)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def bomb_message(h: int, w: int, header_shape: tuple[int, int]) -> list[bytes]:
    header = json.loads(encode_frame(frame(), "jpeg")[0]) | {"shape": [*header_shape, 3]}
    return [json.dumps(header).encode(), jpeg_claiming(h, w)]


def test_a_jpeg_bomb_is_refused_before_it_is_decoded() -> None:
    with pytest.raises(WireError, match=rf"field 'shape.0': Input should be less than or equal to {WIRE_MAX_SIDE}"):
        decode(bomb_message(9000, 9000, (9000, 9000)))
    with pytest.raises(WireError, match=r"JPEG is 9000x9000, header says 48x64; not decoded"):
        decode(bomb_message(9000, 9000, (48, 64)))  # a header that lies about the JPEG inside


def test_a_worker_socket_fed_jpeg_bombs_stays_small_and_keeps_receiving() -> None:
    """20 frames claiming 9000x9000 (each would decode to 243 MB): refused from their headers, counted, and
    the process's peak memory grows by well under 150 MB; the next honest frame still arrives."""
    puller = FramePuller(TCP)
    raw = zmq.Context.instance().socket(zmq.PUSH)
    raw.connect(puller.endpoint)
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        for _ in range(10):
            raw.send_multipart(bomb_message(9000, 9000, (48, 64)))
            raw.send_multipart(bomb_message(9000, 9000, (9000, 9000)))
        raw.send_multipart(encode_frame(frame(index=7), "jpeg"))
        msg = puller.recv(5000)
        assert msg is not None and msg.frame is not None and msg.frame.index == 7
        assert puller.malformed == 20
        assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024 < 150
    finally:
        raw.close(0)
        puller.close()


def test_a_message_over_the_size_bound_is_dropped_by_zeromq_and_the_socket_lives_on() -> None:
    puller = FramePuller(TCP)
    ctx = zmq.Context.instance()
    big, honest = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
    big.connect(puller.endpoint)
    try:
        big.send_multipart([b"{}", bytes(MAX_MESSAGE_BYTES + 1)])
        assert puller.recv(500) is None  # never delivered: ZeroMQ drops it (and that peer) before a read
        honest.connect(puller.endpoint)
        honest.send_multipart(encode_frame(frame(index=3), "raw"))
        msg = puller.recv(5000)
        assert msg is not None and msg.frame is not None and msg.frame.index == 3
    finally:
        big.close(0)
        honest.close(0)
        puller.close()


@pytest.mark.parametrize("camera", ["cam1\nWARNING forged log line", "", "x" * 129, "cam/../1", "caméra"])
def test_camera_ids_are_bounded_at_decode(camera: str) -> None:
    header = json.loads(encode_frame(frame(), "raw")[0]) | {"camera": camera}
    with pytest.raises(WireError, match=r"field 'camera': String should match pattern") as err:
        decode([json.dumps(header).encode(), encode_frame(frame(), "raw")[1]])
    assert "\n" not in str(err.value)


def test_the_events_process_shrinks_stashed_frames_and_bounds_the_stash_in_bytes() -> None:
    """30 raw 2000x2000 frames on the verdict channel (12 MB each as sent) are kept at frame_max_side, and the
    stash never holds more than its byte bound, however many arrive."""
    events = EventsProcess(StreamVADConfig())
    for i in range(30):
        events.handle(decode(encode_frame(frame(2000, 2000, index=i), "raw")))
        assert events._stash_bytes <= _FRAME_STASH_BYTES
    kept = list(events._frames.values())  # (image, the JPEG it came as: none for a raw frame)
    assert kept and all(max(img.shape[:2]) <= 640 and jpeg is None for img, jpeg in kept)
    assert events._stash_bytes == sum(img.nbytes for img, _ in kept)


def _png_claiming(h: int, w: int) -> bytes:
    """A small PNG whose IHDR (with a valid CRC) claims h x w pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    at = data.index(b"IHDR")
    data[at + 4:at + 12] = struct.pack(">II", w, h)
    data[at + 17:at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at:at + 17])))
    return bytes(data)


def test_a_png_bomb_in_an_image_folder_is_one_line_and_exit_2(tmp_path: Path, tiny_model: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "000.png").write_bytes(_png_claiming(20000, 20000))  # the first frame, which replay reads
    Image.new("RGB", (64, 48)).save(folder / "001.png")
    (folder / "002.png").write_bytes(_png_claiming(12000, 12000))  # under PIL's own bound, over ours
    with pytest.raises(InputError, match=r"002\.png: 12000x12000 image, more than the 33 megapixels .*not decoded"):
        read_image(folder / "002.png")
    with pytest.raises(InputError, match=r"000\.png: not a readable image \(.*decompression bomb"):
        read_image(folder / "000.png")
    out = tmp_path / "replay.jsonl"
    assert main(["replay", "--model", str(tiny_model), str(folder), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "000.png: not a readable image" in err[0]


@pytest.mark.parametrize(("text", "message"), [
    (b"scoring:\n  method: distance\n  # caf\xe9\n", r"not UTF-8 text \(byte 35\)"),
    (b"scoring: &s\n  motion: *s\n", "a YAML anchor refers to itself"),
])
def test_broken_yaml_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: bytes,
                                            message: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_bytes(text)
    from streamvad.config import load_config

    with pytest.raises(ConfigError, match=message):
        load_config(path)
    assert main(["replay", "--config", str(path), "--model", str(tmp_path), str(tmp_path), "--out",
                 str(tmp_path / "out.jsonl"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "site.yaml" in err[0]


def test_ipc_sockets_are_bound_only_in_a_private_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # as /tmp is: any local user could connect to, or take, a socket file here
    with pytest.raises(WireError, match=r"shared: ipc:// socket directory must be private .* mode 777"):
        FramePuller(f"ipc://{shared}/frames")
    fresh = tmp_path / "run" / "streamvad"
    puller = FramePuller(f"ipc://{fresh}/frames")  # created 0700 by the first to bind
    try:
        assert fresh.stat().st_mode & 0o777 == 0o700
    finally:
        puller.close()
    cfg = StreamVADConfig().transport
    assert all(e.startswith("ipc://") and e.rsplit("/", 1)[0].endswith(("/streamvad", f"/streamvad-{os.getuid()}"))
               for e in (cfg.frames, cfg.verdicts, cfg.status))


def test_the_control_socket_answers_a_malformed_request_and_counts_it() -> None:
    """serve's control socket must answer every request (REP), so garbage gets an error back, is counted, and
    the next well-formed request is handled as usual."""
    import threading

    from streamvad.bench.throughput import free_tcp_endpoint
    from streamvad.messages import WIRE_VERSION, EnrolRequest
    from streamvad.transport import ControlServer, control_request

    server = ControlServer(free_tcp_endpoint())
    handled: list[EnrolRequest] = []

    def handle(request: EnrolRequest) -> tuple[bool, str]:
        handled.append(request)
        return True, f"{request.camera}: ok"

    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            server.serve_one(handle, 50)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.connect(server.endpoint)
        for garbage in (b"\xff\x00 not json", json.dumps({"v": 1, "type": "enrol", "camera": "a\nb",
                                                            "duration_s": 30}).encode(),
                        json.dumps({"v": 1, "type": "enrol", "camera": "gate", "duration_s": -5}).encode()):
            sock.send(garbage)
            assert sock.poll(5000), "no answer"
            reply = json.loads(sock.recv())
            assert reply["ok"] is False and reply["message"].startswith("control header"), reply
        sock.close(0)
        good = control_request(server.endpoint, EnrolRequest(v=WIRE_VERSION, type="enrol", camera="gate",
                                                             duration_s=30.0))
        assert good.ok and good.message == "gate: ok" and [r.camera for r in handled] == ["gate"]
        assert server.malformed == 3
    finally:
        stop.set()
        thread.join(5)
        server.close()
    with pytest.raises(WireError, match=r"no answer on .* is `serve` running"):
        control_request(free_tcp_endpoint(), EnrolRequest(v=WIRE_VERSION, type="enrol", camera="gate",
                                                          duration_s=30.0), timeout_s=0.5)
