"""Camera faults (covered, frozen, moved) on synthetic streams, raised as their own event types."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamvad.config import EventsConfig, SinksConfig, StreamVADConfig, TamperConfig
from streamvad.datasets.synthetic import Scene
from streamvad.live.events_process import EventsProcess
from streamvad.live.tamper import TamperMonitor
from streamvad.transport import decode, encode_verdict
from streamvad.types import Frame, FrameKey, Verdict

FPS = 4.0
CFG = TamperConfig(hold_s=2.0, frozen_s=3.0)


def _scene(seconds: float) -> list[np.ndarray]:
    scene = Scene(seconds=seconds, fps=FPS, size=(120, 160), anomalies=(), seed=3, place_seed=0)
    return [scene.render(i)[0] for i in range(scene.frames)]


def _verdict(i: int, heat: float = 0.1, camera: str = "cam") -> Verdict:
    return Verdict(FrameKey(camera, i, i / FPS), score=heat, raw_score=heat, anomalous=heat >= 1.0,
                   global_confidence=0.0, patch_confidences=np.full(12, heat, dtype=np.float32), grid=(3, 4),
                   unsafe_patches=0, threshold=1.0, decided_by="test")


def _marks(images: list[np.ndarray], heats: list[float] | None = None) -> list[str | None]:
    monitor = TamperMonitor(CFG)
    heats = heats or [0.1] * len(images)
    frames = [Frame("cam", i, i / FPS, 0.0, img) for i, img in enumerate(images)]
    return [v.tamper for v in monitor.annotate(frames, [_verdict(i, h) for i, h in enumerate(heats)])]


def test_a_normal_stream_raises_no_fault() -> None:
    assert set(_marks(_scene(12))) == {None}


def test_a_covered_camera_is_marked_once_it_has_been_dark_for_hold_s() -> None:
    images = _scene(12)
    for i in range(16, 48):  # 4 s to 12 s: black
        images[i] = np.zeros_like(images[i])
    images[4] = np.zeros_like(images[4])  # one dark frame is no fault
    marks = _marks(images)
    assert set(marks[:24]) == {None}  # until 2 s of darkness have passed
    assert set(marks[24:]) == {"covered"}


def test_a_frozen_feed_is_marked_after_frozen_s_of_identical_frames() -> None:
    images = _scene(12)
    for i in range(16, 48):
        images[i] = images[15]
    marks = _marks(images)
    assert set(marks[:28]) == {None} and set(marks[28:]) == {"frozen"}  # 3 s after frame 16 repeats frame 15


def test_a_moved_camera_is_marked_when_the_whole_view_changes_and_stays_abnormal() -> None:
    images = _scene(12)
    for i in range(16, 48):  # from 4 s the camera points elsewhere: the picture shifts by a third of its height
        images[i] = np.roll(images[i], 40, axis=0)
    heats = [0.2] * 16 + [1.0] * 32  # and the new view is not the normal one
    heats[8:10] = [1.0, 1.0]  # an anomaly without a change of view is no fault
    marks = _marks(images, heats)
    assert set(marks[:24]) == {None} and set(marks[24:]) == {"moved"}


def test_a_sudden_change_that_looks_normal_again_is_no_fault() -> None:
    images = _scene(12)
    images[16] = np.roll(images[16], 40, axis=0)  # one shaken frame, then back
    assert set(_marks(images, [0.2] * 16 + [1.0] + [0.2] * 31)) == {None}


def test_fault_verdicts_open_their_own_event_type_and_no_anomaly_event(tmp_path: Path) -> None:
    cfg = StreamVADConfig(events=EventsConfig(open_n=2, open_m=4, close_quiet_s=1.0, cooldown_s=0.0),
                          sinks=SinksConfig(jsonl=tmp_path / "events.jsonl", spool=tmp_path / "spool"))
    events = EventsProcess(cfg)
    for i in range(40):
        v = _verdict(i, heat=1.0 if 8 <= i < 24 else 0.1)
        if v.anomalous:
            v.tamper = "covered"
        events.handle(decode(encode_verdict(v, frame_wall_time=0.0)))
    for tracker in events._trackers():
        for update in tracker.flush():
            events.sinks.handle(update)
    events.sinks.close()
    records = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert {(r["type"], r["kind"]) for r in records} == {("covered", "opened"), ("covered", "closed")}
    assert events.stats()["events"]["cam"] == {"covered_opened": 1, "covered_closed": 1}


def test_an_unknown_fault_on_the_wire_is_refused() -> None:
    from streamvad.transport import WireError

    parts = encode_verdict(_verdict(0))
    header = json.loads(parts[0])
    header["tamper"] = "exploded\nfake log line"
    with pytest.raises(WireError, match="field 'tamper': Input should be 'covered', 'frozen' or 'moved'"):
        decode([json.dumps(header).encode(), parts[1]])
