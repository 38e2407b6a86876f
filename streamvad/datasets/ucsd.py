"""UCSD Anomaly Detection (Ped1/Ped2), in either of the two layouts it circulates in.

1. The converted layout (../shared/data/ucsd_ped2): `training/frames/NN/*.jpg`,
   `testing/frames/NN/*.jpg` and `labels.json` = {"abnormal_frames": {"NN": [first, last]}} with
   1-based inclusive frame numbers (file 000.jpg is frame 1). A clip may also list several ranges,
   [[a, b], [c, d]].
2. The original release: `Train/Train001/*.tif`, `Test/Test001/*.tif` (the `Test001_gt` pixel
   masks are ignored) and `Test/UCSDped2.m`, whose k-th `TestVideoFile{end+1}.gt_frame = [61:180];`
   line gives the 1-based inclusive anomalous frames of `Test00k`. It is parsed as text, no MATLAB.

The standard protocol scores every frame (sample_fps None) of clips recorded at 10 fps. Only test
clips that have ground truth are returned, so every test frame can be scored.
"""

from __future__ import annotations

import re
from pathlib import Path

from streamvad.datasets.base import Clip, DatasetSplit, clip_from_path, read_json, stream_id
from streamvad.errors import InputError
from streamvad.sources.images import list_images

NATIVE_FPS = 10.0

Ranges = list[tuple[int, int]]


def parse_gt_ranges(text: str) -> list[Ranges]:
    """The `gt_frame` ranges of a UCSDpedN.m file, one list of (first, last) per test clip, in order.

    Accepts `[61:180]`, `[5:90, 140:200]` and single frames `[7]`; `%` comments are ignored.
    """
    code = re.sub(r"%[^\n]*", "", text)
    clips: list[Ranges] = []
    for body in re.findall(r"gt_frame\s*=\s*\[([^\]]*)\]", code):
        ranges: Ranges = []
        for token in re.split(r"[\s,;]+", body.strip()):
            if not token:
                continue
            parts = token.split(":")
            if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
                raise InputError(f"UCSD ground truth: cannot read range {token!r} (expected first:last)")
            ranges.append((int(parts[0]), int(parts[-1])))
        clips.append(ranges)
    return clips


def ranges_to_labels(ranges: Ranges, n_frames: int, source: str) -> list[int]:
    """Per-frame 0/1 labels from 1-based inclusive ranges."""
    labels = [0] * n_frames
    for first, last in ranges:
        if not 1 <= first <= last <= n_frames:
            raise InputError(f"{source}: anomalous range {first}:{last} outside frames 1..{n_frames}")
        labels[first - 1:last] = [1] * (last - first + 1)
    return labels


def _json_ranges(value: object, source: str) -> Ranges:
    """[a, b] or [[a, b], ...] from labels.json."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return [(value[0], value[1])]
    if isinstance(value, list) and all(isinstance(r, list) and len(r) == 2 for r in value):
        return [(int(r[0]), int(r[1])) for r in value]
    raise InputError(f"{source}: expected [first, last] or a list of such ranges, got {value!r}")


def _clip_dirs(folder: Path, skip_suffix: str = "_gt") -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{folder}: UCSD clip folder not found")
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.endswith(skip_suffix))


def _labelled_clip(folder: Path, ranges: Ranges, scene: str, source: str) -> Clip:
    labels = ranges_to_labels(ranges, len(list_images(folder)), f"{source} ({folder.name})")
    return clip_from_path(folder, folder.name, stream_id(scene, "test", folder.name), labels=labels,
                          image_fps=NATIVE_FPS)


def _train_clips(folder: Path, scene: str) -> list[Clip]:
    clips = [clip_from_path(d, d.name, stream_id(scene, "train", d.name), label=0, image_fps=NATIVE_FPS)
             for d in _clip_dirs(folder)]
    if not clips:
        raise InputError(f"{folder}: no training clips")
    return clips


def _load_converted(root: Path, scene: str) -> DatasetSplit:
    labels_path = next((p for p in (root / "labels.json", root / "testing" / "labels.json") if p.is_file()), None)
    if labels_path is None:
        raise InputError(f"{root}: labels.json not found (looked in the root and in testing/)")
    data = read_json(labels_path)
    table = data.get("abnormal_frames") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise InputError(f"{labels_path}: expected {{\"abnormal_frames\": {{\"01\": [first, last], ...}}}}")
    test = [_labelled_clip(d, _json_ranges(table[d.name], str(labels_path)), scene, str(labels_path))
            for d in _clip_dirs(root / "testing" / "frames") if d.name in table]
    return DatasetSplit(scene, _train_clips(root / "training" / "frames", scene), test, None)


def _load_original(root: Path, scene: str) -> DatasetSplit:
    m_files = sorted((root / "Test").glob("*.m"))
    if not m_files:
        raise InputError(f"{root / 'Test'}: no UCSDpedN.m ground-truth file")
    gt = parse_gt_ranges(m_files[0].read_text(encoding="utf-8", errors="replace"))
    by_name = {f"Test{i + 1:03d}": ranges for i, ranges in enumerate(gt)}
    test = [_labelled_clip(d, by_name[d.name], scene, str(m_files[0]))
            for d in _clip_dirs(root / "Test") if d.name in by_name]
    return DatasetSplit(scene, _train_clips(root / "Train", scene), test, None)


def load(root: Path, *, name: str | None = None) -> DatasetSplit:
    """UCSD Ped from `root` (either layout); `name` defaults to the folder name."""
    scene = name or root.name
    if (root / "training" / "frames").is_dir():
        split = _load_converted(root, scene)
    elif (root / "Train").is_dir() and (root / "Test").is_dir():
        split = _load_original(root, scene)
    else:
        raise InputError(f"{root}: not a UCSD layout (expected training/frames + testing/frames, or Train + Test)")
    if not split.test:
        raise InputError(f"{root}: no test clip has ground truth")
    return split
