"""Scale-out: four cameras with four models sharded over two worker processes on tcp loopback. Each worker
loads exactly its own cameras' models and every frame is scored exactly once, by the camera's owner; and
where frames are dealt round-robin (a reader given every worker, as tools may do), a camera's end
of stream, which reaches only one of the workers, still closes its events after its last verdict."""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streamvad.bench.throughput import PLACE, free_tcp_endpoint
from streamvad.config import (
    CameraConfig,
    EventsConfig,
    ScoringConfig,
    SinksConfig,
    StreamVADConfig,
    TransportConfig,
    WorkerConfig,
)
from streamvad.datasets.synthetic import make_scene
from streamvad.live.events_process import EventsProcess
from streamvad.live.fleet import camera_endpoint, owner, worker_endpoints
from streamvad.live.reader import reader_main, run_reader
from streamvad.live.worker import worker_main
from streamvad.sources import open_source
from streamvad.transport import FramePuller, FramePusher, VerdictInbox
from tests.test_worker import make_frame, tiny_model

__all__ = ["tiny_model"]

WORKERS = 2
LOG_LEVEL = 30


@pytest.mark.slow
def test_two_workers_four_cameras_four_models_each_scored_once_by_its_owner(tiny_model: Path,
                                                                             tmp_path: Path) -> None:
    base = int(free_tcp_endpoint().rsplit(":", 1)[1])
    transport = TransportConfig(frames=f"tcp://127.0.0.1:{base}", verdicts=free_tcp_endpoint(),
                                status=free_tcp_endpoint(), policy="block", hwm=4)
    models = [tmp_path / f"model-{i}" for i in range(4)]
    for model in models:  # four model directories: four models to load, whichever worker asks
        shutil.copytree(tiny_model, model)
    ids = ["gate", "yard", "dock", "lot"]
    cameras = [CameraConfig(id=cam, model=model, realtime=False, url=str(make_scene(
        tmp_path, seconds=4 + i, fps=10, size=(120, 160), seed=20 + i, place_seed=PLACE, name=f"c{i}").path))
        for i, (cam, model) in enumerate(zip(ids, models, strict=True))]
    cfg = StreamVADConfig(cameras=cameras, transport=transport, backbone={"device": "cpu"},
                          serve={"workers": WORKERS}, worker=WorkerConfig(max_batch=4, max_wait_ms=20))
    shard = {c.id: owner(c, WORKERS) for c in cameras}
    assert sorted(Counter(shard.values()).values()) == [2, 2]  # the hash splits these ids 2 + 2
    expected = {(c.id, f.index) for c in cameras for f in open_source(c.url, c.id, sample_fps=c.fps)}

    verdicts = VerdictInbox(transport.verdicts, hwm=100_000, auto_ack=True)
    status = FramePuller(transport.status, hwm=10_000, bind=True)
    ctx = mp.get_context("spawn")
    endpoints = worker_endpoints(transport.frames, WORKERS)
    workers = [ctx.Process(target=worker_main, args=(cfg, i, ep, LOG_LEVEL)) for i, ep in enumerate(endpoints)]
    for w in workers:
        w.start()
    readers: list[mp.process.BaseProcess] = []
    seen: Counter[tuple[str, int]] = Counter()
    worker_in: dict[str, dict[str, Any]] = {}
    try:
        deadline = time.monotonic() + 120
        while len(worker_in) < WORKERS or any(h.get("state") != "ready" for h in worker_in.values()):
            assert time.monotonic() < deadline, "workers did not start"
            msg = status.recv(200)
            if msg is not None and msg.header.get("role") == "worker":
                worker_in[msg.camera] = msg.header
        readers = [ctx.Process(target=reader_main, args=(c, transport, [camera_endpoint(cfg, c)], transport.status,
                                                         0.5, LOG_LEVEL)) for c in cameras]
        for r in readers:
            r.start()
        while len(seen) < len(expected) and time.monotonic() < deadline:
            msg = verdicts.recv_message(200)
            if msg is not None and msg.type == "verdict":
                seen[(msg.verdict.key.camera, msg.verdict.key.index)] += 1
        for r in readers:
            r.join(30)
        time.sleep(1.0)  # a duplicate, if there were one, would arrive now
        while (msg := verdicts.recv_message(100)) is not None:
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
    for i in range(WORKERS):
        report = worker_in[f"worker-{i}"]
        mine = sorted(c.id for c in cameras if shard[c.id] == i)
        assert sorted(report["models"]) == sorted(str(c.model) for c in cameras if shard[c.id] == i)
        assert sorted(report["cameras"]) == mine and sorted(report["frames_out"]) == mine  # only its own
        assert sum(report["frames_out"].values()) == sum(1 for cam, _ in expected if cam in mine)
        assert not report["foreign"]


@pytest.mark.slow
def test_eos_reaching_either_worker_closes_events_after_the_last_verdict(tiny_model: Path, tmp_path: Path) -> None:
    """Each reader's PUSH deals its frames and then its EOS round-robin to the two worker processes, so the
    EOS goes to the idle worker, which forwards it at once, while the other one still holds the last frame
    (its batch waits max_wait_ms). Frames 2 s apart keep the other verdicts in pts order even on a busy
    machine. Every frame is anomalous (threshold below any score), so each camera has one event spanning
    its stream, which only the EOS may close, at its last frame."""
    base = int(free_tcp_endpoint().rsplit(":", 1)[1])
    transport = TransportConfig(frames=f"tcp://127.0.0.1:{base}", verdicts=free_tcp_endpoint(),
                                status=free_tcp_endpoint(), policy="block")
    cfg = StreamVADConfig(
        model_dir=tiny_model, transport=transport, worker=WorkerConfig(max_batch=4, max_wait_ms=300),
        scoring=ScoringConfig(frame_threshold=-1.0, motion="appearance"),  # 0.5 fps: not the rate motion was fitted at
        events=EventsConfig(open_n=1, open_m=1, close_quiet_s=30.0, cooldown_s=0.0, eos_wait_s=20.0),
        sinks=SinksConfig(jsonl=tmp_path / "events.jsonl", spool=tmp_path / "spool"))
    endpoints = worker_endpoints(transport.frames, WORKERS)
    cameras = [CameraConfig(id=f"cam{i}", url=str(make_scene(tmp_path, seconds=5, fps=10, size=(120, 160),
                                                             seed=40 + i, place_seed=PLACE, name=f"e{i}").path),
                            fps=0.5) for i in range(2)]  # realtime: 3 frames, 2 s apart
    last_pts = {c.id: [f.pts for f in open_source(c.url, c.id, sample_fps=c.fps)][-1] for c in cameras}

    events = EventsProcess(cfg)
    stop = threading.Event()
    events_thread = threading.Thread(target=events.run, args=(stop,), daemon=True)
    events_thread.start()
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=worker_main, args=(cfg, i, ep, LOG_LEVEL)) for i, ep in enumerate(endpoints)]
    for w in workers:
        w.start()
    warmup = [FramePusher(ep, policy="drop") for ep in endpoints]  # a camera per worker, to know both are up

    def pending() -> list[int]:
        return [w for w in range(WORKERS) if f"warm{w}" not in events.stats()["events"]]

    try:
        deadline = time.monotonic() + 120
        for i in itertools.count():  # resent every 2 s (dropped until the worker binds), never a backlog
            if not pending():
                break
            assert time.monotonic() < deadline, "workers did not start"
            for w in pending():
                warmup[w].send(make_frame(f"warm{w}", i))
            resend = time.monotonic() + 2.0
            while pending() and time.monotonic() < resend:
                time.sleep(0.05)
        readers = [threading.Thread(target=run_reader, args=(c, transport), kwargs={"endpoints": endpoints})
                   for c in cameras]
        for r in readers:
            r.start()
        for r in readers:
            r.join(30)
        while time.monotonic() < deadline and any(
                events.stats()["events"].get(c.id, {}).get("closed", 0) == 0 for c in cameras):
            time.sleep(0.1)
        time.sleep(1.0)  # a verdict the EOS overtook would open a new event now
        stats = events.stats()
    finally:
        for pusher in warmup:
            pusher.close(0)
        for w in workers:
            w.terminate()
            w.join(30)
        stop.set()
        events_thread.join(30)
    opened_closed = {c.id: (stats["events"][c.id]["opened"], stats["events"][c.id]["closed"]) for c in cameras}
    assert opened_closed == {c.id: (1, 1) for c in cameras}
    assert not any(stats["late"].values())
    records = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    closed = {r["camera"]: r["end_pts"] for r in records if r["kind"] == "closed" and r["camera"] in last_pts}
    assert closed == last_pts  # closed at the last frame, not at the one before the EOS
