"""Scores windowed over stream time per camera (scoring.smooth_s, normality.motion.smooth_s and window)."""

from __future__ import annotations

import numpy as np
import pytest

from streamvad.config import ScoringConfig
from streamvad.scoring.smoothing import Smoother, causal_means
from streamvad.types import FrameKey, Verdict


def verdict(camera: str, pts: float, raw: float, threshold: float = 1.0) -> Verdict:
    return Verdict(FrameKey(camera, round(pts * 10), pts), min(raw, 1.0), raw, raw > threshold, 0.0,
                   np.zeros(6, dtype=np.float32), (2, 3), 0, threshold, "test")


def raws(smoother: Smoother, camera: str, fps: float, values: list[float]) -> list[float]:
    return [smoother.apply([verdict(camera, i / fps, v)])[0].raw_score for i, v in enumerate(values)]


def test_window_is_seconds_of_stream_time_not_frames() -> None:
    # 0.5 s is five frames at 10 fps and two at 4 fps: each frame averages what came before it in that span
    assert raws(Smoother(0.5), "cam", 10.0, [0, 0, 0, 0, 0, 5, 0]) == pytest.approx([0, 0, 0, 0, 0, 1, 1])
    assert raws(Smoother(0.5), "cam", 4.0, [0, 0, 4, 0, 0]) == pytest.approx([0, 0, 2, 2, 0])


def test_a_shed_frame_shortens_the_window() -> None:
    smoother = Smoother(0.5)
    out = [smoother.apply([verdict("cam", pts, raw)])[0].raw_score for pts, raw in [(0.0, 3.0), (0.1, 0.0), (0.6, 1.5)]]
    assert out == pytest.approx([3.0, 1.5, 1.5])  # at 0.6 s the frames of 0.0 and 0.1 are out of the window


def test_cameras_are_separate_and_a_restarted_stream_starts_afresh() -> None:
    smoother = Smoother(1.0)
    batch = smoother.apply([verdict("a", 0.0, 4.0), verdict("b", 0.0, 0.0), verdict("a", 0.25, 0.0),
                            verdict("b", 0.25, 2.0)])
    assert [v.raw_score for v in batch] == pytest.approx([4.0, 0.0, 2.0, 1.0])
    restarted = smoother.apply([verdict("a", 0.0, 0.5)])[0]  # pts went backwards: the old window is gone
    assert restarted.raw_score == pytest.approx(0.5)


def test_decision_follows_the_smoothed_score_and_needs_a_frame_over_the_threshold() -> None:
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 0.3, 400).tolist()
    smoother = Smoother(0.5)
    out = [smoother.apply([verdict("cam", i / 10, v)])[0] for i, v in enumerate(values)]
    assert all(v.anomalous == (v.raw_score > v.threshold) for v in out)
    assert all(v.score == pytest.approx(np.mean([min(x, 1.0) for x in values[max(0, i - 4):i + 1]]))
               for i, v in enumerate(out))
    # a window's mean passes the threshold only if one of its frames does: smoothing adds no false alarm
    for i, v in enumerate(out):
        if v.anomalous:
            assert max(values[max(0, i - 4):i + 1]) > 1.0
    assert sum(v.anomalous for v in out) < sum(x > 1.0 for x in values)


def test_zero_seconds_scores_each_frame_alone() -> None:
    v = [verdict("cam", 0.0, 3.0), verdict("cam", 0.1, 0.0)]
    assert Smoother(0.0).apply(v) == v
    assert ScoringConfig().smooth_s == 0.0  # opt-in (scoring/smoothing.py)


def test_exponential_window_follows_stream_time_at_any_rate() -> None:
    """A step from 0 to 1 reaches 1 - exp(-t / tau) t seconds after it began, whether 10 or 5 frames a second
    or a frame shed in between: the window forgets by stream time, not by frames."""
    tau = 0.35
    for times in ([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.0, 0.2, 0.4, 0.6], [0.0, 0.1, 0.4, 0.6]):
        smoother = Smoother(tau, "exponential")
        out = [smoother.apply([verdict("cam", t, 0.0 if t == 0.0 else 1.0)])[0].raw_score for t in times]
        assert out[0] == 0.0 and out[-1] == pytest.approx(1 - np.exp(-0.6 / tau))
        assert out == sorted(out)  # it rises every frame the step lasts


def test_exponential_window_weighs_the_newest_frame_most_and_forgets_a_gap() -> None:
    smoother = Smoother(0.5, "exponential")
    out = raws(smoother, "cam", 10.0, [0, 0, 5, 0, 0])
    keep = np.exp(-0.1 / 0.5)
    assert out == pytest.approx([0, 0, 5 * (1 - keep), 5 * (1 - keep) * keep, 5 * (1 - keep) * keep**2])
    after_gap = smoother.apply([verdict("cam", 30.0, 2.0)])[0].raw_score  # 30 s later the spike is forgotten
    assert after_gap == pytest.approx(2.0)
    assert smoother.apply([verdict("cam", 0.0, 0.7)])[0].raw_score == 0.7  # pts went backwards: afresh


def test_calibration_windows_as_the_smoother_serves() -> None:
    """causal_means is what a Smoother gives the same rows in order, per stream, for either window."""
    rng = np.random.default_rng(1)
    values = rng.gamma(2.0, 0.3, 60).astype(np.float32)
    streams, pts = np.repeat(["a", "b", "c"], 20), np.tile(np.arange(20) / 4, 3)
    for window in ("mean", "exponential"):
        smoother = Smoother(0.5, window)
        served = [smoother.apply([verdict(str(c), float(t), float(v))])[0].raw_score
                  for c, t, v in zip(streams, pts, values, strict=True)]
        assert causal_means(values, streams, pts, 0.5, window) == pytest.approx(served, abs=1e-6)
        starts = np.flatnonzero(pts == 0)
        assert causal_means(values, streams, pts, 0.5, window)[starts] == pytest.approx(values[starts])
