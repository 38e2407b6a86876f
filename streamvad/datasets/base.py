"""What every dataset loader returns, how a clip is replayed, and the loader registry.

A loader only finds files and ground truth; frames always come from `streamvad.sources`, so an
evaluation samples, decodes and labels exactly as a live camera would be read.

Each clip gets its own `camera` id (dataset, split and clip name). Sampled frames are keyed by
(camera, index, pts) and every clip restarts at index 0 and pts 0, so a camera shared between
clips would make frames of different clips collide in any dict keyed by `FrameKey`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from streamvad.errors import ConfigError, InputError
from streamvad.sources.images import iter_image_folder, list_images
from streamvad.sources.video import iter_video, probe_video
from streamvad.types import Frame

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg"})
DEFAULT_IMAGE_FPS = 10.0  # nominal rate of image-folder clips whose dataset does not say

# kind -> module exposing `load(root: Path, **options) -> DatasetSplit`; imported on first use so
# the loaders can import this module without a cycle.
_LOADERS = {
    "ucsd": "streamvad.datasets.ucsd",
    "safe-unsafe": "streamvad.datasets.safe_unsafe",
    "folder": "streamvad.datasets.folder",
}


@dataclass
class Clip:
    """One video file or image folder and its ground truth.

    `labels` are per native frame (0 normal, 1 anomalous); `label` is a clip-level label used when
    frames are not labelled one by one. `start_s`/`end_s` keep only part of the clip (trimming):
    `end_s` None means to the end, a negative `end_s` counts back from the end.
    """

    name: str
    path: Path
    camera: str
    kind: Literal["video", "images"]
    labels: list[int] | None
    native_fps: float | None
    label: int | None = None
    start_s: float = 0.0
    end_s: float | None = None


@dataclass
class DatasetSplit:
    """Normal clips to fit on, clips to evaluate, and the sampling rate the protocol prescribes
    (None: every native frame)."""

    name: str
    train: list[Clip]
    test: list[Clip]
    sample_fps: float | None
    cameras: dict[str, str] = field(default_factory=dict)  # video -> camera id, where the loader inferred them

    def write_cameras(self, directory: Path) -> Path | None:
        """cameras.csv (`video,camera`, the loaders' `cameras_file` format) in `directory`, to check and reuse."""
        if not self.cameras:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "cameras.csv"
        rows = "".join(f"{video},{camera}\n" for video, camera in sorted(self.cameras.items()))
        path.write_text("video,camera\n" + rows, encoding="utf-8")
        return path


def stream_id(*parts: str) -> str:
    """A camera id from name parts, restricted to the characters camera ids allow."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(p for p in parts if p)).strip("-")


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def read_json(path: Path) -> Any:
    """Parsed JSON, or an InputError naming the file and the line of the syntax error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None


def check_labels(values: Any, source: Path | str) -> list[int]:
    """A list of 0/1 frame labels, or an InputError saying what was found instead."""
    if not isinstance(values, list) or not all(v in (0, 1) and not isinstance(v, float) for v in values):
        raise InputError(f"{source}: expected a JSON list of 0/1 labels, one per native frame")
    return [int(v) for v in values]


def clip_from_path(path: Path, name: str, camera: str, *, labels: list[int] | None = None,
                   label: int | None = None, image_fps: float = DEFAULT_IMAGE_FPS) -> Clip:
    """A clip for a video file or an image folder; anything else is an InputError."""
    if path.is_dir():
        list_images(path)  # fails now, with the folder named, if it holds no images
        return Clip(name, path, camera, "images", labels, image_fps, label)
    if is_video(path):
        return Clip(name, path, camera, "video", labels, None, label)
    raise InputError(f"{path}: expected a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or a folder of images")


def _clip_end(clip: Clip) -> float | None:
    """The end of the kept part in seconds of the clip's own time, or None for 'to the end'."""
    if clip.end_s is None or clip.end_s >= 0:
        return clip.end_s
    if clip.kind == "video":
        duration = probe_video(clip.path).duration
    else:
        duration = len(list_images(clip.path)) / (clip.native_fps or DEFAULT_IMAGE_FPS)
    return duration + clip.end_s


def iter_clip(clip: Clip, sample_fps: float | None) -> Iterator[Frame]:
    """The clip's sampled frames through the sources, trimmed, with the clip label on every frame.

    Frame indices count the kept frames from 0; pts stays the source's, relative to its first frame.
    """
    if clip.kind == "video":
        frames = iter_video(clip.path, clip.camera, sample_fps=sample_fps, labels=clip.labels)
    else:
        frames = iter_image_folder(clip.path, clip.camera, native_fps=clip.native_fps or DEFAULT_IMAGE_FPS,
                                   sample_fps=sample_fps, labels=clip.labels)
    end = _clip_end(clip)
    index = 0
    origin: float | None = None
    for frame in frames:
        origin = frame.pts if origin is None else origin
        t = frame.pts - origin
        if t < clip.start_s:
            continue
        if end is not None and t >= end:
            break
        label = clip.label if clip.label is not None else frame.label
        yield replace(frame, index=index, label=label)
        index += 1


def load_dataset(kind: str, root: str | Path, **options: Any) -> DatasetSplit:
    """Load a dataset layout by kind ("ucsd", "safe-unsafe", "folder") with loader options."""
    module_name = _LOADERS.get(kind)
    if module_name is None:
        raise ConfigError(f"dataset kind {kind!r} is unknown; expected one of {', '.join(sorted(_LOADERS))}")
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset root ({kind}) not found or not a directory")
    loader = importlib.import_module(module_name).load
    try:
        inspect.signature(loader).bind(root, **options)
    except TypeError:
        accepted = [p for p in inspect.signature(loader).parameters if p != "root"]
        unknown = sorted(set(options) - set(accepted))
        raise ConfigError(f"dataset {kind!r}: unknown option(s) {', '.join(unknown) or '(root given twice)'}; "
                          f"accepted: {', '.join(accepted)}") from None
    split = loader(root, **options)
    logger.info("dataset %s (%s): %d train clips, %d test clips, sample_fps=%s", split.name, kind,
                len(split.train), len(split.test), split.sample_fps)
    return split

