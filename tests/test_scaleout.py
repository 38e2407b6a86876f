"""Scale-out: three reader processes fan frames out to two worker processes over tcp loopback, and
every frame is scored exactly once (no frame lost, none scored twice)."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter
from pathlib import Path

import pytest

from streamvad.bench.throughput import PLACE, free_tcp_endpoint
from streamvad.config import CameraConfig, StreamVADConfig, TransportConfig, WorkerConfig
from streamvad.datasets.synthetic import make_scene
from streamvad.reader import reader_main
from streamvad.sources import open_source
from streamvad.transport import FramePuller, VerdictSubscriber
from streamvad.worker import worker_endpoints, worker_main
from tests.test_worker import tiny_model

__all__ = ["tiny_model"]

WORKERS = 2
LOG_LEVEL = 30


@pytest.mark.slow
def test_two_workers_three_readers_score_every_frame_once(tiny_model: Path, tmp_path: Path) -> None:
    base = int(free_tcp_endpoint().rsplit(":", 1)[1])
    transport = TransportConfig(frames=f"tcp://127.0.0.1:{base}", verdicts=free_tcp_endpoint(),
                                status=free_tcp_endpoint(), policy="block", hwm=4)
    cfg = StreamVADConfig(model_dir=tiny_model, transport=transport, worker=WorkerConfig(max_batch=4, max_wait_ms=20))
    endpoints = worker_endpoints(transport.frames, WORKERS)
    cameras = [CameraConfig(id=f"cam{i}", url=str(make_scene(tmp_path, seconds=4 + i, fps=10, size=(120, 160),
                                                             seed=20 + i, place_seed=PLACE, name=f"c{i}").path),
                            realtime=False) for i in range(3)]
    expected = {(c.id, f.index) for c in cameras for f in open_source(c.url, c.id, sample_fps=c.fps)}

    verdicts = VerdictSubscriber(transport.verdicts, hwm=100_000, bind=True)
    status = FramePuller(transport.status, hwm=10_000, bind=True)
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=worker_main, args=(cfg, i, ep, LOG_LEVEL)) for i, ep in enumerate(endpoints)]
    for w in workers:
        w.start()
    readers: list[mp.process.BaseProcess] = []
    seen: Counter[tuple[str, int]] = Counter()
    worker_in: dict[str, dict[str, int]] = {}
    try:
        deadline = time.monotonic() + 120
        while len(worker_in) < WORKERS or any(h.get("state") != "ready" for h in worker_in.values()):
            assert time.monotonic() < deadline, "workers did not start"
            msg = status.recv(200)
            if msg is not None and msg.header.get("role") == "worker":
                worker_in[msg.camera] = msg.header
        readers = [ctx.Process(target=reader_main, args=(c, transport, endpoints, transport.status, 0.5, LOG_LEVEL))
                   for c in cameras]
        for r in readers:
            r.start()
        while len(seen) < len(expected) and time.monotonic() < deadline:
            msg = verdicts.recv(200)
            if msg is not None and msg.type == "verdict":
                seen[(msg.verdict.key.camera, msg.verdict.key.index)] += 1
        for r in readers:
            r.join(30)
        time.sleep(1.0)  # a duplicate, if there were one, would arrive now
        while (msg := verdicts.recv(100)) is not None:
            if msg.type == "verdict":
                seen[(msg.verdict.key.camera, msg.verdict.key.index)] += 1
        for w in workers:  # a stopped worker sends its final counts
            w.terminate()
            w.join(30)
        while (msg := status.recv(300)) is not None:
            if msg.header.get("role") == "worker":
                worker_in[msg.camera] = msg.header
    finally:
        for p in [*readers, *workers]:
            p.terminate()
            p.join(30)
        verdicts.close()
        status.close()
    assert set(seen) == expected  # no frame lost
    assert max(seen.values()) == 1  # none scored twice
    assert all(r.exitcode == 0 for r in readers)
    per_worker = {name: sum(h["frames_out"].values()) for name, h in worker_in.items()}
    assert sum(per_worker.values()) == len(expected)
    assert all(n > 0 for n in per_worker.values()), per_worker  # both workers took a share
