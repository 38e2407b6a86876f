"""Alert budgets: a threshold extrapolated from a short hold-out keeps false events per day within budget on hours
of normal footage, where the calibrated quantile does not."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from streamvad.config import BackboneConfig, EventsConfig, NormalityConfig, StreamVADConfig
from streamvad.datasets.synthetic import make_scene
from streamvad.errors import ConfigError
from streamvad.live.events import EventTracker
from streamvad.offline.pipeline import clips_from_paths, fit, replay
from streamvad.scoring.budget import ScoreTail, budget_for, opening_statistic
from streamvad.scoring.engine import load_engine
from streamvad.types import FrameKey, Verdict

EVENTS = EventsConfig()  # 2 of 4 frames open an event, as shipped


def _events(scores: np.ndarray, threshold: float, cfg: EventsConfig = EVENTS, fps: float = 4.0) -> int:
    """Events the shipped hysteresis opens on one stream of raw scores at `threshold`."""
    tracker = EventTracker(cfg)
    opened = 0
    for i, s in enumerate(scores):
        v = Verdict(FrameKey("cam", i, i / fps), min(1.0, float(s)), float(s), bool(s > threshold), 0.0,
                    np.zeros(1, dtype=np.float32), (1, 1), 0, threshold, "test")
        opened += sum(u.kind == "opened" for u in tracker.update(v, i / fps))
    return opened


def _normal_scores(n: int, rng: np.random.Generator) -> np.ndarray:
    """Scores as a camera's normal footage gives them: correlated from frame to frame, with a heavy-ish tail."""
    noise = rng.gamma(2.0, 0.25, n)
    return np.convolve(noise, np.ones(3) / 3, mode="same")


def test_the_opening_statistic_is_the_nth_largest_of_the_window() -> None:
    assert opening_statistic([0.1, 0.9, 0.2, 0.8, 0.3], 2, 4).tolist() == [-np.inf, 0.1, 0.2, 0.8, 0.8]


def test_an_extrapolated_threshold_holds_the_budget_on_a_hundred_times_longer_stream() -> None:
    rng = np.random.default_rng(7)
    holdout = [_normal_scores(600, rng) for _ in range(2)]  # 5 minutes at 4 fps
    tail = ScoreTail.fit(holdout, EVENTS.open_n, EVENTS.open_m)
    day = _normal_scores(4 * 86400 // 2, rng)  # half a day
    for per_day in (4.0, 20.0):
        threshold = tail.threshold(per_day, 4.0)
        assert threshold > max(h.max() for h in holdout)  # beyond anything the hold-out showed
        assert _events(day, threshold) <= per_day / 2 * 1.5  # what the half day raised, against half the budget
    quantile = float(np.quantile(np.concatenate(holdout), 0.99))
    assert _events(day, quantile) > 10 * 20.0  # the frame quantile alone: hundreds of events a day


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DINOv2 (random weights, built and saved here): scoring hours of footage must be quick, and the
    budget is about the tail of normal scores, whatever the backbone."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-dinov2")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=32)).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.timeout(900)  # a hang guard, not a speed target: about 1.5 minutes alone
def test_an_hour_of_normal_footage_stays_within_the_budget(tmp_path: Path, tiny_vit: Path) -> None:
    """A model fitted on four minutes of a scene (one held out) keeps its alert budget over an hour of the same
    scene's normal footage, sixty times its hold-out (rendered faster than real time, scored as served, motion
    included), where its calibrated quantile threshold alone raises several false events an hour."""
    cfg = StreamVADConfig(
        backbone=BackboneConfig(name="dinov2", model=str(tiny_vit), image_size=(48, 64), device="cpu", batch_size=64),
        normality=NormalityConfig(k_min=2, k_max=4, k_candidates=2, silhouette_sample=100, hdbscan="none", chroma=False,
                                  holdout_fraction=0.25))
    train = [make_scene(tmp_path / "fit", seconds=60, fps=4, size=(60, 80), seed=s, place_seed=5, name=f"n{s}").path
             for s in range(4)]
    fit(cfg, clips_from_paths(train, native_fps=4.0), tmp_path / "model", sample_fps=4.0, progress=False)
    engine = load_engine(tmp_path / "model")
    per_day = 24.0  # one event allowed in the hour
    budget = budget_for(engine.info.fit, per_day, 4.0, EVENTS)
    assert budget is not None and budget.threshold > 1.0  # stricter than the quantile (1 on the fused scale)
    hours, quantile_events, budget_events = 0.0, 0, 0
    for chunk in range(6):  # 6 x 10 minutes
        clip = make_scene(tmp_path / "stream", seconds=600, fps=4, size=(60, 80), seed=100 + chunk, place_seed=5,
                          name="stream")
        replayed = replay(engine, clips_from_paths([clip.path], native_fps=4.0), sample_fps=4.0, budget=budget,
                          progress=False).records["primary"]
        scores = np.array([r["raw_score"] for r in replayed])
        assert all(r["anomalous"] == (r["raw_score"] > budget.threshold) for r in replayed)  # decided at the budget
        quantile_events += _events(scores, 1.0)
        budget_events += _events(scores, budget.threshold)
        hours += len(scores) / 4 / 3600
    assert hours == pytest.approx(1.0, rel=0.01)
    print(f"{hours:.2f} h of normal footage: {budget_events} events at the budget's threshold {budget.threshold:.3f} "
          f"({per_day:g}/day allowed), {quantile_events} at the calibrated quantile's 1.0")
    assert budget_events / hours * 24 <= per_day, (budget_events, quantile_events)
    assert quantile_events / hours >= 3 * per_day / 24, (budget_events, quantile_events)  # well over it without
    with pytest.raises(ConfigError, match="no hold-out scores"):
        budget_for({**engine.info.fit, "holdout_sequences": []}, per_day, 4.0, EVENTS)
    assert math.isfinite(budget.threshold)
