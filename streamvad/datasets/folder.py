"""A generic layout for your own footage (and the one the synthetic scene generator writes).

    root/train/normal/<clip>            videos or image folders, normal only: what is fitted on
    root/test/<clip>                    a video or image folder to evaluate, with an optional
    root/test/<clip>.labels.json        JSON list of 0/1 per native frame (clip.mp4 -> clip.labels.json)
    root/test/normal/<clip>             or whole clips labelled normal ...
    root/test/anomalous/<clip>          ... or anomalous (clip-level labels)

Test clips without any ground truth are still returned (label None) so they can be replayed;
evaluation skips their frames. Image folders are read at `native_fps` (10 by default).
"""

from __future__ import annotations

import logging
from pathlib import Path

from streamvad.datasets.base import (
    DEFAULT_IMAGE_FPS,
    Clip,
    DatasetSplit,
    check_labels,
    clip_from_path,
    is_video,
    read_json,
    stream_id,
)
from streamvad.errors import InputError

logger = logging.getLogger(__name__)

LABELS_SUFFIX = ".labels.json"
_CLASS_DIRS = {"normal": 0, "anomalous": 1}


def _entries(folder: Path) -> list[Path]:
    """Clip candidates in a folder: videos and sub-folders, sorted; other files are ignored."""
    entries = sorted(p for p in folder.iterdir() if p.is_dir() or is_video(p))
    ignored = [p.name for p in folder.iterdir() if p.is_file() and not is_video(p)
               and not p.name.endswith(LABELS_SUFFIX)]
    if ignored:
        logger.debug("%s: ignoring non-video files %s", folder, ", ".join(sorted(ignored)))
    return entries


def _clip_name(path: Path) -> str:
    return path.stem if path.is_file() else path.name


def _labels_for(path: Path) -> list[int] | None:
    labels_path = path.with_name(_clip_name(path) + LABELS_SUFFIX)
    return check_labels(read_json(labels_path), labels_path) if labels_path.is_file() else None


def _test_clips(folder: Path, dataset: str, native_fps: float) -> list[Clip]:
    clips = []
    for entry in _entries(folder):
        if entry.is_dir() and entry.name in _CLASS_DIRS:
            label = _CLASS_DIRS[entry.name]
            clips += [clip_from_path(p, f"{entry.name}/{_clip_name(p)}",
                                     stream_id(dataset, "test", entry.name, _clip_name(p)),
                                     label=label, image_fps=native_fps) for p in _entries(entry)]
            continue
        labels = _labels_for(entry)
        if labels is None:
            logger.warning("%s: no %s next to it, frames are unlabelled", entry, LABELS_SUFFIX)
        name = _clip_name(entry)
        clips.append(clip_from_path(entry, name, stream_id(dataset, "test", name), labels=labels,
                                    image_fps=native_fps))
    return clips


def load(root: Path, *, native_fps: float = DEFAULT_IMAGE_FPS, sample_fps: float | None = 4.0,
         name: str | None = None) -> DatasetSplit:
    """The folder layout under `root`; `sample_fps` None scores every native frame."""
    dataset = name or root.name
    train_dir = root / "train" / "normal"
    if not train_dir.is_dir():
        raise InputError(f"{train_dir}: missing (expected root/train/normal/<videos or image folders>)")
    train = [clip_from_path(p, _clip_name(p), stream_id(dataset, "train", _clip_name(p)), label=0,
                            image_fps=native_fps) for p in _entries(train_dir)]
    if not train:
        raise InputError(f"{train_dir}: no videos or image folders to fit on")
    test_dir = root / "test"
    test = _test_clips(test_dir, dataset, native_fps) if test_dir.is_dir() else []
    if not test:
        logger.warning("%s: no test clips; the dataset can be fitted on but not evaluated", test_dir)
    return DatasetSplit(dataset, train, test, sample_fps)
