"""Wire format round trips and real ZeroMQ sockets over tcp:// loopback and ipc://."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamvad.config import TransportConfig
from streamvad.transport import (
    FramePuller,
    FramePusher,
    Message,
    WireError,
    decode,
    decode_frame,
    decode_verdict,
    encode_eos,
    encode_frame,
    encode_status,
    encode_verdict,
    relay,
)
from streamvad.types import Frame, FrameKey, Verdict

TCP = "tcp://127.0.0.1:*"


def make_frame(camera: str = "cam1", index: int = 0, h: int = 48, w: int = 64, label: int | None = 1) -> Frame:
    """A smooth colour gradient (JPEG-friendly) with the index burnt into one pixel row."""
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], -1).astype(np.uint8)
    return Frame(camera, index, pts=index * 0.25, wall_time=1000.0 + index, image=image, label=label,
                 source="file:///clip.mp4")


def make_verdict(camera: str = "cam1", index: int = 3, grid: tuple[int, int] = (4, 6)) -> Verdict:
    conf = np.random.default_rng(index).random(grid[0] * grid[1]).astype(np.float32)
    return Verdict(FrameKey(camera, index, index * 0.25), score=0.91, raw_score=1.37, anomalous=True,
                   global_confidence=0.42, patch_confidences=conf, grid=grid, unsafe_patches=13,
                   threshold=0.8, decided_by="knnn/majority@0.80")


def ipc(tmp_path: Path, name: str) -> str:
    return f"ipc://{tmp_path / name}"


def recv_all(puller: FramePuller, n: int, timeout_ms: int = 3000) -> list[Message]:
    out = []
    while len(out) < n:
        msg = puller.recv(timeout_ms)
        if msg is None:
            break
        out.append(msg)
    return out


def drain(receivers: list[FramePuller], n: int, timeout_s: float = 5.0) -> list[list[Message]]:
    """Messages per receiver until `n` arrived in total (round-robin need not be perfectly even)."""
    got: list[list[Message]] = [[] for _ in receivers]
    deadline = time.monotonic() + timeout_s
    while sum(map(len, got)) < n and time.monotonic() < deadline:
        for bucket, receiver in zip(got, receivers, strict=True):
            if (msg := receiver.recv(10)) is not None:
                bucket.append(msg)
    return got


# --------------------------------------------------------------------------- format


def test_raw_frame_round_trip_is_exact() -> None:
    frame = make_frame(index=7)
    got = decode_frame(encode_frame(frame, "raw"))
    assert np.array_equal(got.image, frame.image)
    assert (got.camera, got.index, got.pts, got.wall_time, got.label, got.source, got.restart) == (
        frame.camera, frame.index, frame.pts, frame.wall_time, frame.label, frame.source, False)
    looped = dataclasses.replace(frame, restart=True)  # a looped file's next pass: the worker must know
    assert decode_frame(encode_frame(looped, "raw")).restart


def test_jpeg_frame_round_trip_within_tolerance_and_smaller() -> None:
    frame = make_frame(h=96, w=128, label=None)
    parts = encode_frame(frame, "jpeg", quality=90)
    got = decode_frame(parts)
    assert got.image.shape == frame.image.shape and got.image.dtype == np.uint8
    diff = np.abs(got.image.astype(int) - frame.image.astype(int))
    assert diff.mean() < 2.0 and diff.max() < 40
    assert got.label is None and got.key == frame.key
    assert len(parts[1]) < frame.image.nbytes / 4
    assert json.loads(parts[0])["encoding"] == "jpeg"


def test_verdict_round_trip_float16_heatmap() -> None:
    verdict = make_verdict()
    got, header = decode_verdict(encode_verdict(verdict, frame_wall_time=1234.5))
    assert np.allclose(got.patch_confidences, verdict.patch_confidences, atol=1e-3)
    assert got.patch_confidences.dtype == np.float32 and got.heatmap.shape == (4, 6)
    assert got.key == verdict.key and got.grid == verdict.grid and got.anomalous is True
    assert (got.score, got.raw_score, got.global_confidence, got.unsafe_patches, got.threshold, got.decided_by) \
        == (0.91, 1.37, 0.42, 13, 0.8, "knnn/majority@0.80")
    assert header["wall_time"] == 1234.5
    assert decode_verdict(encode_verdict(verdict))[1]["wall_time"] is None


def test_eos_and_status_messages() -> None:
    eos = decode(encode_eos("cam9"))
    assert eos.type == "eos" and eos.camera == "cam9" and eos.frame is None
    status = decode(encode_status("cam9", "reconnecting", role="reader", attempt=3))
    assert status.type == "status" and status.header["state"] == "reconnecting" and status.header["attempt"] == 3


def test_eos_names_the_last_frame_and_is_relayed_unchanged() -> None:
    legacy = decode(encode_eos("cam9"))
    assert legacy.last_key is None and set(legacy.header) == {"v", "type", "camera"}  # what older readers send
    eos = decode(encode_eos("cam9", FrameKey("cam9", 41, 10.25), frames=42))
    assert eos.last_key == FrameKey("cam9", 41, 10.25) and eos.header["frames"] == 42
    header = json.loads(encode_eos("cam9", FrameKey("cam9", 41, 10.25), frames=42)[0]) | {"hop": "edge-3"}
    relayed = decode(relay(decode([json.dumps(header).encode(), b""])))
    assert relayed.header == header and relayed.last_key == eos.last_key  # fields it does not know survive too
    with pytest.raises(WireError, match="verdict message has a payload"):
        relay(decode(encode_verdict(make_verdict())))


def _header(**changes: object) -> bytes:
    header = json.loads(encode_frame(make_frame(), "raw")[0])
    header.update(changes)
    return json.dumps(header).encode()


def _raw_payload() -> bytes:
    return encode_frame(make_frame(), "raw")[1]


@pytest.mark.parametrize(("parts", "message"), [
    ([b"{}"], "expected 2 message parts"),
    ([b"{}", b"", b""], "expected 2 message parts"),
    ([b"not json", b""], "not UTF-8 JSON"),
    ([b"\xff\xfe", b""], "not UTF-8 JSON"),
    ([b"[1, 2]", b""], "must be a JSON object"),
    ([_header(v=99), _raw_payload()], "unsupported wire version 99"),
    ([_header(type="gossip"), _raw_payload()], "unknown message type 'gossip'"),
    ([_header(), _raw_payload()[:-1]], "raw frame payload is"),
    ([_header(index="7"), _raw_payload()], "field 'index': Input should be a valid integer, got '7'"),
    ([_header(index=True), _raw_payload()], "field 'index': Input should be a valid integer, got 'True'"),
    ([_header(pts=float("nan")), _raw_payload()], "field 'pts': Input should be a finite number"),
    ([_header(shape=[48, 64]), _raw_payload()], "field 'shape.2': Field required"),
    ([_header(shape=[48, 0, 3]), _raw_payload()], "field 'shape.1': Input should be greater than 0"),
    ([_header(surprise=1), _raw_payload()], "field 'surprise': Extra inputs are not permitted"),
    ([_header(encoding="jpeg"), b"\xff\xd8 definitely not a jpeg"], "not a decodable JPEG"),
    ([_header(encoding="png"), b""], "field 'encoding': Input should be 'jpeg' or 'raw'"),
    ([json.dumps({"v": 1, "type": "eos"}).encode(), b""], "field 'camera': Field required"),
    ([json.dumps({"v": 1, "type": "eos", "camera": "c", "index": 3}).encode(), b""],
     "fields 'index' and 'pts' come together"),
    ([json.dumps({"v": 1, "type": "eos", "camera": "c", "index": 3, "pts": "1"}).encode(), b""],
     "field 'pts': Input should be a valid number"),
    ([json.dumps({"v": 1, "type": "eos", "camera": "c", "frames": -1}).encode(), b""],
     "field 'frames': Input should be greater than or equal to 0"),
    ([json.dumps({"v": 1, "type": "status", "camera": "c", "state": "ok"}).encode(), b""],
     "status header: role should be one of reader, worker, events"),
    ([json.dumps({"v": 1, "type": "status", "camera": "w", "state": "ok", "role": "worker",
                  "pending": "lots"}).encode(), b""], "field 'pending': Input should be a valid integer"),
])
def test_malformed_messages_raise_one_line_wire_error(parts: list[bytes], message: str) -> None:
    with pytest.raises(WireError, match=message) as info:
        decode(parts)
    assert "\n" not in str(info.value)


def test_verdict_payload_size_mismatch_and_wrong_type() -> None:
    header, payload = encode_verdict(make_verdict())
    with pytest.raises(WireError, match="grid 4x6 needs 48"):
        decode([header, payload[:-2]])
    with pytest.raises(WireError, match="expected a frame message, got verdict"):
        decode_frame([header, payload])


def test_jpeg_with_wrong_shape_is_rejected() -> None:
    header, payload = encode_frame(make_frame(), "jpeg")
    bad = json.loads(header) | {"shape": [10, 10, 3]}
    with pytest.raises(WireError, match="header says"):
        decode([json.dumps(bad).encode(), payload])


def test_encoding_a_non_uint8_image_is_refused() -> None:
    frame = make_frame()
    frame.image = frame.image.astype(np.float32)
    with pytest.raises(WireError, match="expected a uint8"):
        encode_frame(frame)


# --------------------------------------------------------------------------- sockets


def test_puller_logs_counts_and_skips_malformed_messages(caplog: pytest.LogCaptureFixture) -> None:
    puller = FramePuller(TCP)
    raw = zmq.Context.instance().socket(zmq.PUSH)
    raw.connect(puller.endpoint)
    try:
        raw.send_multipart([b"garbage"])
        raw.send_multipart([b'{"v": 1, "type": "frame"}', b""])
        raw.send_multipart(encode_frame(make_frame(index=5), "raw"))
        with caplog.at_level(logging.WARNING, logger="streamvad.transport"):
            msg = puller.recv(3000)
        assert msg is not None and msg.type == "frame" and msg.frame is not None and msg.frame.index == 5
        assert puller.malformed == 2 and puller.received == 1
        assert sum("dropped malformed message" in r.getMessage() for r in caplog.records) == 2
        assert puller.recv(50) is None
    finally:
        raw.close(0)
        puller.close()


def test_fan_in_many_readers_to_one_worker_over_tcp() -> None:
    worker = FramePuller(TCP)
    readers = [FramePusher(worker.endpoint, policy="block", encoding="raw") for _ in range(3)]
    try:
        for r, reader in enumerate(readers):
            for i in range(10):
                assert reader.send(make_frame(f"cam{r}", i))
            assert reader.send_eos(f"cam{r}")
        msgs = recv_all(worker, 33)
        frames = sorted((m.frame.camera, m.frame.index) for m in msgs if m.frame is not None)
        assert frames == [(f"cam{r}", i) for r in range(3) for i in range(10)]
        eos = {m.camera: (m.last_key, m.header["frames"]) for m in msgs if m.type == "eos"}
        assert eos == {f"cam{r}": (FrameKey(f"cam{r}", 9, 2.25), 10) for r in range(3)}
        for r in range(3):  # each reader's own order is kept
            got = [m.frame.index for m in msgs if m.frame is not None and m.frame.camera == f"cam{r}"]
            assert got == list(range(10))
    finally:
        for reader in readers:
            reader.close()
        worker.close()


def test_fan_out_one_reader_bind_to_many_workers_over_ipc(tmp_path: Path) -> None:
    reader = FramePusher(ipc(tmp_path, "frames"), policy="block", bind=True, encoding="raw")
    workers = [FramePuller(reader.endpoint, bind=False) for _ in range(2)]
    try:
        time.sleep(0.5)  # both workers connected, so round-robin covers both
        for i in range(20):
            reader.send(make_frame(index=i))
        got = drain(workers, 20)
        assert all(len(g) > 0 for g in got)
        indices = sorted(m.frame.index for g in got for m in g if m.frame is not None)
        assert indices == list(range(20))
    finally:
        reader.close()
        for w in workers:
            w.close()


def test_drop_policy_drops_and_counts_when_worker_does_not_read(tmp_path: Path) -> None:
    worker = FramePuller(ipc(tmp_path, "slow"), hwm=2)
    reader = FramePusher(worker.endpoint, hwm=2, policy="drop", encoding="raw")
    try:
        time.sleep(0.2)
        results = [reader.send(make_frame(index=i, h=64, w=64)) for i in range(300)]
        assert reader.dropped > 0 and reader.dropped == results.count(False)
        assert reader.sent + reader.dropped == 300
        got = recv_all(worker, 300, timeout_ms=300)
        assert 0 < len(got) <= reader.sent
        assert [m.frame.index for m in got if m.frame] == sorted(m.frame.index for m in got if m.frame)
        last = max(i for i, queued in enumerate(results) if queued)
        assert reader.send_eos("cam1")
        eos = worker.recv(3000)  # names what was queued, not what the reader tried to send
        assert eos is not None and eos.last_key == FrameKey("cam1", last, last * 0.25)
        assert eos.header["frames"] == reader.sent
    finally:
        reader.close(0)
        worker.close()


def test_each_eos_reports_its_own_camera_since_its_last_eos() -> None:
    worker = FramePuller(TCP)
    reader = FramePusher(worker.endpoint, policy="block", encoding="raw")
    try:
        for i in range(3):
            reader.send(make_frame("a", i, h=8, w=8))
        reader.send(make_frame("b", 0, h=8, w=8))
        for camera in ("a", "a", "b"):
            assert reader.send_eos(camera)
        eos = [m for m in recv_all(worker, 7) if m.type == "eos"]
        assert [(m.camera, m.last_key, m.header["frames"]) for m in eos] == [
            ("a", FrameKey("a", 2, 0.5), 3), ("a", None, 0), ("b", FrameKey("b", 0, 0.0), 1)]
    finally:
        reader.close(0)
        worker.close()


def test_drop_policy_with_no_worker_drops_instead_of_queueing(tmp_path: Path) -> None:
    reader = FramePusher(ipc(tmp_path, "nobody"), policy="drop")
    try:
        assert not reader.send(make_frame())
        assert reader.dropped == 1 and reader.sent == 0
        assert not reader.send_eos("cam1", timeout_ms=50)
    finally:
        reader.close(0)


def test_block_policy_delivers_everything_to_a_slow_worker() -> None:
    worker = FramePuller(TCP, hwm=2)
    reader = FramePusher(worker.endpoint, hwm=2, policy="block", encoding="raw")
    received: list[int] = []

    def consume() -> None:
        for msg in iter(lambda: worker.recv(3000), None):
            if msg.type == "eos":
                return
            time.sleep(0.002)
            received.append(msg.frame.index if msg.frame else -1)

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        for i in range(100):
            assert reader.send(make_frame(index=i, h=32, w=32))
        assert reader.send_eos("cam1")
        thread.join(10)
        assert received == list(range(100)) and reader.dropped == 0
    finally:
        reader.close()
        worker.close()


def test_bad_endpoint_is_a_wire_error() -> None:
    with pytest.raises(WireError, match="cannot bind nonsense://x"):
        FramePuller("nonsense://x")


def test_sockets_from_transport_config(tmp_path: Path) -> None:
    cfg = TransportConfig(frames=ipc(tmp_path, "cfg"), policy="block", hwm=4, jpeg_quality=50)
    worker = FramePuller.from_config(cfg)
    reader = FramePusher.from_config(cfg)
    try:
        assert reader.policy == "block" and reader.quality == 50
        reader.send(make_frame(index=2))
        msg = worker.recv(3000)
        assert msg is not None and msg.header["encoding"] == "jpeg" and msg.frame is not None
        assert msg.frame.index == 2
    finally:
        reader.close()
        worker.close()


def test_two_processes_binding_one_ipc_endpoint_at_once_cannot_both_take_it(tmp_path: Path) -> None:
    """The in-use probe and the bind happen under an flock on `<path>.lock`: a process that comes while another is
    between its probe and its bind waits, then finds that one's socket and is refused, instead of both finding the
    path free and the second binding over the first."""
    endpoint = ipc(tmp_path, "frames")
    first = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, zmq\n"
        f"lock = open({str(tmp_path / 'frames.lock')!r}, 'a'); fcntl.flock(lock, fcntl.LOCK_EX)\n"
        "print('probed', flush=True); sys.stdin.readline()\n"
        f"s = zmq.Context().socket(zmq.PULL); s.bind({endpoint!r}); lock.close()\n"
        "print('bound', flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    outcome: list[BaseException | FramePuller] = []

    def second() -> None:
        try:
            outcome.append(FramePuller(endpoint))
        except WireError as err:
            outcome.append(err)

    try:
        assert first.stdin is not None and first.stdout is not None
        assert first.stdout.readline().strip() == "probed"  # it holds the lock, its socket not yet bound
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and not outcome  # waiting for the lock, not binding the free-looking path
        first.stdin.write("bind\n")
        first.stdin.flush()
        assert first.stdout.readline().strip() == "bound"
        thread.join(30)
    finally:
        first.kill()
        first.wait(10)
    assert len(outcome) == 1 and isinstance(outcome[0], WireError), outcome
    assert "another process listens there" in str(outcome[0])


def test_an_ipc_endpoint_another_process_listens_on_is_refused_and_a_dead_ones_is_taken(tmp_path: Path) -> None:
    """ZeroMQ would bind over the live socket without a word and take its frames; a second serve with the same
    endpoints must be told instead. The file a killed process leaves behind is no obstacle."""
    endpoint = ipc(tmp_path, "frames")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, zmq; s = zmq.Context().socket(zmq.PULL); "
                               f"s.bind({endpoint!r}); print('bound', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
        with pytest.raises(WireError, match=r"cannot bind ipc://.*/frames: another process listens there"):
            FramePuller(endpoint)
    finally:
        holder.kill()
        holder.wait(10)
    assert (tmp_path / "frames").exists()  # left behind by the killed process
    worker = FramePuller(endpoint)
    worker.close()
    again = FramePuller(endpoint)  # a socket this process closed a moment ago is no obstacle either
    reader = FramePusher(endpoint, policy="block")
    try:
        reader.send(make_frame(index=5))
        msg = again.recv(3000)
        assert msg is not None and msg.frame is not None and msg.frame.index == 5
    finally:
        reader.close()
        again.close()
