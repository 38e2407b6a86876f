"""The synthetic walkway scene: exact ground truth, determinism, and the files the demo reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamvad.datasets.synthetic import AnomalySpec, Scene, make_demo_dataset, make_scene
from streamvad.sources import iter_image_folder, iter_video, probe_video

SIZE = (120, 160)
SPECS = (AnomalySpec("lawn_walker", 1.0, 2.0, seed=1), AnomalySpec("object", 2.5, 3.5, seed=2))


def _scene(anomalies: tuple[AnomalySpec, ...] = SPECS, seed: int = 4) -> Scene:
    return Scene(seconds=4, fps=10, size=SIZE, anomalies=anomalies, seed=seed)


def test_same_seed_same_frames_other_seed_other_walkers() -> None:
    a, b, c = _scene(), _scene(), _scene(seed=5)
    for i in (0, 15, 30):
        assert np.array_equal(a.render(i)[0], b.render(i)[0])
    assert any(not np.array_equal(a.render(i)[0], c.render(i)[0]) for i in (0, 15, 30))


def test_anomalies_change_exactly_their_boxes_when_labelled() -> None:
    with_anomalies, normal = _scene(), _scene(anomalies=())
    walker_area = 12 * 30 * (SIZE[0] / 240) ** 2
    top, bottom = with_anomalies.walkway
    for i in range(with_anomalies.frames):
        image, boxes = with_anomalies.render(i)
        reference, none = normal.render(i)
        assert none == []
        changed = np.any(image != reference, axis=2)
        inside = np.zeros(SIZE, dtype=bool)
        for x0, y0, x1, y1 in boxes:
            inside[y0:y1, x0:x1] = True
            assert (x1 - x0) * (y1 - y0) >= walker_area
        t = i / 10
        expected = [spec.kind for spec in SPECS if spec.start_s <= t < spec.end_s]
        assert len(boxes) == len(expected)
        assert not changed[~inside].any()  # nothing outside the boxes differs
        if boxes:
            assert changed[inside].mean() > 0.3  # and the anomaly is plainly drawn inside them
        for kind, (_, y0, _, y1) in zip(expected, boxes, strict=True):
            on_walkway = y0 >= top and y1 <= bottom
            assert on_walkway == (kind == "object")


def test_make_scene_mp4_labels_and_decoded_content(tmp_path: Path) -> None:
    clip = make_scene(tmp_path, seconds=4, fps=10, size=SIZE, anomalies=SPECS, seed=4, name="s")
    assert clip.path == tmp_path / "s.mp4" and clip.fps == 10.0
    info = probe_video(clip.path)
    assert info.frames == len(clip.labels) == 40 and (info.height, info.width) == SIZE
    expected = [int(any(s.start_s <= i / 10 < s.end_s for s in SPECS)) for i in range(40)]
    assert clip.labels == expected
    assert clip.masks(SIZE)[np.array(clip.labels) == 0].sum() == 0
    frames = list(iter_video(clip.path, "syn", sample_fps=None, labels=clip.labels))
    assert [f.label for f in frames] == clip.labels
    cart_frame = 30  # t = 3.0 s: only the cart is visible
    x0, y0, x1, y1 = clip.boxes[cart_frame][0]
    patch = frames[cart_frame].image[y0:y1, x0:x1].astype(int)
    redness = patch[..., 0] - patch[..., 1]
    assert (redness > 100).mean() > 0.5  # the red cart survives H.264 compression


def test_make_scene_frames_folder(tmp_path: Path) -> None:
    clip = make_scene(tmp_path, seconds=1, fps=10, size=SIZE, anomalies=SPECS, seed=4, fmt="frames", name="f")
    frames = list(iter_image_folder(clip.path, "syn", native_fps=clip.fps, labels=clip.labels))
    assert len(frames) == 10 and frames[0].image.shape == (*SIZE, 3)
    reference = _scene().render(3)[0]
    assert np.array_equal(frames[3].image, reference)  # PNG is lossless


def test_make_scene_rejects_odd_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        make_scene(tmp_path, seconds=1, size=(121, 160))


def test_demo_dataset_layout(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path / "demo", train_clips=2, test_clips=1, seconds=4, size=SIZE)
    assert sorted(p.name for p in (root / "train" / "normal").iterdir()) == ["clip_00.mp4", "clip_01.mp4"]
    labels = json.loads((root / "test" / "clip_00.labels.json").read_text())
    boxes = json.loads((root / "test" / "clip_00.boxes.json").read_text())
    assert len(labels) == len(boxes) == probe_video(root / "test" / "clip_00.mp4").frames
    assert set(labels) == {0, 1}
    assert all(bool(b) == bool(label) for b, label in zip(boxes, labels, strict=True))
    train_a = next(iter_video(root / "train" / "normal" / "clip_00.mp4", "a")).image.astype(int)
    train_b = next(iter_video(root / "train" / "normal" / "clip_01.mp4", "b")).image.astype(int)
    lawn = slice(0, 30)  # same camera, same place: the lawn above the walkway matches across clips
    assert np.abs(train_a[lawn] - train_b[lawn]).mean() < 6
