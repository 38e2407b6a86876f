"""Scores averaged over stream time per camera (scoring.smooth_s)."""

from __future__ import annotations

import numpy as np
import pytest

from streamvad.config import ScoringConfig
from streamvad.scoring.smoothing import Smoother
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
