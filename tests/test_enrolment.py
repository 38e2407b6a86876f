"""Enrolment, the versioned model store and hot swap: a camera goes from learning to armed without a restart.

Real ZeroMQ sockets, a real worker thread with its model watcher, real fits on EfficientNet-Lite0 features of
synthetic scenes; the whole `serve` version is in test_serve.py.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from streamvad.bench.throughput import PLACE, free_tcp_endpoint
from streamvad.cli import main
from streamvad.config import CameraConfig, EventsConfig, StreamVADConfig, TransportConfig, WorkerConfig
from streamvad.datasets.synthetic import AnomalySpec, Dusk, SceneClip, make_scene
from streamvad.errors import StreamVADError
from streamvad.live.worker import build_worker
from streamvad.model_store import ModelStore
from streamvad.offline.event_metrics import ClipVerdicts, RaisedEvent, raise_events
from streamvad.scoring.engine import load_engine
from streamvad.transport import FramePusher, VerdictInbox
from tests import procs
from tests.test_worker import TEST_BACKBONE, make_frame, tiny_model

__all__ = ["tiny_model"]


def _store(root: Path, model: Path, versions: int) -> ModelStore:
    """A store holding `versions` copies of `model`, the last one current."""
    store = ModelStore(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(versions):
        shutil.copytree(model, root / ".incoming")
        store.activate(store.add(root / ".incoming", {"note": f"copy {i + 1}"}).name)
    return store


def test_store_versions_activate_and_rollback_switch_current_atomically(tiny_model: Path, tmp_path: Path) -> None:
    store = _store(tmp_path / "gate", tiny_model, 3)
    assert [v.name for v in store.versions()] == ["v0001", "v0002", "v0003"]
    assert store.current().name == "v0003" and store.resolve() == (tmp_path / "gate" / "v0003", "v0003")
    assert store.current().record["note"] == "copy 3" and store.current().created_at is not None
    assert store.rollback().name == "v0002" and store.current().name == "v0002"
    assert (tmp_path / "gate" / "current").is_symlink() and not list((tmp_path / "gate").glob(".current.*"))
    with pytest.raises(StreamVADError, match=r"no model version 'v0009' \(versions: v0001, v0002, v0003\)"):
        store.activate("v0009")
    store.activate("v0001")
    with pytest.raises(StreamVADError, match="no earlier version to roll back to"):
        store.rollback()


def test_a_store_keeps_its_newest_versions_and_what_rollback_and_undo_return_to(tiny_model: Path,
                                                                                 tmp_path: Path) -> None:
    """Past `keep`, the oldest versions go, but never the current one or the one it replaced; nothing half-deleted
    stays in sight."""
    store = _store(tmp_path / "gate", tiny_model, 6)
    assert store.prune(6) == []
    store.activate("v0003")
    (store.root / "v0003" / "version.json").write_text('{"previous": "v0002"}', encoding="utf-8")
    assert store.prune(2) == ["v0001", "v0004"]
    assert [v.name for v in store.versions()] == ["v0002", "v0003", "v0005", "v0006"]
    assert store.current().name == "v0003" and store.rollback().name == "v0002"
    assert sorted(p.name for p in store.root.iterdir()) == ["current", "v0002", "v0003", "v0005", "v0006"]


def _config_file(tmp_path: Path, cameras: list[dict[str, Any]], **extra: Any) -> Path:
    doc = {"backbone": TEST_BACKBONE.model_dump(), "cameras": cameras,
           "normality": {"k_min": 2, "k_max": 4, "k_candidates": 2, "silhouette_sample": 100, "hdbscan": "none",
                         "chroma": False},
           "transport": {"frames": free_tcp_endpoint(), "verdicts": free_tcp_endpoint(), "insecure": True},
           **extra}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_models_cli_lists_activates_and_rolls_back(tiny_model: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _store(tmp_path / "gate", tiny_model, 2)
    (tmp_path / "gate" / "v0002" / "version.json").write_text(json.dumps(
        {"source": "marked normal", "event": "e7", "previous": "v0001", "carried_from": "v0001"}), encoding="utf-8")
    config = _config_file(tmp_path, [{"id": "gate", "url": "x.mp4", "model": str(tmp_path / "gate")}])
    assert main(["models", "list", "--config", str(config), "gate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("  v0001") and lines[1].startswith("* v0002")
    assert lines[1].endswith("marked normal: event e7 (again, as v0001 did)")
    assert main(["models", "rollback", "--config", str(config), "gate"]) == 0
    assert "version v0001 is current" in capsys.readouterr().out
    assert main(["models", "activate", "--config", str(config), "gate", "v0002"]) == 0
    assert ModelStore(tmp_path / "gate").current().name == "v0002"
    assert main(["models", "reindex", "--config", str(config), "gate", "--index", "projected"]) == 0
    assert "gate: version v0003, v0002 served by projected search, is current" in capsys.readouterr().out
    current = ModelStore(tmp_path / "gate").current()
    assert current.name == "v0003" and current.record == {**current.record, "reindexed": "projected",
                                                          "previous": "v0002"}
    assert (current.path / "normality" / "projected.npz").is_file() and load_engine(current.path).scorer is not None
    for argv, expected in ((["models", "activate", "gate", "v0007"], "no model version 'v0007'"),
                           (["models", "list", "yard"], "--camera: no camera 'yard'")):
        assert main([*argv[:2], "--config", str(config), *argv[2:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err


@pytest.mark.slow
def test_a_new_current_version_is_swapped_in_between_batches_without_a_gap(tiny_model: Path, tmp_path: Path) -> None:
    """Camera `new` starts learning and `old` on v0001. A version appears for `new` and `old` moves to v0002,
    then rolls back: every frame of `old` is scored exactly once, in order, and verdicts name the version."""
    old_store = _store(tmp_path / "old", tiny_model, 2)
    old_store.activate("v0001")
    (tmp_path / "new").mkdir()
    transport = TransportConfig(frames=free_tcp_endpoint(), verdicts=free_tcp_endpoint(), policy="block",
                                insecure=True)
    cfg = StreamVADConfig(backbone=TEST_BACKBONE, transport=transport,
                          worker=WorkerConfig(max_batch=4, max_wait_ms=20, max_age_s=None, model_poll_s=0.05),
                          cameras=[CameraConfig(id=c, url="x.mp4", model=tmp_path / c) for c in ("old", "new")])
    worker = build_worker(cfg)
    assert worker.fleet.state("new") == "learning"
    inbox = VerdictInbox(transport.verdicts, auto_ack=True)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    pusher = FramePusher(transport.frames, policy="block")
    seen: dict[str, list[tuple[int, str | None]]] = {"old": [], "new": []}

    def send_and_collect(start: int, n: int) -> None:
        for i in range(start, start + n):
            for camera in ("old", "new"):
                pusher.send(make_frame(camera, i))
        deadline = time.monotonic() + 60
        while len(seen["old"]) < start + n:
            assert time.monotonic() < deadline, f"verdicts of old: {len(seen['old'])} of {start + n}"
            msg = inbox.recv_message(100)
            if msg is not None and msg.verdict is not None:
                seen[msg.camera].append((msg.verdict.key.index, msg.verdict.model_version))

    def wait_version(camera: str, version: str) -> None:
        deadline = time.monotonic() + 60
        while worker.fleet.versions().get(camera) != version:
            assert time.monotonic() < deadline, f"{camera} never switched to {version}"
            time.sleep(0.02)

    try:
        assert worker.ready.wait(30)
        send_and_collect(0, 8)
        shutil.copytree(tiny_model, tmp_path / "new" / ".incoming")
        new_store = ModelStore(tmp_path / "new")
        new_store.activate(new_store.add(tmp_path / "new" / ".incoming", {}).name)
        old_store.activate("v0002")
        wait_version("new", "v0001")
        wait_version("old", "v0002")
        send_and_collect(8, 8)
        old_store.rollback()
        wait_version("old", "v0001")
        send_and_collect(16, 8)
    finally:
        stop.set()
        thread.join(30)
        pusher.close(0)
        inbox.close()
    assert [i for i, _v in seen["old"]] == list(range(24))  # none dropped, none scored twice, in order
    versions = [v for _i, v in seen["old"]]
    assert versions == ["v0001"] * 8 + ["v0002"] * 8 + ["v0001"] * 8
    assert seen["new"] and {v for _i, v in seen["new"]} == {"v0001"}
    assert min(i for i, _v in seen["new"]) >= 8  # learning until its first version arrived


@pytest.fixture(scope="module")
def site_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model's scene, normal for 12 s, then a walker on the lawn (the enrolment records the start)."""
    return make_scene(tmp_path_factory.mktemp("enrol"), seconds=16, fps=10, size=(120, 160), seed=5,
                      place_seed=PLACE, anomalies=[AnomalySpec("lawn_walker", 12.0, 16.0, seed=2)],
                      name="gate").path


@pytest.mark.slow
def test_enroll_records_fits_and_makes_a_new_current_version(site_clip: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = _config_file(tmp_path, [{"id": "gate", "url": str(site_clip), "fps": 4.0,
                                      "model": str(tmp_path / "models" / "gate")}])
    # what earlier enrolments left: one whose process is gone (killed -9: its recording goes) and one whose
    # process still runs (an enrolment under way: it stays)
    gone, running = subprocess.Popen(["true"]), subprocess.Popen(["sleep", "300"])
    gone.wait()
    dead_work, live_work = (tmp_path / "models" / "gate" / f".enrol-1700000000-{p.pid}" for p in (gone, running))
    for work in (dead_work, live_work):
        (work / "frames").mkdir(parents=True)
    try:
        assert main(["enroll", "--config", str(config), "--camera", "gate", "--duration", "8s", "--no-progress"]) == 0
    finally:
        running.kill()
        running.wait()
    assert "gate: version v0001 is current (" in capsys.readouterr().out
    store = ModelStore(tmp_path / "models" / "gate")
    record = store.current().record
    assert (record["recorded_frames"], record["segments"], record["previous"]) == (32, 10, None)
    assert record["excluded_outliers"] <= 1 and record["fitted_frames"] == 32 - record["excluded_outliers"]
    assert record["n_holdout"] >= 2 and record["thresholds"]
    # this enrolment's recording is gone, only the version stays; so is the dead one's, not the running one's
    assert [p.name for p in store.root.glob(".enrol-*")] == [live_work.name]

    assert main(["enroll", "--config", str(config), "--camera", "gate", "--duration", "8s", "--no-progress"]) == 0
    assert store.current().name == "v0002" and store.current().record["previous"] == "v0001"
    assert not list(store.root.glob(".enrol-*"))  # its process has stopped since

    cfg = StreamVADConfig.model_validate(yaml.safe_load(config.read_text()))
    worker = build_worker(cfg)
    assert worker.fleet.versions() == {"gate": "v0002"}


@pytest.mark.slow
def test_an_enrolment_killed_9_while_fitting_leaves_no_fit_running(site_clip: Path, tmp_path: Path) -> None:
    """The fit runs in a child of the enrolment; an enrolment killed -9 (the OOM killer, a reboot of serve) takes
    it along at once instead of leaving it to fit on for nobody, and the store gains no version."""
    config = _config_file(tmp_path, [{"id": "gate", "url": str(site_clip), "fps": 4.0,
                                      "model": str(tmp_path / "models" / "gate")}])
    log = tmp_path / "enroll.log"
    with log.open("w") as err:
        enroll = subprocess.Popen([sys.executable, "-m", "streamvad", "enroll", "--config", str(config), "--camera",
                                   "gate", "--duration", "8s", "--no-progress"], stderr=err)
    try:
        deadline = time.monotonic() + 120  # a hang guard: recording 8 s of footage, then the fit starts
        while not (fits := [pid for pid in procs.children(enroll.pid) if "spawn_main" in procs.cmdline(pid)]):
            assert enroll.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        enroll.kill()
        enroll.wait()
        while any(map(procs.alive, fits)) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        enroll.kill()
    assert not any(map(procs.alive, fits)) and "is gone; exiting" in log.read_text(), log.read_text()[-2000:]
    assert ModelStore(tmp_path / "models" / "gate").versions() == []


def test_enroll_refuses_bad_input_in_one_line_and_leaves_the_current_version(
        tiny_model: Path, site_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _store(tmp_path / "gate", tiny_model, 1)
    (tmp_path / "a-file").write_text("x")
    config = _config_file(tmp_path, [
        {"id": "gate", "url": str(site_clip), "fps": 4.0, "model": str(tmp_path / "gate")},
        {"id": "plain", "url": str(site_clip), "model": str(tiny_model)},
        {"id": "blocked", "url": str(site_clip), "model": str(tmp_path / "a-file" / "store")},
    ])
    for argv, expected in (
            (["--camera", "yard", "--duration", "30s"], "--camera: no camera 'yard'"),
            (["--camera", "gate", "--duration", "2s"], "--duration: 2 s at 4 fps is too short"),
            (["--camera", "plain", "--duration", "30s"], "is one model directory, not a store"),
            (["--camera", "blocked", "--duration", "30s"], "cannot write to the model store")):
        assert main(["enroll", "--config", str(config), "--no-progress", *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert ModelStore(tmp_path / "gate").current().name == "v0001"
    assert [v.name for v in ModelStore(tmp_path / "gate").versions()] == ["v0001"]


def test_enroll_on_a_full_disk_is_one_line_and_leaves_the_store_as_it_was(
        tiny_model: Path, site_clip: Path, tmp_path: Path) -> None:
    """A full disk without a small mount (CI runs as root, where chmod cannot make anything unwritable): the
    process may write files of at most 4 kB (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write fails, EFBIG)."""
    _store(tmp_path / "gate", tiny_model, 1)
    gate = {"id": "gate", "url": str(site_clip), "fps": 4.0, "model": str(tmp_path / "gate")}
    config = _config_file(tmp_path, [gate])

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    done = subprocess.run([sys.executable, "-m", "streamvad", "enroll", "--config", str(config), "--camera", "gate",
                           "--duration", "8s", "--no-progress"], capture_output=True, text=True, timeout=300,
                          preexec_fn=small_files)
    assert done.returncode == 2, done.stderr[-2000:]
    err = [ln for ln in done.stderr.splitlines() if ln.startswith("streamvad: error")]
    assert len(err) == 1 and "cannot write to the model store (File too large)" in err[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    store = ModelStore(tmp_path / "gate")
    assert [v.name for v in store.versions()] == ["v0001"] and store.current().name == "v0001"
    assert not list(store.root.glob(".enrol-*"))


@pytest.mark.slow
def test_an_anomaly_in_5_percent_of_the_enrolment_footage_still_alerts_afterwards(tmp_path: Path) -> None:
    """A walker crosses the lawn for 2 s of a 40 s enrolment. Left in, its patches would be normal from then on,
    and the same walker passing again would score as normal. Scored leave one segment out, its frames are
    outliers and stay out of the fit: when the same walker crosses again in later footage, it raises an event,
    the only one, at the threshold the enrolment calibrated."""
    clip = make_scene(tmp_path / "clips", seconds=40, fps=10, size=(120, 160), seed=5, place_seed=PLACE,
                      anomalies=[AnomalySpec("lawn_walker", 19.0, 21.0, seed=2)], name="enrolment")
    later = make_scene(tmp_path / "clips", seconds=20, fps=10, size=(120, 160), seed=11, place_seed=PLACE,
                       anomalies=[AnomalySpec("lawn_walker", 8.0, 10.0, seed=2)], name="later")
    # unpaced: the recording keeps the file's own stream time, without 40 s of waiting for it
    config = _config_file(tmp_path, [{"id": "gate", "url": str(clip.path), "fps": 4.0, "realtime": False,
                                      "model": str(tmp_path / "models" / "gate")}], scoring={"motion": "appearance"})
    assert main(["enroll", "--config", str(config), "--camera", "gate", "--duration", "40s", "--no-progress"]) == 0
    store = ModelStore(tmp_path / "models" / "gate")
    assert store.current().record["excluded_outliers"] >= 6  # the walker's 8 frames, about
    # left in, the walker's frames would be in the memory and score about 0 when it comes back
    events = _events(later, store.current().path)
    assert len(events) == 1 and 8.0 <= events[0].opened_at <= 10.5, events


def _replay(clip: SceneClip, model: Path) -> list[dict[str, Any]]:
    """`clip` replayed through `model` at 4 fps: the verdict records, each labelled from the clip's truth."""
    from streamvad.offline.pipeline import clips_from_paths, replay

    records = replay(load_engine(model), clips_from_paths([clip.path]), sample_fps=4.0,
                     progress=False).records["primary"]
    for r in records:
        r["label"] = clip.labels[min(round(r["pts"] * clip.fps), len(clip.labels) - 1)]
    return records


def _events(clip: SceneClip, model: Path) -> list[RaisedEvent]:
    """The events the live tracker (with the default hysteresis) raises on `clip` replayed through `model`."""
    records = _replay(clip, model)
    verdicts = ClipVerdicts(np.array([r["pts"] for r in records]), np.array([r["label"] for r in records]),
                            np.array([r["anomalous"] for r in records]))
    return raise_events("gate", verdicts, EventsConfig())


@pytest.mark.slow
def test_a_camera_enrolled_across_dusk_raises_no_event_at_dusk_and_alerts_in_both_lights(tmp_path: Path) -> None:
    """40 s of the gate camera fading from day to a blue-lit night (16-24 s) is enrolled; then an evening of
    the same camera with a walker on the lawn by day and another by night. The dusk raises nothing and each
    walker an event. A camera enrolled by day alone alerts on the dusk itself: what the test would catch.

    Light is the appearance part's to learn (motion compares consecutive frames, and a dusk changes them by a
    grey level or two), so the cameras are scored on appearance: 40 s of footage is far too little for the
    motion part's memory of where people walk, which a real enrolment of minutes gives it."""
    dusk = Dusk(16.0, 24.0)
    scene = {"fps": 8, "size": (120, 160), "place_seed": PLACE}
    enrolment = make_scene(tmp_path / "clips", seconds=40, seed=5, dusk=dusk, name="enrolment", **scene)
    day = make_scene(tmp_path / "clips", seconds=16, seed=5, name="day", **scene)
    evening = make_scene(tmp_path / "clips", seconds=40, seed=9, dusk=dusk, name="evening", **scene,
                         anomalies=[AnomalySpec("lawn_walker", 5.0, 10.0, seed=2),
                                    AnomalySpec("lawn_walker", 30.0, 35.0, seed=3)])
    walkers = [(5.0, 10.0), (30.0, 35.0)]
    for camera, clip in (("gate", enrolment), ("daytime", day)):  # unpaced, as in the test above
        config = _config_file(tmp_path, [{"id": camera, "url": str(clip.path), "fps": 4.0, "realtime": False,
                                          "model": str(tmp_path / "models" / camera)}],
                              scoring={"motion": "appearance"})
        duration = f"{round(len(clip.labels) / clip.fps)}s"
        assert main(["enroll", "--config", str(config), "--camera", camera, "--duration", duration,
                     "--no-progress"]) == 0
    events = _events(evening, ModelStore(tmp_path / "models" / "gate").current().path)
    assert all(any(a - 1.0 <= e.opened_at <= b + 1.0 for a, b in walkers) for e in events), events
    assert [any(a <= e.opened_at <= b + 1.0 for e in events) for a, b in walkers] == [True, True], events

    by_day = _events(evening, ModelStore(tmp_path / "models" / "daytime").current().path)
    assert any(e.opened_at >= dusk.start_s and not any(a <= e.opened_at <= b + 1 for a, b in walkers)
               for e in by_day), by_day
