"""Event-level evaluation through the live hysteresis: segments detected, delays, false events per hour."""

from __future__ import annotations

import numpy as np
import pytest

from streamvad.config import EventsConfig
from streamvad.offline.event_metrics import ClipVerdicts, event_metrics, segments
from streamvad.sources.sampler import PtsSampler

CFG = EventsConfig(open_n=2, open_m=4, close_quiet_s=2.0, cooldown_s=10.0)


def _clip(n: int, anomalous_at: list[int], labelled: list[tuple[int, int]], step: float = 0.25) -> ClipVerdicts:
    labels = np.zeros(n, dtype=int)
    for a, b in labelled:
        labels[a:b] = 1
    flags = np.zeros(n, dtype=bool)
    flags[anomalous_at] = True
    return ClipVerdicts(np.arange(n) * step, labels, flags)


def test_segments_are_runs_of_anomalous_frames() -> None:
    pts = np.arange(10) * 0.5
    assert segments(pts, np.array([1, 1, 0, 0, 1, 0, 0, 1, 1, 1])) == [(0.0, 0.5), (2.0, 2.0), (3.5, 4.5)]
    assert segments(pts, np.zeros(10, dtype=int)) == []


def test_detected_segment_delay_is_from_its_start_to_the_opening_verdict() -> None:
    # segment frames 40-59; anomalous verdicts from frame 43 on: the event opens on the 2nd, frame 44
    clip = _clip(200, list(range(43, 60)), [(40, 60)])
    m = event_metrics({"a": clip}, CFG)
    assert (m["segments"], m["segments_detected"], m["false_events"]) == (1, 1, 0)
    assert m["delay_median_s"] == pytest.approx((44 - 40) * 0.25)
    assert m["per_clip"]["a"]["delay_s"] == [pytest.approx(1.0)]


def test_false_events_count_per_hour_of_normal_footage_and_missed_segments_have_no_delay() -> None:
    # two separate false alarms (far apart, so cooldown does not merge them), one missed segment
    clip = _clip(1000, [100, 101, 600, 601], [(300, 320)])
    m = event_metrics({"a": clip}, CFG)
    assert (m["segments"], m["segments_detected"], m["false_events"]) == (1, 0, 2)
    normal_hours = 980 * 0.25 / 3600
    assert m["normal_hours"] == pytest.approx(normal_hours)
    assert m["false_events_per_hour"] == pytest.approx(2 / normal_hours)
    assert m["per_clip"]["a"]["delay_s"] == [None] and np.isnan(m["delay_median_s"])


def test_normal_footage_is_the_stream_time_its_frames_cover_when_sampling_steps_alternate() -> None:
    # 5 minutes of 10 fps footage sampled at 4 fps as the readers sample it: steps of 0.3, 0.2, 0.3, ... s, one more
    # 0.3 than 0.2, so their median (0.3) would count 6 minutes
    sampler = PtsSampler(4.0)
    pts = np.array([t for t in np.arange(3000) / 10 if sampler.accept(float(t))])
    assert len(pts) == 1200 and float(np.median(np.diff(pts))) == pytest.approx(0.3)
    flags = np.zeros(len(pts), dtype=bool)
    flags[[100, 101]] = True
    m = event_metrics({"a": ClipVerdicts(pts, np.zeros(len(pts), dtype=int), flags)}, CFG)
    assert m["normal_hours"] == pytest.approx(300 / 3600, rel=1e-3)
    assert m["false_events_per_hour"] == pytest.approx(12.0, rel=1e-3)


def test_a_stream_outage_is_not_counted_as_normal_footage() -> None:
    pts = np.r_[np.arange(400) * 0.25, 3600 + np.arange(400) * 0.25]  # an hour without frames in the middle
    m = event_metrics({"a": ClipVerdicts(pts, np.zeros(800, dtype=int), np.zeros(800, dtype=bool))}, CFG)
    assert m["normal_hours"] == pytest.approx((800 + 1) * 0.25 / 3600)


def test_a_single_anomalous_frame_is_not_an_event_and_clips_pool() -> None:
    quiet = _clip(100, [50], [])  # one frame never reaches open_n = 2
    hit = _clip(100, [10, 11, 12], [(10, 13)])
    m = event_metrics({"quiet": quiet, "hit": hit}, CFG)
    assert (m["segments"], m["segments_detected"], m["false_events"]) == (1, 1, 0)
    assert m["segment_recall"] == 1.0
