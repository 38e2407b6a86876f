"""Drift: a camera whose scene changed for good is told apart from one that is just busy, and /healthz and
/metrics say that it should be re-enrolled. A real fitted model, a real worker over ZeroMQ, real clips."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from streamvad.bench.throughput import PLACE
from streamvad.config import DriftConfig, WorkerConfig
from streamvad.datasets.synthetic import AnomalySpec, make_scene
from streamvad.live.drift import DriftMonitor
from streamvad.live.health import ServeState, StatusCollector
from streamvad.live.worker import Worker
from streamvad.messages import STATUS_ROLES, WIRE_VERSION
from streamvad.scoring.engine import ModelInfo, load_engine
from streamvad.sources import iter_video
from tests.test_worker import running_worker, tiny_model, verdict_keys

__all__ = ["tiny_model"]


def _engine(scores: list[float], decided_by: str = "distance/topk@1.00") -> SimpleNamespace:
    """What the monitor reads of an engine: its model's recorded hold-out."""
    return SimpleNamespace(info=SimpleNamespace(fit={"holdout_scores": scores, "holdout_decided_by": decided_by}))


def test_the_monitor_compares_the_last_window_with_the_hold_out_and_starts_afresh_per_version() -> None:
    rng = np.random.default_rng(0)
    holdout = sorted(rng.normal(1.0, 0.1, 300).tolist())
    monitor = DriftMonitor(DriftConfig(window=100, min_frames=50, every=10, ks=0.5))
    v1 = _engine(holdout)
    for x in rng.normal(1.0, 0.1, 49):  # normal, and not yet enough to say
        monitor.observe("gate", v1, float(x), "distance/topk@1.00")
    assert monitor.distances() == {} and monitor.suggested() == []
    for x in rng.normal(1.0, 0.1, 51):
        monitor.observe("gate", v1, float(x), "distance/topk@1.00")
    assert monitor.distances()["gate"] < 0.2 and monitor.suggested() == []
    for x in np.r_[rng.normal(3.0, 0.1, 10), rng.normal(1.0, 0.1, 90)]:  # an incident: seconds, not the scene
        monitor.observe("gate", v1, float(x), "distance/topk@1.00")
    assert monitor.suggested() == []
    for x in rng.normal(1.5, 0.1, 100):  # the scene changed for good: the whole window sits above the hold-out
        monitor.observe("gate", v1, float(x), "distance/topk@1.00")
    assert monitor.distances()["gate"] > 0.9 and monitor.suggested() == ["gate"]
    v2 = _engine(sorted(rng.normal(1.5, 0.1, 300).tolist()))  # re-enrolled on the changed scene
    monitor.observe("gate", v2, 1.5, "distance/topk@1.00")
    assert monitor.suggested() == [] and monitor.distances() == {}
    for x in rng.normal(0.5, 0.1, 100):  # a quieter scene scores below the hold-out: no reason to re-enrol
        monitor.observe("porch", v1, float(x), "distance/topk@1.00")
    assert monitor.distances()["porch"] < 0.05 and "porch" not in monitor.suggested()
    other = _engine(holdout, decided_by="distance/topk@1.00+motion@0.70")  # serve overrode the scoring
    for x in rng.normal(9.0, 0.1, 200):
        monitor.observe("yard", other, float(x), "motion@0.70")
    assert "yard" not in monitor.distances()
    for x in rng.normal(9.0, 0.1, 200):
        monitor.observe("lot", _engine([]), float(x), "distance/topk@1.00")  # a model without hold-out scores
    assert "lot" not in monitor.distances()


def _scored(worker: Worker, n: int) -> dict[str, Any]:
    """The worker's stats once it has counted `n` verdicts of the camera (it counts just after sending them)."""
    deadline = time.monotonic() + 30
    while (stats := worker.stats())["frames_out"].get("gate", 0) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return stats


@pytest.mark.slow
def test_a_scene_changed_for_good_suggests_re_enrolling_in_healthz_and_metrics(tiny_model: Path,
                                                                               tmp_path: Path) -> None:
    """The model's own scene, new footage of it, then the same scene with three carts parked in it for good
    (benches moved in): the first keeps close to the hold-out, the second parts from it."""
    fit = ModelInfo.load(tiny_model).fit
    assert len(fit["holdout_scores"]) >= 10 and fit["holdout_decided_by"]
    normal = make_scene(tmp_path, seconds=16, fps=10, size=(120, 160), seed=7, place_seed=PLACE, name="normal")
    bench = make_scene(tmp_path, seconds=16, fps=10, size=(120, 160), seed=8, place_seed=PLACE, name="bench",
                       anomalies=[AnomalySpec("object", 0.0, 16.0, seed=s) for s in (3, 4, 5)])
    frames = list(iter_video(normal.path, "gate"))
    # the test model's hold-out is 16 frames (a site's is minutes), the clip's tail, which scores above the rest
    # of the scene: new normal footage lies below it (one-sided KS 0.19 here, 0.67 two-sided) and the parked
    # carts above it (0.5); the bar lies between
    cfg = DriftConfig(window=len(frames), min_frames=len(frames), every=1, ks=0.4)
    with running_worker(load_engine(tiny_model), WorkerConfig(max_batch=8, max_wait_ms=20), drift=cfg) as (
            worker, pusher, sub):
        for frame in frames:
            pusher.send(frame)
        assert len(verdict_keys(sub, len(frames))) == len(frames)
        calm = _scored(worker, len(frames))
        for frame in iter_video(bench.path, "gate"):
            frame.index, frame.pts = frame.index + len(frames), frame.pts + 16.0
            pusher.send(frame)
        assert len(verdict_keys(sub, len(frames))) == len(frames)
        moved = _scored(worker, 2 * len(frames))
    assert calm["drift"]["gate"] < 0.4 and calm["reenrol"] == [], calm["drift"]
    assert moved["drift"]["gate"] > 0.4 and moved["reenrol"] == ["gate"], moved["drift"]

    report = STATUS_ROLES["worker"].model_validate(  # what the status channel carries checks out
        {"v": WIRE_VERSION, "type": "status", "role": "worker", "camera": "worker-0", **moved}).model_dump()
    state = ServeState()
    state.expect("worker", "worker-0", "worker-0")
    state.update(report)
    _, body = state.health()
    assert body["cameras"]["gate"]["reenrol_suggested"] is True
    assert body["advice"] == [f"gate: re-enrol suggested (its live scores have parted from its model's hold-out: "
                              f"KS {moved['drift']['gate']:.2f})"]
    metrics = {(m.name, s.labels.get("camera")): s.value for m in StatusCollector(state).collect() for s in m.samples}
    assert metrics[("streamvad_reenrol_suggested", "gate")] == 1.0
    assert metrics[("streamvad_score_drift", "gate")] == pytest.approx(moved["drift"]["gate"])
