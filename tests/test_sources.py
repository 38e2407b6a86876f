"""Sampler, image folders, video files and url dispatch (RTSP lives in test_rtsp.py)."""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamvad.datasets.synthetic import make_scene
from streamvad.errors import InputError
from streamvad.sources import (
    Backoff,
    MonotonicPts,
    PtsSampler,
    SourceStatus,
    iter_image_folder,
    iter_video,
    list_images,
    open_source,
    probe_video,
    read_image,
)
from streamvad.sources.live import redact_url


def _kept(sampler: PtsSampler, pts: list[float]) -> list[float]:
    return [p for p in pts if sampler.accept(p)]


# --- sampler ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [25.0, 30.0, 30000 / 1001])
def test_sampler_keeps_target_rate_by_pts(native: float) -> None:
    pts = [i / native for i in range(round(60 * native))]
    kept = _kept(PtsSampler(4.0), pts)
    assert abs(len(kept) - 240) <= 1
    gaps = np.diff(kept)
    assert gaps.min() >= 0.25 - 1 / native - 1e-9 and gaps.max() <= 0.25 + 1 / native + 1e-9


def test_sampler_variable_rate() -> None:
    rng = random.Random(1)
    pts = list(itertools.accumulate(rng.uniform(0.01, 0.07) for _ in range(2000)))
    kept = _kept(PtsSampler(4.0), pts)
    duration = pts[-1] - pts[0]
    assert abs(len(kept) - 4 * duration) <= 2


def test_sampler_none_keeps_everything() -> None:
    pts = [0.0, 0.01, 0.02, 5.0, 1.0]
    assert _kept(PtsSampler(None), pts) == pts


def test_sampler_resyncs_after_forward_jump_without_burst() -> None:
    sampler = PtsSampler(4.0)
    _kept(sampler, [i / 25 for i in range(250)])
    after = [1000 + i / 25 for i in range(250)]
    kept = _kept(sampler, after)
    assert kept[0] == after[0]
    assert abs(len(kept) - 40) <= 1
    assert np.diff(kept).min() >= 0.25 - 0.04 - 1e-9


def test_sampler_resyncs_after_backward_jump() -> None:
    sampler = PtsSampler(4.0)
    _kept(sampler, [i / 25 for i in range(250)])
    again = [i / 25 for i in range(250)]
    kept = _kept(sampler, again)
    assert kept[0] == 0.0
    assert abs(len(kept) - 40) <= 1


def test_sampler_rejects_bad_fps() -> None:
    with pytest.raises(ValueError, match="fps"):
        PtsSampler(0.0)


def test_monotonic_pts_restarts_continue_forward() -> None:
    timeline = MonotonicPts(0.1)
    assert [timeline(p) for p in (0.0, 0.1, 0.2)] == [0.0, 0.1, 0.2]
    timeline.restart()
    assert timeline(0.0) == pytest.approx(0.3)
    assert timeline(0.1) == pytest.approx(0.4)
    assert timeline(0.05) == pytest.approx(0.5)  # backwards without notice: one period on
    timeline.restart(gap=7.0)
    assert timeline(123.0) == pytest.approx(7.5)


def test_monotonic_pts_zero_start() -> None:
    timeline = MonotonicPts(0.04, zero_start=True)
    assert [timeline(p) for p in (50.0, 50.5)] == [0.0, 0.5]


def test_backoff_grows_caps_and_jitters() -> None:
    policy = Backoff(base_s=0.5, max_s=4.0, jitter=0.2)
    rng = random.Random(0)
    delays = [policy.delay(n, rng) for n in range(8)]
    for n, delay in enumerate(delays):
        nominal = min(4.0, 0.5 * 2**n)
        assert 0.8 * nominal <= delay <= 1.2 * nominal
    assert max(delays) <= 4.8


def test_redact_url_hides_password_only() -> None:
    assert redact_url("rtsp://admin:s3cret@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert redact_url("rtsp://10.0.0.5/live") == "rtsp://10.0.0.5/live"


# --- image folders ---------------------------------------------------------------------------------
def _save(path: Path, value: int, mode: str = "RGB", size: tuple[int, int] = (8, 6)) -> None:
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(path)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    for i in range(12):
        _save(tmp_path / f"frame{i}.png", 10 * i)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_list_images_natural_order(image_folder: Path) -> None:
    names = [p.name for p in list_images(image_folder)]
    assert names == [f"frame{i}.png" for i in range(12)]


def test_list_images_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a directory"):
        list_images(tmp_path / "nope")
    with pytest.raises(InputError, match="no images found"):
        list_images(tmp_path)


def test_image_folder_pts_labels_and_sampling(image_folder: Path) -> None:
    labels = [0] * 6 + [1] * 6
    frames = list(iter_image_folder(image_folder, "cam", native_fps=10, sample_fps=5, labels=labels))
    assert [f.index for f in frames] == list(range(6))
    assert [f.pts for f in frames] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert [f.label for f in frames] == [0, 0, 0, 1, 1, 1]
    assert [Path(f.source).name for f in frames] == [f"frame{i}.png" for i in range(0, 12, 2)]
    assert frames[3].image[0, 0].tolist() == [60, 0, 195]


def test_image_folder_label_mismatch(image_folder: Path) -> None:
    with pytest.raises(InputError, match="3 labels given for 12 images"):
        iter_image_folder(image_folder, "cam", labels=[0, 1, 0])


def test_image_folder_loop_keeps_pts_monotonic(image_folder: Path) -> None:
    frames = list(itertools.islice(iter_image_folder(image_folder, "cam", native_fps=10, loop=True), 30))
    assert np.diff([f.pts for f in frames]) == pytest.approx([0.1] * 29)
    assert [f.index for f in frames] == list(range(30))
    assert Path(frames[12].source).name == "frame0.png"
    assert [i for i, f in enumerate(frames) if f.restart] == [12, 24]  # each new pass: no motion across the jump


def test_read_image_greyscale_becomes_rgb(tmp_path: Path) -> None:
    _save(tmp_path / "grey.png", 77, mode="L")
    image = read_image(tmp_path / "grey.png")
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8
    assert (image == 77).all()


def test_read_image_corrupt_and_truncated(tmp_path: Path) -> None:
    (tmp_path / "junk.jpg").write_bytes(b"\x00not a jpeg at all" * 10)
    _save(tmp_path / "full.png", 5, size=(64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name in ("junk.jpg", "cut.png"):
        with pytest.raises(InputError, match="not a readable image") as err:
            read_image(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)


# --- video files -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip25(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scene(tmp_path_factory.mktemp("video"), seconds=4, fps=25, size=(48, 64), seed=5, name="c25").path


def test_probe_video(clip25: Path) -> None:
    info = probe_video(clip25)
    assert (info.fps, info.frames, info.width, info.height) == (25.0, 100, 64, 48)
    assert info.duration == pytest.approx(4.0, abs=0.05)


def test_video_sampled_by_pts_with_labels(clip25: Path) -> None:
    labels = [(i // 10) % 2 for i in range(100)]
    status = SourceStatus(camera="cam", url=str(clip25))
    frames = list(iter_video(clip25, "cam", sample_fps=4.0, labels=labels, status=status))
    assert abs(len(frames) - 16) <= 1
    assert np.diff([f.pts for f in frames]) == pytest.approx([0.24] * (len(frames) - 1), abs=0.041)
    for f in frames:
        assert f.label == labels[round(f.pts * 25)]
        assert f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8
    assert (status.frames_in, status.frames_emitted) == (100, len(frames))


def test_video_label_mismatch(clip25: Path) -> None:
    with pytest.raises(InputError, match="5 labels given for 100 frames"):
        iter_video(clip25, "cam", labels=[0] * 5)


def test_video_loop_keeps_pts_monotonic(clip25: Path) -> None:
    frames = list(itertools.islice(iter_video(clip25, "cam", sample_fps=4.0, loop=True), 40))
    pts = [f.pts for f in frames]
    assert pts[-1] > 8.0  # into the third pass
    assert np.diff(pts).min() >= 0.2 and np.diff(pts).max() <= 0.3


def test_video_realtime_pacing(clip25: Path) -> None:
    start = time.monotonic()
    frames = list(itertools.islice(iter_video(clip25, "cam", sample_fps=4.0, realtime=True), 5))
    elapsed = time.monotonic() - start
    assert frames[-1].pts == pytest.approx(1.0, abs=0.05)
    assert 0.8 <= elapsed <= 3.0


def test_video_missing_or_not_a_video(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such video file"):
        iter_video(tmp_path / "absent.mp4", "cam")
    bogus = tmp_path / "bogus.mp4"
    bogus.write_text("hello, I am text")
    with pytest.raises(InputError, match="not a readable video") as err:
        iter_video(bogus, "cam")
    assert "\n" not in str(err.value)


# --- dispatch --------------------------------------------------------------------------------------
def test_open_source_dispatch(image_folder: Path, clip25: Path) -> None:
    first_image = next(open_source(str(image_folder), "a", sample_fps=None))
    assert first_image.source.endswith("frame0.png")
    first_video = next(open_source(str(clip25), "b"))
    assert first_video.source == str(clip25) and first_video.camera == "b"


@pytest.mark.parametrize(("url", "message"), [
    ("/definitely/not/here.mp4", "no such file, folder or device"),
    ("http://example.invalid/stream", "unsupported source"),
    ("/dev/video99", "no such video device"),
])
def test_open_source_rejects(url: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        open_source(url, "cam")


def test_reader_shrinks_large_frames_before_queueing(tmp_path: Path) -> None:
    """A 1280x720 camera reaches the worker at most 640 wide (aspect kept); small frames pass untouched."""
    from streamvad.bench.throughput import free_tcp_endpoint
    from streamvad.config import CameraConfig, TransportConfig
    from streamvad.live.reader import run_reader
    from streamvad.sources.shrink import limit_size
    from streamvad.transport import FramePuller
    from streamvad.types import Frame

    folder = tmp_path / "hd"
    folder.mkdir()
    for i in range(3):
        _save(folder / f"{i:03d}.png", 40 * i, size=(1280, 720))
    transport = TransportConfig(frames=free_tcp_endpoint(), policy="block", frame_max_side=640)
    puller = FramePuller(transport.frames, bind=True)
    try:
        run_reader(CameraConfig(id="hd", url=str(folder), fps=30.0), transport)  # keep every image
        shapes = [msg.frame.image.shape for _ in range(3) if (msg := puller.recv(5000)) and msg.frame is not None]
    finally:
        puller.close()
    assert shapes == [(360, 640, 3)] * 3
    small = Frame("c", 0, 0.0, 0.0, np.zeros((120, 160, 3), np.uint8))
    assert limit_size(small, 640) is small and limit_size(small, None) is small
    assert limit_size(small, 80).image.shape == (60, 80, 3)
