"""Dataset loaders on small generated trees of each layout, replayed through the real sources."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from streamvad.cli import main
from streamvad.datasets import iter_clip, load_dataset
from streamvad.datasets.safe_unsafe import FRAME_INTERVAL_S
from streamvad.datasets.synthetic import make_scene
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


RELEASE = Path("Video Dataset for Safe and Unsafe Behaviours") / "Safe and Unsafe Behaviours Dataset"
CLASSES = ["0_safe_walkway_violation", "1_unauthorized_intervention", "2_opened_panel cover",
           "3_carrying_overload_with_forklift", "4_safe_walkway", "5_authorized_intervention", "6_closed_panel_cover",
           "7_safe_carrying"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Three renders (other walkers) each of two synthetic scenes (two place seeds): the walkway camera and the
    forklift way. 4 s each, so that walkers move on and a clip's median background is its scene."""
    out = tmp_path_factory.mktemp("scenes")
    return {cam: [make_scene(out, seconds=4.0, fps=10, size=(72, 128), seed=seed, place_seed=place,
                             name=f"{cam}-{seed}").path for seed in (1, 2, 3)]
            for cam, place in (("1", 3), ("2", 11))}


def _release_tree(root: Path, scenes: dict[str, list[Path]], *, one_scene: bool = False) -> Path:
    """The release's real names and folders (spaces included): per class, train clips <k>_tr1, <k>_tr2 and a test
    clip <k>_te1; classes 3 and 7 from the second camera, as the study says; and a macOS `._` companion."""
    for k, folder in enumerate(CLASSES):
        camera = "2" if k in (3, 7) and not one_scene else "1"
        for part, names in (("train", [f"{k}_tr1", f"{k}_tr2"]), ("test", [f"{k}_te1"])):
            for i, name in enumerate(names):
                _place(scenes[camera][(k + i) % 3], root / RELEASE / part / folder / f"{name}.mp4")
    (root / RELEASE / "train" / CLASSES[4] / "._4_tr1.mp4").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    return root


def test_safe_unsafe_real_layout_recovers_cameras_by_scene(tmp_path: Path, scenes: dict[str, list[Path]],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    root = _release_tree(tmp_path, scenes)
    with caplog.at_level(logging.WARNING, logger="streamvad.datasets.safe_unsafe"):
        split = load_dataset("safe-unsafe", root)  # the unzipped folder, no options
    expected = {f"{k}_{n}": "2" if k in (3, 7) else "1" for k in range(8) for n in ("tr1", "tr2", "te1")}
    assert split.cameras == expected  # `._4_tr1` is not a clip
    assert "do not fall clearly" not in caplog.text
    assert "has no clip of class(es) 3_carrying_overload_with_forklift, 7_safe_carrying" in caplog.text
    # the study: camera 1's 9 safe clips split 70/30 by video (6.3 -> 6), all its 9 unsafe clips in test
    train, test = {c.name for c in split.train}, {c.name for c in split.test}
    assert len(train) == 6 and all(c.label == 0 and c.name[0] in "456" for c in split.train)
    assert len(test) == 12 and not train & test and sum(c.label for c in split.test) == 9
    assert split.sample_fps == pytest.approx(1 / FRAME_INTERVAL_S)
    cameras = [c.camera for c in split.train + split.test]
    assert len(set(cameras)) == len(cameras) and all(CAMERA_ID.match(c) and "cam1" in c for c in cameras)
    assert load_dataset("safe-unsafe", root).train == split.train  # deterministic
    assert load_dataset("safe-unsafe", root, camera="auto").test == split.test  # the default, spelled out
    other_seeds = [{c.name for c in load_dataset("safe-unsafe", root, seed=s).train} for s in range(1, 6)]
    assert any(names != train for names in other_seeds)
    # the assignment goes beside the report, and reads back as cameras_file
    csv_path = split.write_cameras(tmp_path / "report")
    assert csv_path is not None and csv_path.read_text().splitlines()[:2] == ["video,camera", "0_te1,1"]
    again = load_dataset("safe-unsafe", root, cameras_file=csv_path)
    assert again.train == split.train and again.test == split.test


def test_safe_unsafe_published_split_keeps_the_release_folders(tmp_path: Path, scenes: dict[str, list[Path]]) -> None:
    split = load_dataset("safe-unsafe", _release_tree(tmp_path, scenes), split="published")
    assert [c.name for c in split.train] == ["4_tr1", "4_tr2", "5_tr1", "5_tr2", "6_tr1", "6_tr2"]
    assert [c.name for c in split.test] == ["0_te1", "1_te1", "2_te1", "4_te1", "5_te1", "6_te1"]
    everything = load_dataset("safe-unsafe", tmp_path, split="published", camera=None)
    assert len(everything.train) == 8 and len(everything.test) == 8  # safe train clips of 4 classes; all tests


def _hub_copy(root: Path, scenes: dict[str, list[Path]]) -> Path:
    """The Hugging Face copy's shape: a FiftyOne export, samples.json beside data/, with opaque file names, class
    labels in a Classification field (spelt without the number, in another case) and train/test tags."""
    samples = []
    for k, folder in enumerate(CLASSES):
        camera = "2" if k in (3, 7) else "1"
        for i, part in enumerate(("train", "train", "test")):
            name = f"data/{len(samples):04d}.mp4"
            _place(scenes[camera][(k + i) % 3], root / name)
            label = folder.split("_", 1)[1].replace("_", " ").title()  # "Carrying Overload With Forklift"
            samples.append({"_id": {"$oid": f"{len(samples):024x}"}, "filepath": name, "tags": [part],
                            "_media_type": "video", "ground_truth": {"_cls": "Classification", "label": label}})
    (root / "samples.json").write_text(json.dumps({"samples": samples}))
    (root / "metadata.json").write_text(json.dumps({"name": "Safe_and_Unsafe_Behaviours"}))
    return root


def test_safe_unsafe_hugging_face_copy_reads_labels_and_parts_from_samples_json(
        tmp_path: Path, scenes: dict[str, list[Path]]) -> None:
    root = _hub_copy(tmp_path / "hub", scenes)
    split = load_dataset("safe-unsafe", root, split="published", camera=None)
    assert split.cameras == {f"{3 * k + i:04d}": "2" if k in (3, 7) else "1" for k in range(8) for i in range(3)}
    # safe classes 4-7: their two train clips train; every class's test clip tests, labelled by its class
    assert [c.name for c in split.train] == [f"{3 * k + i:04d}" for k in range(4, 8) for i in range(2)]
    assert {c.name: c.label for c in split.test} == {f"{3 * k + 2:04d}": int(k < 4) for k in range(8)}
    study = load_dataset("safe-unsafe", root)  # camera 1 by scene, as for the release
    assert len(study.train) == 6 and sum(c.label for c in study.test) == 9
    bad = json.loads((root / "samples.json").read_text())
    bad["samples"][5]["ground_truth"]["label"] = "Juggling"
    (root / "samples.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"samples\.json: samples\[5\]: class 'Juggling' is none of .*0005\.mp4"):
        load_dataset("safe-unsafe", root)
    bad["samples"][5]["filepath"] = "data/gone.mp4"
    (root / "samples.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"samples\[5\]: filepath 'data/gone\.mp4' not found beside samples\.json"):
        load_dataset("safe-unsafe", root)


def test_safe_unsafe_scenes_that_cannot_be_told_apart_are_warned_about(
        tmp_path: Path, scenes: dict[str, list[Path]], caplog: pytest.LogCaptureFixture) -> None:
    root = _release_tree(tmp_path, scenes, one_scene=True)
    with caplog.at_level(logging.WARNING, logger="streamvad.datasets.safe_unsafe"):
        load_dataset("safe-unsafe", root, camera=None)
    assert "do not fall clearly into two scenes" in caplog.text and "cameras_file=" in caplog.text


def test_safe_unsafe_study_split_rounds_half_up(tmp_path: Path, tiny_video: Path) -> None:
    """70% of 175 safe clips is 122.5: the study's rounding gives 123 training clips (binary floats gave 122)."""
    folder = tmp_path / RELEASE / "train" / "4_safe_walkway"
    _place(tiny_video, *(folder / f"4_tr{i}.mp4" for i in range(1, 176)))
    cams = tmp_path / "cameras.csv"
    cams.write_text("video,camera\n" + "".join(f"4_tr{i},1\n" for i in range(1, 176)))
    assert len(load_dataset("safe-unsafe", tmp_path, cameras_file=cams).train) == 123


def test_safe_unsafe_bad_roots_and_camera_files_fail_with_one_line(
        tmp_path: Path, scenes: dict[str, list[Path]], capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    (tmp_path / "empty" / "notes" / "._0_tr1.mp4").write_bytes(b"\x00")
    with pytest.raises(InputError, match=r"empty: no Safe/Unsafe class folder with videos under it"):
        load_dataset("safe-unsafe", tmp_path / "empty")
    root = _release_tree(tmp_path / "release", scenes)
    cams = tmp_path / "cams.csv"
    cams.write_text("video,camera\n0_tr1.mp4,1\n9_tr99,2\nghost,1\n")
    with pytest.raises(InputError, match=r"cams\.csv: 2 video\(s\) not found under .*: 9_tr99, ghost$"):
        load_dataset("safe-unsafe", root, cameras_file=cams)
    for args in (["--root", str(tmp_path / "empty")],
                 ["--root", str(root), "--dataset-option", f"cameras_file={cams}"]):
        assert main(["fit", "--dataset", "safe-unsafe", *args, "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("streamvad: error: ")


def _named_tree(root: Path, video: Path) -> Path:
    """A copy whose files were renamed with their camera (cam1 / cam2): camera_pattern reads those."""
    base = root / RELEASE
    dests = [base / "train" / "4_safe_walkway" / f"4_tr{i}_cam1.mp4" for i in range(6)]
    dests += [base / "test" / "7_safe_carrying" / f"7_te{i}_cam1.mp4" for i in range(4)]
    dests += [base / "train" / "4_safe_walkway" / f"4_tr{i}_cam2.mp4" for i in (10, 11)]
    dests += [base / "test" / "0_safe_walkway_violation" / f"0_te{i}_cam1.mp4" for i in range(2)]
    dests += [base / "train" / "2_opened_panel cover" / "2_tr1_cam1.mp4",
              base / "train" / "1_unauthorized_intervention" / "1_tr1_cam2.mp4"]
    _place(video, *dests)
    return base


def _tiny_release(root: Path, video: Path) -> tuple[Path, Path]:
    """A few clips under the release's real names (all one tiny video), with a cameras_file naming camera 1."""
    names = {"train/4_safe_walkway": ["4_tr1", "4_tr2"], "test/0_safe_walkway_violation": ["0_te1", "0_te2"],
             "train/2_opened_panel cover": ["2_tr1"]}
    _place(video, *(root / RELEASE / folder / f"{n}.mp4" for folder, ns in names.items() for n in ns))
    cams = root / "cameras.csv"
    cams.write_text("video,camera\n" + "".join(f"{n},1\n" for ns in names.values() for n in ns))
    return root, cams


def test_safe_unsafe_frames_every_023_s_with_clip_label(tmp_path: Path, tiny_video: Path) -> None:
    root, cams = _tiny_release(tmp_path, tiny_video)
    split = load_dataset("safe-unsafe", root, cameras_file=cams)
    clip = next(c for c in split.test if c.label == 1)
    frames = list(iter_clip(clip, split.sample_fps))
    assert [f.pts for f in frames] == pytest.approx([0.0, 0.3, 0.5, 0.7])  # 10 fps sampled every 0.23 s
    assert [f.label for f in frames] == [1, 1, 1, 1]
    assert [f.index for f in frames] == [0, 1, 2, 3] and frames[0].camera == clip.camera


def test_safe_unsafe_camera_ids_from_file_names_and_options(tmp_path: Path, tiny_video: Path) -> None:
    root = _named_tree(tmp_path, tiny_video)
    split = load_dataset("safe-unsafe", root)
    assert len(split.train) == 7 and {c.name for c in split.test if c.label} == {"0_te0_cam1", "0_te1_cam1",
                                                                                  "2_tr1_cam1"}
    everything = load_dataset("safe-unsafe", root, camera=None)
    assert len(everything.train) + len(everything.test) == 16
    camera2 = load_dataset("safe-unsafe", root, camera="02")  # ids compare as numbers: "02" is camera 2
    assert [c.name for c in camera2.test] == ["1_tr1_cam2", "4_tr11_cam2"]  # the unsafe one + 30 % of 2 safe
    cams = tmp_path / "cams.csv"
    cams.write_text("video,camera\n4_tr0_cam1.mp4,9\n4_tr1_cam1,9\n0_te0_cam1,9\n")
    split = load_dataset("safe-unsafe", root, camera="9", cameras_file=cams)
    assert {c.name for c in split.train + split.test} == {"4_tr0_cam1", "4_tr1_cam1", "0_te0_cam1"}


def test_safe_unsafe_unknown_class_folder(tmp_path: Path, tiny_video: Path) -> None:
    _place(tiny_video, tmp_path / "misc" / "v_cam1.mp4")
    with pytest.raises(InputError, match="cannot tell whether class folder 'misc'"):
        load_dataset("safe-unsafe", tmp_path)
    _place(tiny_video, tmp_path / "misc" / "w_cam1.mp4")
    split = load_dataset("safe-unsafe", tmp_path, unsafe_classes=[], train_fraction=0.5)
    assert len(split.train) == 1 and split.test[0].label == 0


def test_safe_unsafe_trim_list(tmp_path: Path, tiny_video: Path) -> None:
    root, cams = _tiny_release(tmp_path, tiny_video)
    trim = tmp_path / "trim.csv"
    trim.write_text("# seconds kept per video\nvideo,start_s,end_s\n0_te1.mp4,0.25,-0.15\n0_te2,,0.35\n")
    split = load_dataset("safe-unsafe", root, cameras_file=cams, trim_file=trim)
    clips = {c.name: c for c in split.test}
    cut_both = list(iter_clip(clips["0_te1"], None))
    assert [f.pts for f in cut_both] == pytest.approx([0.3, 0.4, 0.5, 0.6])  # [0.25, 0.8 - 0.15)
    assert [f.index for f in cut_both] == [0, 1, 2, 3]
    assert len(list(iter_clip(clips["0_te2"], None))) == 4  # 0.0 .. 0.3
    assert len(list(iter_clip(clips["2_tr1"], None))) == N_FRAMES  # untouched
    trim.write_text("video,start_s,end_s\n0_te1,soon,\n")
    with pytest.raises(InputError, match=r"trim.csv:2: start_s must be a number"):
        load_dataset("safe-unsafe", root, cameras_file=cams, trim_file=trim)


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
