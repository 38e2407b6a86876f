"""Event hysteresis on scripted verdict sequences (4 verdicts per second of pts)."""

from __future__ import annotations

import numpy as np

from streamvad.config import EventsConfig
from streamvad.live.events import EventTracker, EventUpdate
from streamvad.types import FrameKey, Verdict

CFG = EventsConfig(open_n=2, open_m=4, close_quiet_s=1.0, cooldown_s=3.0)
STEP = 0.25


def verdict(i: int, anomalous: bool, score: float | None = None, camera: str = "cam", pts: float | None = None,
            ) -> Verdict:
    score = (0.9 if anomalous else 0.1) if score is None else score
    conf = np.full(6, score, dtype=np.float32)
    return Verdict(FrameKey(camera, i, i * STEP if pts is None else pts), score, score, anomalous, score, conf,
                   (2, 3), 6 if anomalous else 0, 0.8, "test")


def run(script: str, cfg: EventsConfig = CFG, tracker: EventTracker | None = None,
        ) -> tuple[list[tuple[str, int]], list[EventUpdate]]:
    """'A' = anomalous verdict, '.' = normal; returns (kind, verdict index) of every update."""
    tracker = tracker or EventTracker(cfg)
    marks, updates = [], []
    for i, c in enumerate(script):
        for u in tracker.update(verdict(i, c == "A"), wall_time=100.0 + i * STEP):
            marks.append((u.kind, i))
            updates.append(u)
    return marks, updates


def test_opens_when_n_of_last_m_are_anomalous() -> None:
    assert run("A..A")[0] == [("opened", 3)]
    assert run("A...A...A...")[0] == []  # never 2 within 4
    marks, updates = run(".A.A")
    assert marks == [("opened", 3)]
    event = updates[0].event
    assert event.start_pts == 0.25 and event.frame_count == 2 and event.end_pts is None
    assert event.state == "open" and event.start_wall_time == 100.25


def test_closes_after_quiet_period_by_pts() -> None:
    marks, updates = run("AA" + "." * 6)
    assert marks == [("opened", 1), ("closed", 5)]  # quiet from pts 0.25 reaches 1.0 s at pts 1.25
    closed = updates[-1].event
    assert closed.state == "closed" and closed.end_pts == 0.25 and closed.frame_count == 2
    assert updates[0].event.state == "open"  # what sinks received earlier is not rewritten


def test_anomaly_during_quiet_keeps_event_open() -> None:
    marks, updates = run("AA...A" + "." * 6)
    assert marks == [("opened", 1), ("closed", 9)]
    assert updates[-1].event.frame_count == 3 and updates[-1].event.end_pts == 5 * STEP


def test_updated_only_when_peak_grows() -> None:
    tracker = EventTracker(CFG)
    scores = [0.85, 0.86, 0.84, 0.95, 0.9, 0.99, 0.99]
    kinds = [(u.kind, u.event.peak_score) for i, s in enumerate(scores)
             for u in tracker.update(verdict(i, True, s), wall_time=float(i))]
    assert kinds == [("opened", 0.86), ("updated", 0.95), ("updated", 0.99)]


def test_cooldown_suppresses_and_counts_then_reopens() -> None:
    tracker = EventTracker(CFG)
    # closes at index 5 (pts 1.25): cooldown until pts 4.25 (index 17)
    marks, updates = run("AA...." + "AAAA" + "." * 7 + "AA", tracker=tracker)
    assert marks == [("opened", 1), ("closed", 5), ("opened", 18)]
    assert tracker.suppressed["cam"] == 3  # indices 7, 8, 9 would have opened
    assert updates[-1].event.start_pts == 17 * STEP
    assert updates[0].event.id == updates[1].event.id != updates[2].event.id


def test_ongoing_anomaly_opens_as_soon_as_cooldown_ends() -> None:
    marks, _ = run("AA...." + "A" * 14)
    assert marks == [("opened", 1), ("closed", 5), ("opened", 17)]


def test_flush_closes_open_events_per_camera_or_all() -> None:
    tracker = EventTracker(CFG)
    for cam in ("a", "b"):
        for i in range(3):
            tracker.update(verdict(i, True, camera=cam), wall_time=float(i))
    assert tracker.flush("nope") == []
    closed_a = tracker.flush("a")
    assert [(u.kind, u.event.camera, u.event.end_pts) for u in closed_a] == [("closed", "a", 0.5)]
    assert tracker.current_event("a") is None and tracker.current_event("b") is not None
    assert [u.event.camera for u in tracker.flush()] == ["b"]
    assert tracker.flush() == []


def test_cameras_are_independent() -> None:
    tracker = EventTracker(CFG)
    out = []
    for i in range(4):
        out += tracker.update(verdict(i, True, camera="busy"), wall_time=float(i))
        out += tracker.update(verdict(i, i == 0, camera="calm"), wall_time=float(i))
    assert [(u.kind, u.event.camera) for u in out] == [("opened", "busy")]


def test_peak_frame_heatmap_ids_and_sequence_numbers() -> None:
    tracker = EventTracker(CFG)
    frames = [np.full((4, 6, 3), i, dtype=np.uint8) for i in range(6)]
    scores = [0.95, 0.85, 0.97, 0.1, 0.1, 0.1]
    updates = []
    for i, s in enumerate(scores):
        updates += tracker.update(verdict(i, s > 0.5, s), wall_time=float(i), frame=frames[i])
    updates += tracker.flush()
    assert [u.kind for u in updates] == ["opened", "updated", "closed"]
    opened, _, closed = updates
    assert opened.peak_frame is frames[0] and opened.event.peak_key.index == 0  # peak inside the opening window
    assert closed.peak_frame is frames[2] and np.allclose(closed.peak_heatmap, np.full((2, 3), 0.97))
    assert [u.seq for u in updates] == [0, 1, 2]
    assert len({u.idempotency_key for u in updates}) == 3 and len({u.event.id for u in updates}) == 1


def test_late_verdicts_are_ignored_and_counted() -> None:
    tracker = EventTracker(CFG)
    tracker.update(verdict(5, True), wall_time=0.0)
    assert tracker.update(verdict(4, True), wall_time=0.0) == []
    assert tracker.late["cam"] == 1 and tracker.current_event("cam") is None


def test_gap_longer_than_quiet_closes_before_a_new_anomaly() -> None:
    cfg = EventsConfig(open_n=1, open_m=1, close_quiet_s=1.0, cooldown_s=0.0)
    tracker = EventTracker(cfg)
    first = tracker.update(verdict(0, True), wall_time=0.0)
    second = tracker.update(verdict(1, True, pts=5.0), wall_time=5.0)
    assert [u.kind for u in first + second] == ["opened", "closed", "opened"]
    assert second[0].event.end_pts == 0.0 and second[1].event.start_pts == 5.0


def test_expire_closes_events_of_silent_cameras_by_wall_time() -> None:
    cfg = CFG.model_copy(update={"silence_s": 5.0})
    tracker = EventTracker(cfg)
    for i in range(2):
        tracker.update(verdict(i, True), wall_time=100.0 + i)
    assert tracker.expire(105.5) == []
    assert [u.kind for u in tracker.expire(106.0)] == ["closed"]


def test_a_slow_worker_does_not_split_an_event() -> None:
    """20 s of continuous anomaly at 4 fps whose verdicts arrive 2.5 s after their frames (a saturated worker,
    more than close_quiet_s behind): one event, opened once and closed once, however often silence is checked."""
    cfg = EventsConfig()  # close_quiet_s 2, silence_s 10, cooldown 10
    tracker = EventTracker(cfg)
    kinds = []
    for i in range(80):
        captured = 1000.0 + i * STEP
        arrived = captured + 2.5
        kinds += [u.kind for u in tracker.update(verdict(i, True), wall_time=captured, arrived=arrived)]
        kinds += [u.kind for u in tracker.expire(arrived + 0.1)]  # the events process ticks between verdicts
    kinds += [u.kind for u in tracker.expire(1000.0 + 80 * STEP + 2.5 + cfg.silence_s)]  # then the camera stops
    assert [k for k in kinds if k != "updated"] == ["opened", "closed"]
    assert tracker.suppressed["cam"] == 0


EOS_CFG = EventsConfig(open_n=1, open_m=1, close_quiet_s=10.0, cooldown_s=0.0, eos_wait_s=3.0)


def feed(tracker: EventTracker, indices: range, anomalous: bool = True) -> list[EventUpdate]:
    return [u for i in indices for u in tracker.update(verdict(i, anomalous), wall_time=100.0 + i * STEP)]


def test_eos_overtaking_the_last_verdicts_waits_for_them() -> None:
    """Two workers: the EOS naming frame 3 arrives (through one worker) before verdicts 2 and 3 (the other)."""
    tracker = EventTracker(EOS_CFG)
    assert [u.kind for u in feed(tracker, range(2))] == ["opened"]
    assert tracker.end_of_stream("cam", FrameKey("cam", 3, 3 * STEP), now=100.3) == []
    assert tracker.expire(103.2) == [] and tracker.current_event("cam") is not None  # within eos_wait_s
    assert feed(tracker, range(2, 3)) == []  # not the last frame yet
    closed = feed(tracker, range(3, 4))
    assert [(u.kind, u.event.end_pts, u.event.frame_count) for u in closed] == [("closed", 3 * STEP, 4)]
    assert tracker.late["cam"] == 0 and tracker.expire(109.0) == []  # nothing is left waiting


def test_event_opened_by_verdicts_the_eos_overtook_is_closed_by_it() -> None:
    tracker = EventTracker(EOS_CFG)
    feed(tracker, range(2), anomalous=False)
    assert tracker.end_of_stream("cam", FrameKey("cam", 3, 3 * STEP), now=100.3) == []
    assert [u.kind for u in feed(tracker, range(2, 4))] == ["opened", "closed"]
    assert tracker.current_event("cam") is None


def test_eos_closes_at_once_after_its_last_verdict_or_without_one() -> None:
    tracker = EventTracker(EOS_CFG)
    feed(tracker, range(4))
    assert [u.kind for u in tracker.end_of_stream("cam", FrameKey("cam", 3, 3 * STEP), now=101.0)] == ["closed"]
    feed(tracker, range(4, 6))  # a new event; an EOS from an older reader names no frame
    assert [u.kind for u in tracker.end_of_stream("cam", None, now=101.5)] == ["closed"]


def test_eos_stops_waiting_after_eos_wait_s_for_a_frame_never_scored() -> None:
    tracker = EventTracker(EOS_CFG)
    feed(tracker, range(2))
    tracker.end_of_stream("cam", FrameKey("cam", 2, 2 * STEP), now=101.0)  # frame 2 was shed by its worker
    assert tracker.expire(103.9) == []
    closed = tracker.expire(104.0)
    assert [(u.kind, u.event.end_pts) for u in closed] == [("closed", STEP)]
    assert tracker.expire(200.0) == []


def test_stream_restart_closes_the_open_event_and_tracks_the_new_stream() -> None:
    """A restarted reader numbers frames from pts 0 again: its verdicts are a new stream, not late ones."""
    tracker = EventTracker(CFG)  # cooldown 3 s, restart_after_s 10 s
    old = [u for i in range(4) for u in tracker.update(verdict(i, True, pts=40.0 + i * STEP), wall_time=float(i))]
    assert [u.kind for u in old] == ["opened"]
    restart = tracker.update(verdict(0, True, pts=0.0), wall_time=5.0)
    assert [(u.kind, u.event.id, u.event.end_pts) for u in restart] == [("closed", old[0].event.id, 40.75)]
    new = tracker.update(verdict(1, True, pts=STEP), wall_time=5.25)
    assert [(u.kind, u.event.start_pts, u.event.frame_count) for u in new] == [("opened", 0.0, 2)]
    assert new[0].event.id != old[0].event.id
    assert tracker.restarts["cam"] == 1 and tracker.late["cam"] == 0 and tracker.suppressed["cam"] == 0


def test_backward_step_within_restart_tolerance_is_late() -> None:
    tracker = EventTracker(CFG)
    opened = [u for i in range(2) for u in tracker.update(verdict(i, True, pts=19.75 + i * STEP), wall_time=0.0)]
    assert tracker.update(verdict(2, True, pts=10.0), wall_time=0.0) == []  # exactly restart_after_s back
    assert tracker.late["cam"] == 1 and tracker.restarts["cam"] == 0
    assert tracker.current_event("cam").id == opened[0].event.id
    assert [u.kind for u in tracker.update(verdict(0, True, pts=9.75), wall_time=0.0)] == ["closed"]
    assert tracker.restarts["cam"] == 1


def test_stream_restart_clears_a_pending_eos_and_cooldown() -> None:
    cfg = EventsConfig(open_n=1, open_m=1, close_quiet_s=10.0, cooldown_s=30.0, eos_wait_s=3.0)
    tracker = EventTracker(cfg)
    old = tracker.update(verdict(0, True, pts=50.0), wall_time=100.0)
    old += tracker.update(verdict(1, False, pts=60.0), wall_time=101.0)  # closes: cooldown until pts 90
    assert [u.kind for u in old] == ["opened", "closed"]
    assert tracker.end_of_stream("cam", FrameKey("cam", 2, 61.0), now=110.0) == []  # frame 2 never scored
    new = tracker.update(verdict(0, True, pts=0.0), wall_time=111.0)  # the supervisor restarted the reader
    assert [(u.kind, u.event.start_pts) for u in new] == [("opened", 0.0)]  # no cooldown left over
    assert tracker.expire(113.5) == []  # past the old EOS deadline: that wait was dropped with the old stream
    assert tracker.current_event("cam") is not None and tracker.suppressed["cam"] == 0


def deliver(tracker: EventTracker, order: list[int], script: str, scores: list[float] | None = None,
            frames: list[np.ndarray] | None = None) -> list[EventUpdate]:
    """Verdict i of `script` ('A'/'.') arrives in the given order, stamped with the wall time it was read at."""
    return [u for i in order for u in tracker.update(
        verdict(i, script[i] == "A", None if scores is None else scores[i]), wall_time=100.0 + i * STEP,
        frame=None if frames is None else frames[i])]


def event_fields(update: EventUpdate) -> tuple:
    e = update.event
    return update.kind, e.start_pts, e.start_wall_time, e.end_pts, e.frame_count, e.peak_score, e.peak_key


def test_reordered_verdict_within_the_window_opens_as_in_order() -> None:
    """pts 1.0 arrives before pts 0.75 (two workers): 2 of the last 4 are still anomalous, from 0.75 on."""
    in_order = deliver(EventTracker(CFG), [0, 1, 2, 3, 4], "...AA")
    tracker = EventTracker(CFG)
    reordered = deliver(tracker, [0, 1, 2, 4, 3], "...AA")
    assert [event_fields(u) for u in reordered] == [event_fields(u) for u in in_order]
    assert reordered[0].kind == "opened" and reordered[0].event.start_pts == 0.75
    assert tracker.late["cam"] == 0


def test_verdict_older_than_the_whole_window_is_late_and_changes_nothing() -> None:
    reference, tracker = EventTracker(CFG), EventTracker(CFG)
    deliver(reference, [1, 2, 3, 4], "A...AA")
    assert deliver(tracker, [1, 2, 3, 4, 0], "A...AA") == []  # the window holds pts 0.25-1.0: 0.0 is out
    assert tracker.late["cam"] == 1
    later = deliver(tracker, [5], "A...AA")
    assert [event_fields(u) for u in later] == [event_fields(u) for u in deliver(reference, [5], "A...AA")]
    assert later[0].event.start_pts == 1.0 and later[0].event.frame_count == 2  # 1.0 and 1.25 alone


def test_late_anomaly_from_before_a_close_does_not_revive_the_event() -> None:
    tracker = EventTracker(CFG)
    closed = deliver(tracker, [0, 1, 2, 3, 5, 6], "AA..A..")  # quiet from pts 0.25 reaches 1 s at pts 1.25
    assert [u.kind for u in closed] == ["opened", "closed"]
    assert deliver(tracker, [4], "AA..A..") == []  # pts 1.0, before the close at 1.25
    assert tracker.late["cam"] == 1 and tracker.current_event("cam") is None


def test_reordered_anomaly_inside_an_open_event_counts_as_in_order() -> None:
    scores = [0.85, 0.86, 0.9, 0.99, 0.87, 0.88, 0.89]
    frames = [np.full((4, 6, 3), i, dtype=np.uint8) for i in range(7)]
    trackers = EventTracker(CFG), EventTracker(CFG)
    in_order = deliver(trackers[0], list(range(7)), "AAAAAAA", scores, frames) + trackers[0].flush()
    # 3 (the peak) arrives after 4, and 5 after 6: both are inside the open event and the window
    reordered = deliver(trackers[1], [0, 1, 2, 4, 3, 6, 5], "AAAAAAA", scores, frames) + trackers[1].flush()
    kinds = [(u.kind, u.seq, u.event.peak_score, u.event.peak_key) for u in reordered]
    assert kinds == [(u.kind, u.seq, u.event.peak_score, u.event.peak_key) for u in in_order]
    assert [u.kind for u in reordered] == ["opened", "updated", "updated", "closed"]  # no update for 5
    assert event_fields(reordered[-1]) == event_fields(in_order[-1])
    assert reordered[-1].event.frame_count == 7 and reordered[-1].event.end_pts == 6 * STEP
    assert reordered[-1].peak_frame is frames[3] and np.allclose(reordered[-1].peak_heatmap, 0.99)


def test_reordered_anomaly_just_before_an_open_event_moves_its_start() -> None:
    """In order, verdict 1 would have been among the hits that opened the event."""
    trackers = EventTracker(CFG), EventTracker(CFG)
    scores = [0.1, 0.85, 0.9, 0.95]
    in_order = deliver(trackers[0], [0, 1, 2, 3], ".AAA", scores) + trackers[0].flush()
    reordered = deliver(trackers[1], [0, 2, 3, 1], ".AAA", scores) + trackers[1].flush()
    assert [u.kind for u in reordered] == ["opened", "closed"]
    assert reordered[0].event.start_pts == 2 * STEP  # opened (on 2 and 3) before verdict 1 arrived
    assert event_fields(reordered[-1]) == event_fields(in_order[-1])
    assert (reordered[-1].event.start_pts, reordered[-1].event.frame_count) == (STEP, 3)


def test_reordered_anomaly_in_cooldown_opens_only_where_in_order_arrival_would() -> None:
    """Closes at index 5 (pts 1.25): cooldown until pts 4.25 (index 17). Whether a window completed by a
    late verdict opens depends on its newest anomaly, as in order, not on the late verdict's own pts."""
    cases = (("AA...." + "." * 9 + "AA.A", 15, 1, 15),  # 15 + 16 in cooldown: suppressed, 18 opens
             ("AA...." + "." * 10 + "AA", 16, 0, 16))  # 16 in cooldown but 17 past it: opens
    for script, late, suppressed, start in cases:
        order = [*range(late), late + 1, late, *range(late + 2, len(script))]
        trackers = EventTracker(CFG), EventTracker(CFG)
        in_order = deliver(trackers[0], list(range(len(script))), script)
        reordered = deliver(trackers[1], order, script)
        assert [event_fields(u) for u in reordered] == [event_fields(u) for u in in_order]
        assert [u.kind for u in reordered] == ["opened", "closed", "opened"]
        assert reordered[-1].event.start_pts == start * STEP
        assert trackers[1].suppressed["cam"] == trackers[0].suppressed["cam"] == suppressed
