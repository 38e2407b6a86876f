"""Dataset loaders on small generated trees of each layout, replayed through the real sources."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from streamvad.datasets import iter_clip, load_dataset
from streamvad.datasets.safe_unsafe import FRAME_INTERVAL_S
from streamvad.datasets.ucsd import parse_gt_ranges
from streamvad.errors import ConfigError, InputError

SHARED_UCSD = Path(__file__).resolve().parents[2] / "shared" / "data" / "ucsd_ped2"
CAMERA_ID = re.compile(r"^[A-Za-z0-9_.-]+$")  # what CameraConfig accepts
N_FRAMES = 8  # frames in every generated video, at 10 fps


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8-frame 10 fps mp4 whose frame i has grey level 20 * i; copied wherever a video is needed."""
    path = tmp_path_factory.mktemp("video") / "tiny.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(N_FRAMES):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _place(video: Path, *dests: Path) -> None:
    for dest in dests:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(video, dest)


def _images(folder: Path, n: int, suffix: str = ".jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (24, 16), (10 * i, 0, 0)).save(folder / f"{i:03d}{suffix}")


def _labels(clip, sample_fps=None) -> list[int | None]:
    return [f.label for f in iter_clip(clip, sample_fps)]


# ---------------------------------------------------------------- registry


def test_unknown_kind_missing_root_and_unknown_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown; expected one of folder, safe-unsafe, ucsd"):
        load_dataset("kitti", tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_dataset("ucsd", tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"unknown option.*fps_typo"):
        load_dataset("folder", tmp_path, fps_typo=3)


# ---------------------------------------------------------------- UCSD


PED_M = """TestVideoFile = {};
% comment with gt_frame = [1:2];
TestVideoFile{end+1}.gt_frame = [2:3];
TestVideoFile{end+1}.gt_frame = [1:1, 4:5];  % two ranges
"""


def test_parse_gt_ranges_reads_matlab_ranges() -> None:
    assert parse_gt_ranges(PED_M) == [[(2, 3)], [(1, 1), (4, 5)]]
    assert parse_gt_ranges("TestVideoFile{end+1}.gt_frame = [7];") == [[(7, 7)]]
    with pytest.raises(InputError, match="cannot read range"):
        parse_gt_ranges("TestVideoFile{end+1}.gt_frame = [1:x];")


def test_ucsd_original_layout(tmp_path: Path) -> None:
    root = tmp_path / "UCSDped2"
    _images(root / "Train" / "Train001", 3, ".tif")
    for name in ("Test001", "Test002", "Test003"):
        _images(root / "Test" / name, 5, ".tif")
    _images(root / "Test" / "Test001_gt", 5, ".bmp")
    (root / "Test" / "UCSDped2.m").write_text(PED_M)
    split = load_dataset("ucsd", root)
    assert split.sample_fps is None
    assert [c.name for c in split.train] == ["Train001"]
    assert [c.name for c in split.test] == ["Test001", "Test002"]  # Test003 has no ground truth
    assert split.test[0].labels == [0, 1, 1, 0, 0]
    assert split.test[1].labels == [1, 0, 0, 1, 1]
    assert _labels(split.test[1]) == [1, 0, 0, 1, 1]
    frames = list(iter_clip(split.test[0], None))
    assert [f.pts for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])  # 10 fps
    assert frames[0].image.shape == (16, 24, 3)


def test_ucsd_converted_layout_keeps_labelled_clips(tmp_path: Path) -> None:
    _images(tmp_path / "training" / "frames" / "01", 4)
    for name in ("01", "02", "03"):
        _images(tmp_path / "testing" / "frames" / name, 6)
    (tmp_path / "labels.json").write_text(json.dumps({"abnormal_frames": {"01": [2, 4], "02": [[1, 1], [6, 6]]}}))
    split = load_dataset("ucsd", tmp_path, name="ped")
    assert [c.name for c in split.test] == ["01", "02"]
    assert split.test[0].labels == [0, 1, 1, 1, 0, 0]
    assert _labels(split.test[1]) == [1, 0, 0, 0, 0, 1]
    assert all(f.label == 0 for f in iter_clip(split.train[0], None))
    assert split.test[0].camera == "ped-test-01"


def test_ucsd_range_outside_clip_is_an_input_error(tmp_path: Path) -> None:
    _images(tmp_path / "training" / "frames" / "01", 2)
    _images(tmp_path / "testing" / "frames" / "01", 3)
    (tmp_path / "labels.json").write_text(json.dumps({"abnormal_frames": {"01": [2, 9]}}))
    with pytest.raises(InputError, match=r"labels.json \(01\): anomalous range 2:9 outside frames 1..3"):
        load_dataset("ucsd", tmp_path)


@pytest.mark.needs_data
@pytest.mark.skipif(not SHARED_UCSD.is_dir(), reason="../shared/data/ucsd_ped2 not present")
def test_ucsd_shared_copy_matches_its_readme() -> None:
    split = load_dataset("ucsd", SHARED_UCSD)
    assert len(split.train) == 16 and len(split.test) == 6
    assert sum(len(c.labels) for c in split.test) == 1020
    first = split.test[0].labels
    assert first.index(1) == 60 and sum(first) == 120  # frames 61..180 of clip 01


# ---------------------------------------------------------------- Safe/Unsafe


def _safe_unsafe_tree(root: Path, video: Path) -> Path:
    """Published layout, with the camera written into the file names (cam1 / cam2)."""
    base = root / "Safe and Unsafe Behaviours Dataset"
    dests = [base / "train" / "4_safe_walkway" / f"4_tr{i}_cam1.mp4" for i in range(6)]
    dests += [base / "test" / "7_safe_carrying" / f"7_te{i}_cam1.mp4" for i in range(4)]
    dests += [base / "train" / "4_safe_walkway" / f"4_tr{i}_cam2.mp4" for i in (10, 11)]
    dests += [base / "test" / "0_safe_walkway_violation" / f"0_te{i}_cam1.mp4" for i in range(2)]
    dests += [base / "train" / "2_opened_panel cover" / "2_tr1_cam1.mp4",
              base / "train" / "1_unauthorized_intervention" / "1_tr1_cam2.mp4"]
    _place(video, *dests)
    return base


def test_safe_unsafe_study_split(tmp_path: Path, tiny_video: Path) -> None:
    root = _safe_unsafe_tree(tmp_path, tiny_video)
    split = load_dataset("safe-unsafe", root)
    assert split.sample_fps == pytest.approx(1 / FRAME_INTERVAL_S)
    train, test = {c.name for c in split.train}, {c.name for c in split.test}
    assert len(train) == 7 and not train & test  # 70 % of the 10 camera-1 safe videos
    assert all(c.label == 0 and c.name[0] in "47" for c in split.train)
    unsafe = {c.name for c in split.test if c.label == 1}
    assert unsafe == {"0_te0_cam1", "0_te1_cam1", "2_tr1_cam1"}  # every camera-1 unsafe video, none in train
    assert len(test) == 6 and not any("cam2" in n for n in train | test)
    cameras = [c.camera for c in split.train + split.test]
    assert len(set(cameras)) == len(cameras) and all(CAMERA_ID.match(c) for c in cameras)
    assert load_dataset("safe-unsafe", root).train == split.train  # deterministic
    other_seeds = [{c.name for c in load_dataset("safe-unsafe", root, seed=s).train} for s in range(1, 6)]
    assert any(names != train for names in other_seeds)


def test_safe_unsafe_frames_every_023_s_with_clip_label(tmp_path: Path, tiny_video: Path) -> None:
    split = load_dataset("safe-unsafe", _safe_unsafe_tree(tmp_path, tiny_video))
    clip = next(c for c in split.test if c.label == 1)
    frames = list(iter_clip(clip, split.sample_fps))
    assert [f.pts for f in frames] == pytest.approx([0.0, 0.3, 0.5, 0.7])  # 10 fps sampled every 0.23 s
    assert [f.label for f in frames] == [1, 1, 1, 1]
    assert [f.index for f in frames] == [0, 1, 2, 3] and frames[0].camera == clip.camera


def test_safe_unsafe_camera_options(tmp_path: Path, tiny_video: Path) -> None:
    root = _safe_unsafe_tree(tmp_path, tiny_video)
    everything = load_dataset("safe-unsafe", root, camera=None)
    assert len(everything.train) + len(everything.test) == 16
    camera2 = load_dataset("safe-unsafe", root, camera="02")  # ids compare as numbers: "02" is camera 2
    assert [c.name for c in camera2.test] == ["1_tr1_cam2", "4_tr11_cam2"]  # the unsafe one + 30 % of 2 safe
    cams = tmp_path / "cams.csv"
    cams.write_text("video,camera\n4_tr0_cam1.mp4,9\n4_tr1_cam1,9\n0_te0_cam1,9\n")
    split = load_dataset("safe-unsafe", root, camera="9", cameras_file=cams)
    assert {c.name for c in split.train + split.test} == {"4_tr0_cam1", "4_tr1_cam1", "0_te0_cam1"}


def test_safe_unsafe_without_camera_ids_says_how_to_fix(tmp_path: Path, tiny_video: Path) -> None:
    _place(tiny_video, tmp_path / "train" / "4_safe_walkway" / "4_tr1.mp4",
           tmp_path / "test" / "0_safe_walkway_violation" / "0_te1.mp4")
    with pytest.raises(InputError, match=r"no camera id found .*cameras_file="):
        load_dataset("safe-unsafe", tmp_path)
    split = load_dataset("safe-unsafe", tmp_path, camera=None, train_fraction=0.5)
    assert [c.name for c in split.train] == ["4_tr1"] and [c.label for c in split.test] == [1]


def test_safe_unsafe_unknown_class_folder(tmp_path: Path, tiny_video: Path) -> None:
    _place(tiny_video, tmp_path / "misc" / "v_cam1.mp4")
    with pytest.raises(InputError, match="cannot tell whether class folder 'misc'"):
        load_dataset("safe-unsafe", tmp_path)
    _place(tiny_video, tmp_path / "misc" / "w_cam1.mp4")
    split = load_dataset("safe-unsafe", tmp_path, unsafe_classes=[], train_fraction=0.5)
    assert len(split.train) == 1 and split.test[0].label == 0


def test_safe_unsafe_trim_list(tmp_path: Path, tiny_video: Path) -> None:
    root = _safe_unsafe_tree(tmp_path, tiny_video)
    trim = tmp_path / "trim.csv"
    trim.write_text("# seconds kept per video\nvideo,start_s,end_s\n0_te0_cam1.mp4,0.25,-0.15\n0_te1_cam1,,0.35\n")
    split = load_dataset("safe-unsafe", root, trim_file=trim)
    clips = {c.name: c for c in split.test}
    cut_both = list(iter_clip(clips["0_te0_cam1"], None))
    assert [f.pts for f in cut_both] == pytest.approx([0.3, 0.4, 0.5, 0.6])  # [0.25, 0.8 - 0.15)
    assert [f.index for f in cut_both] == [0, 1, 2, 3]
    assert len(list(iter_clip(clips["0_te1_cam1"], None))) == 4  # 0.0 .. 0.3
    assert len(list(iter_clip(clips["2_tr1_cam1"], None))) == N_FRAMES  # untouched
    trim.write_text("video,start_s,end_s\n0_te0_cam1,soon,\n")
    with pytest.raises(InputError, match=r"trim.csv:2: start_s must be a number"):
        load_dataset("safe-unsafe", root, trim_file=trim)


# ---------------------------------------------------------------- generic folder


def test_folder_layout(tmp_path: Path, tiny_video: Path) -> None:
    _place(tiny_video, tmp_path / "train" / "normal" / "a.mp4", tmp_path / "test" / "c1.mp4",
           tmp_path / "test" / "c2.mp4", tmp_path / "test" / "normal" / "n1.mp4",
           tmp_path / "test" / "anomalous" / "x.mp4")
    _images(tmp_path / "train" / "normal" / "frames", 3, ".png")
    c1_labels = [0, 0, 1, 1, 1, 0, 0, 0]
    (tmp_path / "test" / "c1.labels.json").write_text(json.dumps(c1_labels))
    split = load_dataset("folder", tmp_path, sample_fps=None, name="site")
    assert [(c.name, c.kind) for c in split.train] == [("a", "video"), ("frames", "images")]
    clips = {c.name: c for c in split.test}
    assert set(clips) == {"c1", "c2", "normal/n1", "anomalous/x"}
    assert _labels(clips["c1"]) == c1_labels
    assert _labels(clips["c2"]) == [None] * N_FRAMES
    assert _labels(clips["anomalous/x"]) == [1] * N_FRAMES and _labels(clips["normal/n1"]) == [0] * N_FRAMES
    assert len(list(iter_clip(split.train[1], split.sample_fps))) == 3
    assert clips["anomalous/x"].camera == "site-test-anomalous-x"


def test_folder_layout_errors(tmp_path: Path, tiny_video: Path) -> None:
    with pytest.raises(InputError, match="train/normal: missing"):
        load_dataset("folder", tmp_path)
    _place(tiny_video, tmp_path / "train" / "normal" / "a.mp4", tmp_path / "test" / "c1.mp4")
    (tmp_path / "test" / "c1.labels.json").write_text("[0, 2]")
    with pytest.raises(InputError, match=r"c1\.labels\.json: expected a JSON list of 0/1"):
        load_dataset("folder", tmp_path)
    (tmp_path / "test" / "c1.labels.json").write_text("[0, 1]")
    clip = load_dataset("folder", tmp_path).test[0]
    with pytest.raises(InputError, match="2 labels given for 8 frames"):
        list(iter_clip(clip, None))


def test_folder_loads_the_synthetic_demo_dataset(tmp_path: Path) -> None:
    from streamvad.datasets.synthetic import make_demo_dataset

    root = make_demo_dataset(tmp_path / "demo", train_clips=1, test_clips=1, seconds=2.0, size=(48, 64))
    split = load_dataset("folder", root)
    assert [c.name for c in split.train] == ["clip_00"] and [c.name for c in split.test] == ["clip_00"]
    clip = split.test[0]
    assert clip.labels is not None and 0 < sum(clip.labels) < len(clip.labels)
    frames = list(iter_clip(clip, split.sample_fps))
    assert [f.label for f in frames] == [clip.labels[round(f.pts * 10)] for f in frames]
