"""A site of cameras: shard assignment, per-camera models on one backbone, learning cameras, and the one-line
refusals of a site that cannot be served (missing, corrupt or other-backbone models)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from streamvad.bench.throughput import free_tcp_endpoint
from streamvad.config import CameraConfig, EventsConfig, ServeConfig, StreamVADConfig, TransportConfig, WorkerConfig
from streamvad.datasets.synthetic import AnomalySpec, make_scene
from streamvad.errors import ConfigError
from streamvad.live.fleet import LEARNING, SCORING, camera_endpoint, check_models, load_fleet, owned, owner
from streamvad.live.health import ServeState
from streamvad.live.pictures import PicturePolicy
from streamvad.live.serve import Role, _worker_endpoints
from streamvad.live.worker import Worker
from streamvad.scoring.engine import load_engine
from tests.test_worker import TEST_BACKBONE, make_frame, running_worker, tiny_model

__all__ = ["tiny_model"]


def site(cameras: list[dict[str, object]], workers: int = 1, **extra: object) -> StreamVADConfig:
    return StreamVADConfig.model_validate({"cameras": [{"url": "x.mp4", **c} for c in cameras],
                                           "serve": {"workers": workers}, **extra})


def test_each_camera_has_one_stable_owner_spread_over_the_workers() -> None:
    cfg = site([{"id": f"cam{i:03d}"} for i in range(200)], workers=4)
    shards = [owned(cfg, i) for i in range(4)]
    assert sorted(c.id for s in shards for c in s) == sorted(c.id for c in cfg.cameras)  # each exactly once
    assert all(35 <= len(s) <= 65 for s in shards)
    # a hash of the id alone: the same on every host and after every restart (Python's hash() is salted)
    assert [owner(CameraConfig(id=i, url="x"), 4) for i in ("gate", "yard", "cam001")] == [2, 1, 3]
    pinned = site([{"id": "gate", "worker": 0}, {"id": "yard", "worker": 0}], workers=2)
    assert [c.id for c in owned(pinned, 0)] == ["gate", "yard"] and owned(pinned, 1) == []
    with pytest.raises(ValueError, match=r"cameras\.gate\.worker: 2, but serve\.workers is 2"):
        site([{"id": "gate", "worker": 2}], workers=2)


def test_each_worker_binds_its_own_control_socket_and_enrolment_asks_the_cameras_worker() -> None:
    """Two `serve --role worker` processes on one host must not bind one ipc:// file (the second would be
    refused); `enroll --serve` reaches the worker whose backbone the camera's enrolment then runs on."""
    cfg = site([{"id": "gate", "worker": 0}, {"id": "yard", "worker": 1}], workers=2,
               transport={"control": "ipc:///run/sv/control"})
    assert [camera_endpoint(cfg, cfg.camera(c), "control") for c in ("gate", "yard")] == [
        "ipc:///run/sv/control-0", "ipc:///run/sv/control-1"]
    assert _worker_endpoints(cfg, Role("worker", worker_index=1), "control") == {1: "ipc:///run/sv/control-1"}
    assert _worker_endpoints(cfg, Role(), "control") == {0: "ipc:///run/sv/control-0", 1: "ipc:///run/sv/control-1"}
    one = site([{"id": "gate"}], transport={"control": "tcp://127.0.0.1:5560", "insecure": True})
    assert camera_endpoint(one, one.camera("gate"), "control") == "tcp://127.0.0.1:5560"  # one worker: as configured
    with pytest.raises(ConfigError, match=r"^--camera: no camera 'lobby' in cameras \(configured: gate, yard\)$"):
        cfg.camera("lobby")
    with pytest.raises(ConfigError, match=r"^transport\.control: 'tcp://10\.0\.0\.1' needs an explicit port"):
        camera_endpoint(site([{"id": "gate"}], workers=2, transport={"control": "tcp://10.0.0.1"}),
                        CameraConfig(id="gate", url="x"), "control")


def test_cameras_without_a_model_are_learning_and_not_scored(tiny_model: Path, tmp_path: Path) -> None:
    store = tmp_path / "store-yard"
    store.mkdir()  # a model store with no version yet
    cfg = site([{"id": "gate", "model": str(tiny_model)}, {"id": "yard", "model": str(store)}, {"id": "lot"}],
               backbone={"device": "cpu"})
    assert check_models(cfg, cfg.cameras) == {"gate": tiny_model, "yard": None, "lot": None}
    fleet = load_fleet(cfg, cfg.cameras)
    assert [fleet.state(c) for c in ("gate", "yard", "lot")] == [SCORING, LEARNING, LEARNING]
    worker = Worker(fleet, TransportConfig(), WorkerConfig())
    frames = [make_frame(cam, 0) for cam in ("gate", "yard", "lot")]
    verdicts = worker.score(frames)
    assert verdicts[0] is not None and verdicts[0].key.camera == "gate" and verdicts[1:] == [None, None]
    stats = worker.stats()
    assert stats["cameras"] == {"gate": SCORING, "yard": LEARNING, "lot": LEARNING}
    assert list(stats["models"]) == [str(tiny_model)] and stats["models"][str(tiny_model)] > 0
    # /healthz shows each camera's state as its worker reports it
    state = ServeState()
    state.expect("worker", "worker-0", "worker-0")
    state.update({"role": "worker", "camera": "worker-0", **stats})
    assert {c: v["model"] for c, v in state.health()[1]["cameras"].items()} == stats["cameras"]


def test_a_learning_camera_sends_its_live_tile_and_no_verdicts(tiny_model: Path) -> None:
    """Frames of a camera with no model yet are not scored, but one every `preview_s` (pinned to one here) goes
    to the events process as a preview, so the console shows what a camera sees while it learns."""
    cfg = site([{"id": "gate", "model": str(tiny_model)}, {"id": "lot"}], backbone={"device": "cpu"})
    pictures = PicturePolicy(EventsConfig(preview_s=3600.0), {})
    with running_worker(load_fleet(cfg, cfg.cameras), WorkerConfig(max_batch=2), pictures=pictures) as (_, pusher, sub):
        for i in range(3):
            pusher.send(make_frame("lot", i))
            pusher.send(make_frame("gate", i))
        got: list[tuple[str, str, bool]] = []
        deadline = time.monotonic() + 60
        while sum(kind == "verdict" for kind, _, _ in got) < 3 and time.monotonic() < deadline:
            msg = sub.recv_message(200)
            if msg is not None:
                got.append((msg.type, msg.camera, bool(msg.header.get("preview"))))
    assert [m for m in got if m[1] == "lot"] == [("frame", "lot", True)]
    gate = [m for m in got if m[1] == "gate"]  # verdicts, with frames (its tile, anomalies), none a preview
    assert gate.count(("verdict", "gate", False)) == 3 and not any(preview for _, _, preview in gate)


def test_one_forward_pass_then_each_camera_against_its_own_model(tiny_model: Path, tmp_path: Path) -> None:
    """Two model directories (copies, so two engines) and a masked camera: the batch is embedded once and
    every camera gets exactly the verdicts its own model gives it alone."""
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    cfg = site([{"id": "a", "model": str(tiny_model)}, {"id": "b", "model": str(other)},
                {"id": "c", "model": str(other), "mask": [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]}],
               backbone={"device": "cpu"})
    fleet = load_fleet(cfg, cfg.cameras)
    assert len(fleet.engines) == 2 and len({id(e.backbone) for e in fleet.engines.values()}) == 1
    worker = Worker(fleet, TransportConfig(), WorkerConfig(), masks={"c": cfg.cameras[2].mask})
    calls = []
    embed = fleet.backbone.embed
    fleet.backbone.embed = lambda *a, **k: calls.append(len(a[0])) or embed(*a, **k)  # type: ignore[method-assign]
    frames = [make_frame(cam, i, seed=i) for i in range(3) for cam in ("a", "b", "c")]
    verdicts = worker.score(frames)
    assert calls == [9]
    alone = load_engine(tiny_model, backbone=TEST_BACKBONE)
    for cam in ("a", "b"):
        mine = [v for v in verdicts if v is not None and v.key.camera == cam]
        ref = alone.process([f for f in frames if f.camera == cam])
        np.testing.assert_allclose([v.raw_score for v in mine], [v.raw_score for v in ref], rtol=1e-5, atol=1e-6)
    masked = [v for v in verdicts if v is not None and v.key.camera == "c"]
    assert all(not v.heatmap[:, v.grid[1] // 2 + 1:].any() for v in masked)  # right half outside the mask


def _serve_error(cfg: dict[str, object], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "streamvad", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_bad_camera_models_are_refused_with_one_line(tiny_model: Path, tmp_path: Path,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    from streamvad.bench.throughput import fit_small_model

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model, corrupt)
    (corrupt / "normality" / "manifest.json").write_text("{not json", encoding="utf-8")
    wider = fit_small_model(TEST_BACKBONE.model_copy(update={"image_size": (128, 160)}),
                            tmp_path_factory.mktemp("wider"), seconds=8, holdout=0.25)
    def q(path: Path) -> str:
        return re.escape(str(path))

    base = {"cameras": [{"id": "gate", "url": "x.mp4", "model": str(tiny_model)}], "serve": {"workers": 1}}
    cases = {
        "missing": (tmp_path / "nope",
                    rf"^cameras\.yard\.model: {q(tmp_path / 'nope')} does not exist \(camera yard\)"),
        "corrupt": (corrupt, rf"^cameras\.yard\.model: {q(corrupt / 'normality' / 'manifest.json')}: not a readable"),
        "backbone": (wider, rf"^cameras\.yard\.model: {q(wider)} was fitted on backbone .*image_size=\[128, 160\].*"
                            rf"but camera gate's model {q(tiny_model)} on .*image_size=\[96, 128\]"),
    }
    for name, (path, pattern) in cases.items():
        cfg = {**base, "cameras": [*base["cameras"], {"id": "yard", "url": "y.mp4", "model": str(path)}]}
        started = time.monotonic()
        done = _serve_error(cfg, tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (name, done.stderr)
        assert len(lines) == 1 and re.search(pattern, lines[0].removeprefix("streamvad: error: ")), (name, lines)
        assert time.monotonic() - started < 60  # refused before any process starts (no backbone loaded)


def test_a_config_that_lists_no_camera_serves_its_model_to_any(tiny_model: Path) -> None:
    cfg = StreamVADConfig(model_dir=tiny_model, backbone={"device": "cpu"}, serve=ServeConfig(workers=1))
    fleet = load_fleet(cfg, [])
    assert fleet.serves("anything") and fleet.state("anything") == SCORING
    missing = site([{"id": "gate"}], model_dir="nope")
    with pytest.raises(ConfigError, match=r"^model_dir: nope does not exist \(camera gate\)"):
        load_fleet(missing, missing.cameras)


ANOMALY_AT = 8.0  # seconds into each camera's clip: a person walks across the lawn from here on


def _events_of(cfg: dict[str, Any], tmp_path: Path, name: str) -> dict[str, list[dict[str, Any]]]:
    """Run `streamvad serve` on finite clips to their end (real processes, ZeroMQ, JSONL sink); events opened
    per camera."""
    jsonl = tmp_path / f"{name}.jsonl"
    cfg = {**cfg, "sinks": {"jsonl": str(jsonl), "spool": str(tmp_path / f"spool-{name}")},
           "transport": {"frames": free_tcp_endpoint(), "verdicts": free_tcp_endpoint(),
                         "status": free_tcp_endpoint(), "policy": "block", "insecure": True},
           "serve": {"http_port": 0}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "streamvad", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    opened: dict[str, list[dict[str, Any]]] = {c["id"]: [] for c in cfg["cameras"]}
    for line in jsonl.read_text(encoding="utf-8").splitlines() if jsonl.exists() else []:
        record = json.loads(line)
        if record["kind"] == "opened":
            opened[record["camera"]].append(record)
    return opened


@pytest.mark.slow
def test_each_camera_alerts_on_its_own_scene_only_with_its_own_model(
        tiny_model: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Cameras A and B watch two differently laid out scenes (two place seeds). Each with its own model alerts
    on its own anomaly and never on its normal footage; with A's model for both, B's normal footage alerts:
    the per-camera model is what makes the second scene watchable."""
    from streamvad.bench.throughput import PLACE, fit_small_model

    other_place = PLACE + 7
    model_b = fit_small_model(TEST_BACKBONE, tmp_path_factory.mktemp("scene-b"), seconds=16, holdout=0.25,
                              place_seed=other_place)
    # each camera's normal part scores 1.8-2.5 against its own model, its lawn walker 4.5-7, and scene B's
    # normal part 3.3-4.2 against A's model (the test models learnt 16 s of one clip, so margins are narrow)
    clips = {cam: make_scene(tmp_path, seconds=14, fps=10, size=(120, 160), seed=seed, place_seed=place,
                             anomalies=[AnomalySpec("lawn_walker", ANOMALY_AT, 14.0, seed=3)], name=cam).path
             for cam, seed, place in (("a", 12, PLACE), ("b", 31, other_place))}
    base = {"backbone": {"device": "cpu"},
            # as in test_serve: a walker covers a few patches, so the top patches decide; appearance alone
            "scoring": {"method": "knnn", "rule": "topk", "frame_threshold": 3.0, "motion": "appearance"},
            # events stay open to the end of the clip: only where they open matters, and a busy machine's
            # pauses between verdicts must not close and reopen them
            "events": {"open_n": 2, "open_m": 4, "close_quiet_s": 60.0, "cooldown_s": 0.0}}

    def cameras(model_b_path: Path) -> list[dict[str, Any]]:
        return [{"id": "a", "url": str(clips["a"]), "realtime": False, "model": str(tiny_model)},
                {"id": "b", "url": str(clips["b"]), "realtime": False, "model": str(model_b_path)}]

    own = _events_of({**base, "cameras": cameras(model_b)}, tmp_path, "own")
    for cam in ("a", "b"):  # one event each, opened on the anomaly, none on normal footage
        assert [ANOMALY_AT <= e["start_pts"] < ANOMALY_AT + 1.0 for e in own[cam]] == [True], (cam, own[cam])
    shared = _events_of({**base, "cameras": cameras(tiny_model)}, tmp_path, "shared")
    assert [e["start_pts"] < 1.0 for e in shared["b"]] == [True], shared["b"]  # B's normal scene alerts at once
    assert [e["start_pts"] >= ANOMALY_AT for e in shared["a"]] == [True]  # A, on its own model, is unchanged


def test_the_fleet_bench_serves_models_of_the_size_fit_would(tiny_model: Path, tmp_path: Path) -> None:
    """The fleet bench's models are what `fit` serves for that much footage: Ped2's 2,000 training frames
    within the 48 MiB budget are a coreset of ~140 vectors per token, without a budget all 2,000; each grown
    copy loads (checksums, float16 memory) with the rows asked for and its own noise, and with an index (hnsw,
    projected) maps its memory and finds each of its rows."""
    from streamvad.bench.fleet import grow_model, served_vectors
    from streamvad.normality.model import NormalityModel

    ped2 = {"n_tokens": 331, "dim": 432, "motion_bytes": 15 * 22 * (12 * 256 + 4)}
    budgeted = served_vectors(2000, memory_budget_mb=48.0, **ped2)
    assert 100 <= budgeted <= 200  # make ped2's compact model keeps 134 (its global projection takes more)
    assert served_vectors(2000, memory_budget_mb=None, **ped2) == 2000
    assert served_vectors(100, memory_budget_mb=48.0, **ped2) == 100  # little footage fits whole
    first, second = (grow_model(tiny_model, tmp_path / f"m{i}", 30, seed=i) for i in range(2))
    engine = load_engine(first)  # the grown files' checksums are recorded
    a, b = (NormalityModel.load(m / "normality") for m in (first, second))
    assert a.n_train == b.n_train == 30 and a.train.dtype == np.float16
    assert not np.array_equal(a.train, b.train)
    assert engine.scorer is not None
    hnsw = NormalityModel.load(grow_model(tiny_model, tmp_path / "h", 30, seed=0, index="hnsw") / "normality")
    assert hnsw.config.index == "hnsw" and hnsw.indexes is not None and len(hnsw.indexes) == hnsw.n_tokens
    np.testing.assert_array_equal(hnsw.train, a.train)  # the same copy as `first`, searched by its graphs
    assert isinstance(hnsw.train, np.memmap) and not isinstance(a.train, np.memmap)  # one copy held, not two
    labels, _ = hnsw.indexes[0].knn_query(a.train[0].astype(np.float32), k=1)
    assert (labels[:, 0] == np.arange(30)).all()  # each row's nearest is itself
    projected = NormalityModel.load(grow_model(tiny_model, tmp_path / "p", 30, seed=0, index="projected")
                                    / "normality")
    assert projected.projected is not None and isinstance(projected.train, np.memmap)
    rows = projected.projected.nearest(torch.from_numpy(projected.train), torch.from_numpy(a.train.astype(np.float32)))
    assert (rows[..., 0] == torch.arange(30)).all()  # each row's nearest is itself, found through its sketch


def test_a_worker_leaves_the_cores_to_torch(tiny_model: Path) -> None:
    """A serving process runs numpy's BLAS and OpenCV on one thread each once its worker is built: their thread
    pools spin between torch's batched searches and took the cores from them (README, fleet mode). A fresh
    interpreter, so what other tests did to this one does not count."""
    probe = (
        "import json, sys, cv2\n"
        "from threadpoolctl import threadpool_info\n"
        "from streamvad.config import StreamVADConfig\n"
        "from streamvad.live.worker import build_worker\n"
        "cfg = StreamVADConfig.model_validate({'model_dir': sys.argv[1], 'backbone': {'device': 'cpu'}})\n"
        "build_worker(cfg)\n"
        "blas = [p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']\n"
        "print(json.dumps({'blas': blas, 'cv2': cv2.getNumThreads()}))\n")
    done = subprocess.run([sys.executable, "-c", probe, str(tiny_model)], capture_output=True, text=True,
                          timeout=120, check=True)
    threads = json.loads(done.stdout.strip().splitlines()[-1])
    assert threads["blas"] and set(threads["blas"]) == {1} and threads["cv2"] == 1, threads
