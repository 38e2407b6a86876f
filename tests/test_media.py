"""The pictures that leave a worker and what the events process makes of them: privacy blur, which verdicts carry
a frame, live tiles, snapshots, event clips (real MP4s decoded back), the evidence on the wire, and the events
database's migration to the console's schema."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from streamvad.config import EventsConfig
from streamvad.live.events import EventTracker
from streamvad.live.events_db import EventQuery, EventsDB
from streamvad.live.media import EventMedia
from streamvad.live.pictures import PicturePolicy
from streamvad.overlay import privacy_blur
from streamvad.transport import WireError, decode_verdict, encode_verdict
from streamvad.types import Evidence, Frame, FrameKey, Verdict

GRID = (6, 8)


def _verdict(camera: str, index: int, pts: float, anomalous: bool, evidence: Evidence | None = None) -> Verdict:
    heat = np.zeros(GRID[0] * GRID[1], dtype=np.float32)
    heat[10] = 0.9 if anomalous else 0.1
    return Verdict(key=FrameKey(camera, index, pts), score=0.9 if anomalous else 0.1,
                   raw_score=2.0 if anomalous else 0.2, anomalous=anomalous, global_confidence=0.1,
                   patch_confidences=heat, grid=GRID, unsafe_patches=int(anomalous), threshold=1.0,
                   decided_by="test", evidence=evidence)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (96, 128, 3), dtype=np.uint8)


def test_privacy_regions_are_blurred_and_nothing_else() -> None:
    image = _image(0)
    top_left = [(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5)]
    out = privacy_blur(image, [top_left])
    inside, outside = (slice(2, 46), slice(2, 62)), (slice(52, 96), slice(66, 128))
    assert np.array_equal(out[outside], image[outside])
    # random noise pixelated and blurred: what is left inside is close to the region's mean, no detail
    assert out[inside].std() < 0.25 * image[inside].std()
    assert privacy_blur(image, []) is image


def test_which_verdicts_carry_their_frame_and_how_it_leaves() -> None:
    frame = Frame("gate", 0, 0.0, 0.0, np.zeros((1200, 1600, 3), dtype=np.uint8))
    every = PicturePolicy(EventsConfig(clips=True, media_max_side=640), {"gate": [[(0, 0), (1, 0), (0, 1)]]})
    sent = every.picture(_verdict("gate", 0, 0.0, False), frame)
    assert sent is not None and max(sent.image.shape[:2]) == 640  # shrunk before it leaves
    tiles = PicturePolicy(EventsConfig(clips=False, preview_s=3600.0), {})
    assert tiles.picture(_verdict("gate", 0, 0.0, False), frame) is not None  # the tile's first picture
    assert tiles.picture(_verdict("gate", 1, 0.25, False), frame) is None  # not due again for an hour
    assert tiles.picture(_verdict("gate", 2, 0.5, True), frame) is not None  # anomalous: always
    yard = Frame("yard", 0, 0.0, 0.0, frame.image)
    assert tiles.picture(_verdict("yard", 0, 0.0, False), yard) is not None  # every camera has its own tile


def test_evidence_travels_with_the_verdict_and_bad_evidence_is_refused() -> None:
    evidence = Evidence(np.array([10, 3]), np.arange(8, dtype=np.float16).reshape(2, 4),
                        np.array([[0.1, 0.2], [np.nan, np.nan]], dtype=np.float32))
    back, _ = decode_verdict(encode_verdict(_verdict("gate", 4, 1.0, True, evidence)))
    assert back.evidence is not None and back.evidence.patches.tolist() == [10, 3]
    assert np.array_equal(back.evidence.vectors, evidence.vectors)
    assert np.array_equal(back.evidence.velocities, evidence.velocities, equal_nan=True)
    header, payload = encode_verdict(_verdict("gate", 4, 1.0, True, evidence))
    with pytest.raises(WireError, match="evidence is"):
        decode_verdict([header, payload[:-3]])
    outside = Evidence(np.array([48]), np.zeros((1, 4), dtype=np.float16))  # the grid has 48 patches: 0..47
    with pytest.raises(WireError, match="outside the grid"):
        decode_verdict(encode_verdict(_verdict("gate", 4, 1.0, True, outside)))


def test_tiles_snapshots_and_a_clip_from_before_the_event_to_after_it(tmp_path: Path) -> None:
    cfg = EventsConfig(media=tmp_path / "media", preview_s=0.001, clip_pre_s=1.0, clip_post_s=1.0, close_quiet_s=0.5,
                       cooldown_s=0.0)
    media = EventMedia(cfg)
    tracker = EventTracker(cfg)
    events = []
    for i in range(40):  # 10 s at 4 fps; anomalous from 4 s to 6 s
        pts = i / 4
        image = _image(i)
        verdict = _verdict("gate", i, pts, 4.0 <= pts < 6.0)
        media.observe(verdict, image)
        for update in tracker.update(verdict, 1000.0 + pts, image):
            media.handle(update)
            events.append(update)
    media.close()
    opened, closed = events[0], events[-1]
    assert (opened.kind, closed.kind) == ("opened", "closed")
    event = closed.event
    assert event.snapshot and Path(event.snapshot).is_file() and event.heatmap and Path(event.heatmap).is_file()
    assert event.end_wall_time == pytest.approx(1000.0 + 5.75)
    assert (tmp_path / "media" / "latest" / "gate.jpg").is_file()
    with av.open(event.clip) as clip:
        stream = clip.streams.video[0]
        times = [float(f.pts * f.time_base) for f in clip.decode(stream)]
    # from a second before the first anomalous frame (4.25 s, the second of the two that opened it) to a second
    # after the last (5.75 s), on stream time
    assert len(times) == len(range(13, 28)) and times[0] == pytest.approx(0.0) and times[-1] == pytest.approx(3.5)


def test_a_clip_whose_event_is_deleted_before_it_is_written_leaves_no_file(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Making room deletes the oldest closed events, whose clips may still be recording (`clip_post_s` after the
    close) or being encoded: neither may land afterwards as a file that no event names."""
    import streamvad.live.media as media_module

    deleted, write = threading.Event(), media_module.write_clip

    def write_after_the_delete(path: Path, frames: list[tuple[float, bytes]]) -> None:
        deleted.wait(30.0)  # the encoder is busy with this clip when its event goes: pinned, not left to timing
        write(path, frames)

    monkeypatch.setattr(media_module, "write_clip", write_after_the_delete)
    cfg = EventsConfig(media=tmp_path / "media", clip_pre_s=0.5, clip_post_s=30.0, close_quiet_s=0.5, cooldown_s=0.0)
    media = EventMedia(cfg)
    tracker = EventTracker(cfg)
    closed = {}
    for camera in ("gate", "yard"):
        for i in range(16):  # anomalous from 1 s to 2 s, closed at 2.5 s; the clip goes on to 32 s
            verdict = _verdict(camera, i, i / 4, 1.0 <= i / 4 < 2.0)
            media.observe(verdict, _image(i))
            for update in tracker.update(verdict, 1000.0 + i / 4):
                media.handle(update)
                closed[camera] = update.event
    assert all(event.state == "closed" and event.clip for event in closed.values())
    media.end_of_stream("yard")  # the yard's clip goes to the encoder; the gate's is still recording
    media.delete([closed["gate"].clip, closed["yard"].clip])
    deleted.set()
    media.close()
    assert not list((tmp_path / "media" / "clips").rglob("*.mp4"))
    assert (media.clips_written, media.clip_errors) == (1, 0)  # the yard's was encoded, then removed


def test_the_events_process_keeps_a_frame_as_the_jpeg_it_came_as(tmp_path: Path) -> None:
    """A frame's JPEG from the wire goes into the clip's ring buffer as it is (no second encoding); one the events
    process had to shrink is encoded anew, since the sent JPEG is not the kept picture."""
    from streamvad.config import StreamVADConfig
    from streamvad.live.events_process import EventsProcess
    from streamvad.transport import decode, encode_frame

    cfg = StreamVADConfig.model_validate({"events": {"database": str(tmp_path / "e.db"),
                                                     "media": str(tmp_path / "media")}})
    events = EventsProcess(cfg)
    small = Frame("gate", 0, 0.0, 0.0, _image(0))
    large = Frame("gate", 1, 0.25, 0.0, np.zeros((800, 1200, 3), np.uint8))  # over transport.frame_max_side
    for f in (small, large):
        sent = encode_frame(f, "jpeg", 90)
        events.handle(decode(sent))
        events.handle(decode(encode_verdict(_verdict("gate", f.index, f.pts, False))))
    ring = [data for _pts, data in events.media._ring["gate"]]
    assert ring[0] == encode_frame(small, "jpeg", 90)[1]
    assert ring[1] != encode_frame(large, "jpeg", 90)[1]
    events.sinks.close()
    events.db.close()


def test_a_learning_cameras_preview_frame_becomes_its_tile_and_is_not_stashed(tmp_path: Path) -> None:
    """A worker sends a learning camera's frame as a preview (no verdict follows): the events process writes it as
    the camera's live tile as it came (no heatmap: nothing was scored), and keeps nothing waiting for a verdict."""
    from streamvad.config import StreamVADConfig
    from streamvad.live.events_process import EventsProcess
    from streamvad.transport import decode, encode_frame

    cfg = StreamVADConfig.model_validate({"events": {"database": str(tmp_path / "e.db"),
                                                     "media": str(tmp_path / "media")}})
    events = EventsProcess(cfg)
    sent = encode_frame(Frame("yard", 0, 0.0, 0.0, _image(0)), "jpeg", 90, preview=True)
    events.handle(decode(sent))
    assert events.media.layout.latest("yard").read_bytes() == sent[1]
    assert not events._frames and events._stash_bytes == 0
    events.sinks.close()
    events.db.close()


def test_an_old_events_database_is_migrated_and_keeps_its_events(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE events (id TEXT PRIMARY KEY, type TEXT NOT NULL, camera TEXT NOT NULL, state TEXT NOT NULL,
            start_pts REAL NOT NULL, end_pts REAL, start_wall_time REAL NOT NULL, peak_score REAL NOT NULL,
            frame_count INTEGER NOT NULL, record TEXT NOT NULL, updated_at REAL NOT NULL);
        INSERT INTO events VALUES ('a', 'anomaly', 'gate', 'closed', 1, 2, 100, 0.9, 3,
            '{"id": "a", "camera": "gate", "start_pts": 1, "end_pts": 2, "start_wall_time": 100, "peak_score": 0.9,
              "peak_key": {"camera": "gate", "index": 4, "pts": 1}, "frame_count": 3}', 100);
        PRAGMA user_version = 1;""")
    old.close()
    db = EventsDB(path)
    [row] = db.query(EventQuery())[0]
    assert row["id"] == "a" and row["review"] == "unreviewed" and row["clip"] is None
    assert [e.id for e in db.events()] == ["a"]
    db.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2
