"""Safe/Unsafe workplace behaviours (Önal & Dandıl, Data in Brief 2024; Mendeley xjmtb22pff), as
the reproduced study used it.

Published layout: `Safe and Unsafe Behaviours Dataset/{train,test}/<k>_<class>/<k>_<tr|te><n>.mp4`
with eight class folders, 0-3 unsafe (0_safe_walkway_violation, 1_unauthorized_intervention,
2_opened_panel cover, 3_carrying_overload_with_forklift) and 4-7 their safe counterparts
(4_safe_walkway, 5_authorized_intervention, 6_closed_panel_cover, 7_safe_carrying). A video's class
is its parent folder: a leading 0-3 means unsafe, 4-7 safe; folders named `safe`/`unsafe` are
also understood, and `unsafe_classes` overrides both. The dataset's own train/test folders are
pooled and re-split as the study did:

- only camera `camera` (default "1"); None keeps every camera;
- frames every `frame_interval_s` = 0.23 s;
- SAFE videos split 70/30 by video into train/test, deterministically (sorted names shuffled with
  `seed`); every UNSAFE video goes to test. Labels are clip-level (1 = unsafe).

Assumptions where the release is silent:
- The published file names carry no camera id. A video's camera comes from `cameras_file`, a CSV
  with header `video,camera` (video = file name with or without extension), or else from
  `camera_pattern` matched against its path relative to the root (default: `cam1`, `camera_01`,
  `Camera-1`, ...). With a camera filter and no camera id anywhere, loading fails and says so.
- The study's trimming list is not published. `trim_file` is a CSV with header
  `video,start_s,end_s`: keep seconds [start_s, end_s) of that video; empty start_s = 0, empty
  end_s = to the end, negative end_s = that many seconds before the end (cut the tail).
  Lines starting with `#` are comments. Trim rows for videos that are not loaded are logged.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import re
from collections.abc import Sequence
from pathlib import Path

from streamvad.datasets.base import Clip, DatasetSplit, clip_from_path, is_video, stream_id
from streamvad.errors import InputError

logger = logging.getLogger(__name__)

FRAME_INTERVAL_S = 0.23
DEFAULT_CAMERA_PATTERN = r"cam(?:era)?[ _-]?0*(\d+)"


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for each non-comment row of a CSV whose header has `columns`."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"{path}: empty, expected a header {','.join(columns)}")
    reader = csv.DictReader(line for _, line in lines)
    header = [h.strip() for h in reader.fieldnames or []]
    if not set(columns) <= set(header):
        raise InputError(f"{path}: header must contain {','.join(columns)}, got {','.join(header)}")
    return [(n, {k.strip(): (v or "").strip() for k, v in row.items() if k})
            for (n, _), row in zip(lines[1:], reader, strict=True)]


def _seconds(value: str, path: Path, line: int, field: str) -> float | None:
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise InputError(f"{path}:{line}: {field} must be a number of seconds, got {value!r}") from None


def read_trim_file(path: Path) -> dict[str, tuple[float, float | None]]:
    """video name (no extension) -> (start_s, end_s) from a `video,start_s,end_s` CSV."""
    trims: dict[str, tuple[float, float | None]] = {}
    for line, row in _read_csv(path, ("video", "start_s", "end_s")):
        start = _seconds(row["start_s"], path, line, "start_s") or 0.0
        end = _seconds(row["end_s"], path, line, "end_s")
        if start < 0 or (end is not None and 0 <= end <= start):
            raise InputError(f"{path}:{line}: need 0 <= start_s < end_s (or a negative end_s), "
                             f"got {start}, {end}")
        trims[Path(row["video"]).stem] = (start, end)
    return trims


def read_cameras_file(path: Path) -> dict[str, str]:
    """video name (no extension) -> camera id from a `video,camera` CSV."""
    return {Path(row["video"]).stem: row["camera"] for _, row in _read_csv(path, ("video", "camera"))}


def _is_unsafe(folder: str, unsafe_classes: Sequence[str] | None, video: Path) -> bool:
    if unsafe_classes is not None:
        return folder in unsafe_classes
    if folder.lower() in ("safe", "unsafe"):
        return folder.lower() == "unsafe"
    match = re.match(r"(\d+)[ _]", folder)
    if match and int(match.group(1)) <= 7:
        return int(match.group(1)) <= 3
    raise InputError(f"{video}: cannot tell whether class folder {folder!r} is safe or unsafe "
                     f"(expected 0_..3_ unsafe, 4_..7_ safe, or pass unsafe_classes)")


def _same_camera(a: str, b: str) -> bool:
    """'1' == '01' == 'cam1'-style ids compare by number when both are numbers."""
    return int(a) == int(b) if a.isdigit() and b.isdigit() else a == b


def _camera_of(video: Path, root: Path, cameras: dict[str, str] | None, pattern: re.Pattern[str]) -> str | None:
    if cameras is not None:
        return cameras.get(video.stem)
    match = pattern.search(video.relative_to(root).as_posix())
    return match.group(1) if match else None


def _find_videos(root: Path) -> list[Path]:
    videos = sorted(p for p in root.rglob("*") if is_video(p))
    if not videos:
        raise InputError(f"{root}: no videos found under the Safe/Unsafe root")
    seen: dict[str, Path] = {}
    for v in videos:
        if v.stem in seen:
            raise InputError(f"{v}: video name {v.stem!r} also used by {seen[v.stem]} (names must be unique)")
        seen[v.stem] = v
    return videos


def _filter_camera(videos: list[Path], root: Path, camera: str | None, cameras_file: Path | None,
                   camera_pattern: str) -> list[tuple[Path, str | None]]:
    cameras = read_cameras_file(Path(cameras_file)) if cameras_file is not None else None
    pattern = re.compile(camera_pattern, re.IGNORECASE)
    tagged = [(v, _camera_of(v, root, cameras, pattern)) for v in videos]
    if camera is None:
        return tagged
    if all(cam is None for _, cam in tagged):
        where = cameras_file if cameras_file is not None else f"file names (pattern {camera_pattern!r})"
        raise InputError(f"{root}: no camera id found in {where}; pass cameras_file=, camera_pattern= "
                         f"or camera=None to keep every camera")
    missing = sum(cam is None for _, cam in tagged)
    if missing:
        logger.warning("%d of %d videos have no camera id and are left out", missing, len(tagged))
    kept = [(v, cam) for v, cam in tagged if cam is not None and _same_camera(cam, camera)]
    if not kept:
        raise InputError(f"{root}: no video from camera {camera!r}")
    return kept


def load(root: Path, *, camera: str | None = "1", camera_pattern: str = DEFAULT_CAMERA_PATTERN,
         cameras_file: Path | None = None, trim_file: Path | None = None,
         frame_interval_s: float = FRAME_INTERVAL_S, train_fraction: float = 0.7, seed: int = 0,
         unsafe_classes: Sequence[str] | None = None) -> DatasetSplit:
    """The study's split of the Safe/Unsafe dataset under `root` (see the module docstring)."""
    if not frame_interval_s > 0:
        raise InputError(f"safe-unsafe: frame_interval_s must be > 0, got {frame_interval_s}")
    if not 0.0 < train_fraction < 1.0:
        raise InputError(f"safe-unsafe: train_fraction must be in (0, 1), got {train_fraction}")
    trims = read_trim_file(Path(trim_file)) if trim_file is not None else {}
    videos = _filter_camera(_find_videos(root), root, None if camera is None else str(camera), cameras_file,
                            camera_pattern)
    safe: list[Clip] = []
    unsafe: list[Clip] = []
    for video, cam in videos:
        label = int(_is_unsafe(video.parent.name, unsafe_classes, video))
        clip = clip_from_path(video, video.stem, stream_id("safe-unsafe", f"cam{cam}" if cam else "", video.stem),
                              label=label)
        clip.start_s, clip.end_s = trims.get(video.stem, (0.0, None))
        (unsafe if label else safe).append(clip)
    unused = sorted(set(trims) - {c.name for c in safe + unsafe})
    if unused:
        logger.warning("trim list rows for %d videos not loaded (other camera or absent): %s", len(unused),
                       ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else ""))
    names = sorted(c.name for c in safe)
    random.Random(seed).shuffle(names)
    train_names = set(names[:math.floor(train_fraction * len(names) + 0.5)])  # half rounds up
    if not train_names:
        raise InputError(f"{root}: no safe video left for training ({len(safe)} safe videos found)")
    train = sorted((c for c in safe if c.name in train_names), key=lambda c: c.name)
    test = sorted((c for c in safe + unsafe if c.name not in train_names), key=lambda c: c.name)
    return DatasetSplit("safe-unsafe", train, test, 1.0 / frame_interval_s)
