"""The worker with a real fitted model over real ZeroMQ sockets: batching, masks, malformed input, drain."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from streamvad.bench.throughput import fit_small_model, free_tcp_endpoint
from streamvad.config import BackboneConfig, ServeConfig, StreamVADConfig, TransportConfig, WorkerConfig
from streamvad.live.worker import Worker, patch_mask, worker_main
from streamvad.scoring.engine import Engine, load_engine
from streamvad.transport import FramePusher, VerdictInbox
from streamvad.types import Frame

IMAGE_SIZE = (96, 128)  # 6 x 8 patches on the stride-16 grid
TEST_BACKBONE = BackboneConfig(name="efficientnet-lite0", image_size=IMAGE_SIZE, device="cpu", batch_size=16)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A k-NNN model on real EfficientNet-Lite0 features of a synthetic normal clip, fitted once per session
    (cached on disk, so the other test modules that import this fixture reuse it)."""
    root = tmp_path_factory.getbasetemp() / "streamvad-tiny-model"
    model = root / f"model-{TEST_BACKBONE.name}"
    if not (model / "model.json").is_file():
        fit_small_model(TEST_BACKBONE, root, seconds=16, holdout=0.25)
    return model


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Engine:
    return load_engine(tiny_model)


def make_frame(camera: str, index: int, seed: int = 0) -> Frame:
    image = np.random.default_rng([seed, index]).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    return Frame(camera, index, pts=index * 0.25, wall_time=time.time(), image=image)


@contextmanager
def running_worker(engine: Engine, cfg: WorkerConfig, policy: str = "block", **options: Any,
                   ) -> Iterator[tuple[Worker, FramePusher, VerdictInbox]]:
    """A Worker (given `options`) in a thread, a frame pusher (policy block) and a verdict inbox (acknowledging)
    bound on loopback."""
    transport = TransportConfig(frames=free_tcp_endpoint(), verdicts=free_tcp_endpoint(), policy=policy)
    sub = VerdictInbox(transport.verdicts, auto_ack=True)
    worker = Worker(engine, transport, cfg, **options)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    pusher = FramePusher(transport.frames, policy="block")
    assert sub.recv_message(300) is None  # nothing is sent before a frame is
    try:
        yield worker, pusher, sub
    finally:
        stop.set()
        # keep acknowledging while it drains: a stopping worker waits for the acks of what it sent (an EOS the
        # test did not read, say), and a thread still running at exit aborts the interpreter
        deadline = time.monotonic() + 30
        while thread.is_alive() and time.monotonic() < deadline:
            sub.recv_message(100)
        thread.join(1)
        pusher.close(0)
        sub.close()


def verdict_keys(sub: VerdictInbox, n: int, timeout_s: float = 20.0) -> list[tuple[str, int]]:
    keys: list[tuple[str, int]] = []
    deadline = time.monotonic() + timeout_s
    while len(keys) < n and time.monotonic() < deadline:
        msg = sub.recv_message(200)
        if msg is not None and msg.type == "verdict":
            keys.append((msg.verdict.key.camera, msg.verdict.key.index))
    return keys


def test_patch_mask_takes_patches_whose_centre_is_inside() -> None:
    left_half = [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]
    mask = patch_mask(left_half, (2, 4)).reshape(2, 4)
    assert mask[:, :2].all() and not mask[:, 2:].any()
    triangle = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]  # above the anti-diagonal
    assert patch_mask(triangle, (2, 2)).reshape(2, 2).tolist() == [[True, False], [False, False]]


def test_batches_close_at_max_batch_and_mix_cameras(engine: Engine) -> None:
    with running_worker(engine, WorkerConfig(max_batch=4, max_wait_ms=1500)) as (worker, pusher, sub):
        sent = [make_frame(f"cam{i % 3}", i) for i in range(10)]
        for frame in sent:
            pusher.send(frame)
        keys = verdict_keys(sub, 10)
    assert sorted(keys) == sorted((f.camera, f.index) for f in sent)  # every frame, once
    assert [len(b) for b in worker.batches] == [4, 4, 2]
    assert all(len(set(batch)) > 1 for batch in worker.batches)  # one forward pass serves several cameras
    assert worker.stats()["frames_out"] == {"cam0": 4, "cam1": 3, "cam2": 3}


def test_frames_a_reader_numbered_but_the_worker_never_got_are_counted(engine: Engine) -> None:
    with running_worker(engine, WorkerConfig(max_batch=1, max_wait_ms=10)) as (worker, pusher, sub):
        for i in (0, 1, 2, 5, 6, 0, 1):  # 3 and 4 lost on the way; then the camera's stream restarted
            pusher.send(make_frame("cam", i))
        assert len(verdict_keys(sub, 7)) == 7
    assert worker.stats()["missing"] == {"cam": 2}


def test_partial_batch_waits_max_wait_then_goes(engine: Engine) -> None:
    with running_worker(engine, WorkerConfig(max_batch=8, max_wait_ms=400)) as (worker, pusher, sub):
        t0 = time.monotonic()
        pusher.send(make_frame("solo", 0))
        assert verdict_keys(sub, 1) == [("solo", 0)]
        waited = time.monotonic() - t0
    assert [len(b) for b in worker.batches] == [1]
    assert 0.4 <= waited < 10.0


@pytest.mark.parametrize("policy", ["drop", "block"])
def test_stale_live_frames_are_shed_but_replay_frames_never(engine: Engine, policy: str) -> None:
    with running_worker(engine, WorkerConfig(max_batch=2, max_wait_ms=10, max_age_s=1.0), policy) as (w, pusher, sub):
        old = make_frame("cam", 0)
        old.wall_time -= 30  # waited 30 s in a queue somewhere
        pusher.send(old)
        pusher.send(make_frame("cam", 1))
        keys = verdict_keys(sub, 2, timeout_s=5 if policy == "drop" else 20)
    if policy == "drop":
        assert keys == [("cam", 1)] and w.stats()["stale"] == {"cam": 1}
    else:
        assert sorted(keys) == [("cam", 0), ("cam", 1)] and w.stats()["stale"] == {}


def test_malformed_messages_are_dropped_and_worker_keeps_serving(engine: Engine) -> None:
    with running_worker(engine, WorkerConfig(max_batch=2, max_wait_ms=10)) as (worker, pusher, sub):
        raw = zmq.Context.instance().socket(zmq.PUSH)
        raw.connect(worker.frames_endpoint)
        raw.send_multipart([b"not json", b""])
        raw.send_multipart([b'{"v": 1, "type": "frame", "camera": "x"}', b"\xff\xd8 truncated jpeg"])
        raw.send(b"one part only")
        raw.close(1000)
        pusher.send(make_frame("ok", 0))
        assert verdict_keys(sub, 1) == [("ok", 0)]
        assert worker.stats()["malformed"] == 3


def test_per_camera_mask_zeroes_patches_outside_polygon(engine: Engine, tiny_model: Path) -> None:
    right_half = [(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)]
    transport = TransportConfig()
    worker = Worker(engine, transport, WorkerConfig(), masks={"masked": right_half})
    frames = [make_frame("masked", 0, seed=1), make_frame("open", 0, seed=1)]
    masked, open_ = (v.heatmap for v in worker.score(frames))
    grid_w = engine.backbone.grid[1]
    assert not masked[:, : grid_w // 2].any() and masked[:, grid_w // 2:].any()
    np.testing.assert_allclose(masked[:, grid_w // 2:], open_[:, grid_w // 2:], atol=1e-6)
    assert open_[:, : grid_w // 2].any()


@pytest.mark.slow
def test_sigterm_drains_queued_frames(tiny_model: Path) -> None:
    """The worker process exits 0 on SIGTERM only after scoring every frame already queued to it."""
    transport = TransportConfig(frames=free_tcp_endpoint(), verdicts=free_tcp_endpoint(),
                                status=free_tcp_endpoint(), policy="block")
    cfg = StreamVADConfig(model_dir=tiny_model, transport=transport, worker=WorkerConfig(max_batch=4),
                          serve=ServeConfig(drain_timeout_s=30))
    sub = VerdictInbox(transport.verdicts, auto_ack=True)
    proc = mp.get_context("spawn").Process(target=worker_main, args=(cfg, 0, transport.frames, 20))
    proc.start()
    pusher = FramePusher(transport.frames, policy="block")
    try:
        pusher.send(make_frame("cam", 0))
        assert verdict_keys(sub, 1, timeout_s=60) == [("cam", 0)]  # loaded and serving
        for i in range(1, 13):
            pusher.send(make_frame("cam", i))
        proc.terminate()
        keys = verdict_keys(sub, 12)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
        pusher.close(0)
        sub.close()
    assert sorted(keys) == [("cam", i) for i in range(1, 13)]
    assert proc.exitcode == 0


def test_replay_scores_what_the_live_path_scores(tiny_model: Path, tmp_path: Path) -> None:
    """Full-size recordings replayed offline get the scores a live worker gives the same frames sent by a
    reader (shrunk to frame_max_side, JPEG on the wire): fit records both in model.json and replay applies them."""
    import json

    from PIL import Image

    from streamvad.config import CameraConfig
    from streamvad.live.reader import run_reader
    from streamvad.offline.pipeline import clips_from_paths, replay
    from streamvad.scoring.engine import ModelInfo

    fitted = json.loads((tiny_model / "model.json").read_text())
    assert (fitted["frame_max_side"], fitted["jpeg_quality"]) == (640, 90)  # the config's transport at fit time
    folder = tmp_path / "hd"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(make_frame("hd", i).image).resize((320, 240)).save(folder / f"{i:03d}.png")
    engine = load_engine(tiny_model)
    engine.info = ModelInfo(**{**engine.info.__dict__, "frame_max_side": 160, "jpeg_quality": 90})
    with running_worker(engine, WorkerConfig(max_batch=4, max_wait_ms=200)) as (worker, _pusher, sub):
        transport = worker.transport.model_copy(update={"frame_max_side": 160, "jpeg_quality": 90})
        run_reader(CameraConfig(id="hd", url=str(folder), fps=30.0), transport)
        live = {}
        while len(live) < 4 and (msg := sub.recv_message(10_000)) is not None:
            if msg.type == "verdict" and msg.verdict is not None:
                live[msg.verdict.key.index] = msg.verdict.raw_score
    offline = replay(engine, clips_from_paths([folder]), sample_fps=None, progress=False).records["primary"]
    assert sorted(live) == [r["frame"] for r in offline]
    assert [r["raw_score"] for r in offline] == pytest.approx([live[r["frame"]] for r in offline], abs=1e-5)
