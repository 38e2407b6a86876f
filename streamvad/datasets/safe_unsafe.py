"""Safe/Unsafe workplace behaviours (Önal & Dandıl, Data in Brief 2024; Mendeley xjmtb22pff), as
the reproduced study used it, read from the release exactly as unzipped.

Release layout (found at any depth under `root`): `Video Dataset for Safe and Unsafe Behaviours/Safe and
Unsafe Behaviours Dataset/{train,test}/<class>/<k>_<tr|te><n>.mp4` with eight class folders, 0-3 unsafe
(0_safe_walkway_violation, 1_unauthorized_intervention, 2_opened_panel cover,
3_carrying_overload_with_forklift) and 4-7 their safe counterparts (4_safe_walkway,
5_authorized_intervention, 6_closed_panel_cover, 7_safe_carrying); 691 clips, 1920x1080, ~25 fps. A
video's class is its parent folder: a leading 0-3 means unsafe, 4-7 safe; folders named `safe`/`unsafe`
are also understood, and `unsafe_classes` overrides both. Hidden and system files (`._*` left by macOS
on exFAT drives, dotfiles, `Thumbs.db`) are skipped.

The Hugging Face copy (`Voxel51/Safe_and_Unsafe_Behaviours`, a FiftyOne dataset) is read from its
`samples.json` when one is found under `root`: each sample's `filepath` (relative to that file) is a clip,
its class is the sample's classification label (the folder name with or without its number, any case or
spacing), else the `<k>_` of the file name; its published part is a `train`/`test` tag, else the `tr`/`te`
of the file name.

Cameras. The release names no camera anywhere, although its clips come from two fixed cameras (the
walkway and the forklift way) and the study keeps camera 1 only. A video's camera comes from
`cameras_file` (CSV `video,camera`), else from `camera_pattern` when every file name carries one
(`cam1`, `camera_01`, ...), else from the scene itself: each clip's background (the median of a few grey
thumbnails, so people walking through do not count) is clustered into two groups. The study says only
the forklift classes (3 and 7) were shot by the second camera, so the group that holds most of them is
camera "2" and the other camera "1" (the walkway). The assignment is kept in `DatasetSplit.cameras`
(written as cameras.csv beside fit's model and eval's report, to check and pass back as `cameras_file`);
a split that is not clear-cut, and a camera filter that removes every clip of a class, are warned about.

Protocols (`split`):
- "study" (default): only camera `camera` ("1"; None keeps every camera); frames every
  `frame_interval_s` = 0.23 s; SAFE videos split `train_fraction` 70/30 by video (sorted names shuffled
  with `seed`, half rounds up: 123 of 175); every UNSAFE video goes to test. Labels are clip-level.
- "published": the release's own folders: the safe videos under train/ are the training set, every
  video under test/ the test set (unsafe videos under train/ are not used).

The study's trimming list is not published. `trim_file` is a CSV with header `video,start_s,end_s`:
keep seconds [start_s, end_s) of that video; empty start_s = 0, empty end_s = to the end, negative
end_s = that many seconds before the end. Lines starting with `#` are comments.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from streamvad.datasets.base import Clip, DatasetSplit, clip_from_path, is_video, stream_id
from streamvad.errors import InputError

logger = logging.getLogger(__name__)

FRAME_INTERVAL_S = 0.23
DEFAULT_CAMERA_PATTERN = r"cam(?:era)?[ _-]?0*(\d+)"
_SYSTEM_FILES = {"thumbs.db", "desktop.ini"}
CLASS_FOLDERS = ("0_safe_walkway_violation", "1_unauthorized_intervention", "2_opened_panel cover",
                 "3_carrying_overload_with_forklift", "4_safe_walkway", "5_authorized_intervention",
                 "6_closed_panel_cover", "7_safe_carrying")
SAMPLES_FILE = "samples.json"  # a FiftyOne dataset export: the Hugging Face copy
_RELEASE_NAME = re.compile(r"^(\d)_(tr|te)\d+$")  # <k>_tr<n> / <k>_te<n>
_FORKLIFT_CLASSES = (3, 7)  # the study: only these were shot by the second camera
_SIGNATURE_SIZE = (32, 18)  # thumbnail (w, h) of a clip's scene: 16:9 like the release
_SIGNATURE_FRAMES = 5
_CLEAR_SILHOUETTE = 0.5  # below either of these, two cameras are not clearly told apart
_CLEAR_GAP = 0.2  # two unrelated normalised images differ by ~1.4 RMS, one scene's clips by ~0.1


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


def _hidden(path: Path, root: Path) -> bool:
    """macOS `._*` companions, dotfiles and folders, Windows' Thumbs.db: never clips."""
    return any(part.startswith(".") for part in path.relative_to(root).parts) or path.name.lower() in _SYSTEM_FILES


def _unique(videos: Sequence[Path]) -> None:
    seen: dict[str, Path] = {}
    for v in videos:
        if v.stem in seen:
            raise InputError(f"{v}: video name {v.stem!r} also used by {seen[v.stem]} (names must be unique)")
        seen[v.stem] = v


def _catalogue(root: Path) -> dict[Path, tuple[str, str]]:
    """Every clip under `root` -> (its class folder name, its published part: "train", "test" or "")."""
    manifests = sorted(p for p in root.rglob(SAMPLES_FILE) if not _hidden(p, root))
    if manifests:
        found = _from_samples(manifests[0])
    else:
        found = {p: (p.parent.name, p.parent.parent.name.lower())
                 for p in sorted(root.rglob("*")) if is_video(p) and not _hidden(p, root)}
    if not found:
        raise InputError(f"{root}: no Safe/Unsafe class folder with videos under it (expected the release's "
                         "layout, e.g. .../train/4_safe_walkway/4_tr1.mp4, or the Hugging Face copy's samples.json)")
    _unique(list(found))
    return found


def _letters(name: str) -> str:
    return re.sub(r"[^a-z]+", "_", name.lower()).strip("_")


def _class_of_label(label: str) -> str | None:
    """The class folder a label names: '4_safe_walkway', 'safe_walkway' and 'Safe Walkway' all name one."""
    key = _letters(label)
    return next((f for f in CLASS_FOLDERS if _letters(f) == key), key if key in ("safe", "unsafe") else None)


def _sample_label(sample: dict[str, Any]) -> str | None:
    """The sample's classification label: a FiftyOne Classification field (ground_truth first), or a string
    `label` field."""
    fields = [sample.get("ground_truth"), *(v for k, v in sample.items() if k != "ground_truth")]
    for value in fields:
        if isinstance(value, dict) and value.get("_cls") == "Classification" and isinstance(value.get("label"), str):
            return str(value["label"])
    return sample["label"] if isinstance(sample.get("label"), str) else None


def _from_samples(path: Path) -> dict[Path, tuple[str, str]]:
    """The clips a FiftyOne samples.json lists, each with its class and published part."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: unreadable samples file ({str(err).splitlines()[0]})") from None
    samples = doc.get("samples") if isinstance(doc, dict) else None
    if not isinstance(samples, list):
        raise InputError(f"{path}: expected a FiftyOne export, an object with a 'samples' list")
    out: dict[Path, tuple[str, str]] = {}
    for i, sample in enumerate(samples):
        where = f"{path}: samples[{i}]"
        if not isinstance(sample, dict) or not isinstance(sample.get("filepath"), str):
            raise InputError(f"{where}: expected an object with a 'filepath' string")
        video = Path(sample["filepath"])
        video = video if video.is_absolute() else path.parent / video
        if not video.is_file():
            raise InputError(f"{where}: filepath {sample['filepath']!r} not found beside {path.name}")
        name = _RELEASE_NAME.match(video.stem)
        label = _sample_label(sample)
        folder = _class_of_label(label) if label is not None else None
        if folder is None and name is not None:
            folder = CLASS_FOLDERS[int(name.group(1))] if int(name.group(1)) < len(CLASS_FOLDERS) else None
        if folder is None:
            raise InputError(f"{where}: class {label!r} is none of {', '.join(CLASS_FOLDERS)}, and the file name "
                             f"{video.name!r} is not <k>_tr<n> or <k>_te<n>")
        tags = {str(t).lower() for t in sample.get("tags") or ()} & {"train", "test"}
        part = tags.pop() if len(tags) == 1 else {"tr": "train", "te": "test"}[name.group(2)] if name else ""
        out[video] = (folder, part)
    return out


def _class_number(folder: str) -> int | None:
    match = re.match(r"(\d+)[ _]", folder)
    return int(match.group(1)) if match else None


def scene_signature(video: Path) -> np.ndarray:
    """What a fixed camera's clips share: the median of a few evenly spaced grey thumbnails (people who
    walk through are gone from the median), normalised so that exposure changes do not count."""
    cap = cv2.VideoCapture(str(video))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        thumbs = []
        for index in np.linspace(0, max(n - 1, 0), _SIGNATURE_FRAMES).round():
            cap.set(cv2.CAP_PROP_POS_FRAMES, float(index))
            ok, frame = cap.read()
            if ok:
                grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                thumbs.append(cv2.resize(grey, _SIGNATURE_SIZE, interpolation=cv2.INTER_AREA))
    finally:
        cap.release()
    if not thumbs:
        raise InputError(f"{video}: no frame could be decoded (needed to tell its camera by its scene)")
    sig = np.median(np.stack(thumbs), axis=0).astype(np.float32).ravel()
    return (sig - sig.mean()) / (sig.std() + 1e-6)


def cameras_by_scene(videos: Sequence[Path], classes: Sequence[str]) -> dict[str, str]:
    """Video name -> "1" or "2": two clusters of scene signatures; the one holding most forklift-class
    clips is camera 2 (the study: only classes 3 and 7 were shot by the second camera)."""
    logger.info("safe-unsafe: no camera ids in the file names; telling the %d clips' cameras apart by scene",
                len(videos))
    sig = np.stack([scene_signature(v) for v in videos])
    labels = KMeans(2, n_init=10, random_state=0).fit_predict(sig) if len(videos) >= 2 else np.zeros(len(videos))
    if len(set(labels)) < 2:
        logger.warning("safe-unsafe: every clip looks like one scene; all are camera 1 (pass cameras_file= if not)")
        return {v.stem: "1" for v in videos}
    quality = float(silhouette_score(sig, labels)) if len(videos) > 2 else 1.0
    # silhouette is scale-free (two sets of copies of one scene are two "perfect" clusters), so the scenes
    # must also differ: the RMS gap between the two mean backgrounds, in units of a thumbnail's own spread
    gap = float(np.linalg.norm(sig[labels == 0].mean(0) - sig[labels == 1].mean(0)) / np.sqrt(sig.shape[1]))
    forklift = np.array([_class_number(c) in _FORKLIFT_CLASSES for c in classes])
    second = int(np.argmax([forklift[labels == k].mean() for k in (0, 1)]))
    if quality < _CLEAR_SILHOUETTE or gap < _CLEAR_GAP:
        logger.warning("safe-unsafe: the clips do not fall clearly into two scenes (silhouette %.2f, needs %.2f; "
                       "scene gap %.2f, needs %.2f); check the cameras.csv written beside the report and pass a "
                       "corrected cameras_file=", quality, _CLEAR_SILHOUETTE, gap, _CLEAR_GAP)
    return {v.stem: "2" if lab == second else "1" for v, lab in zip(videos, labels, strict=True)}


def _camera_ids(catalogue: dict[Path, tuple[str, str]], root: Path, cameras_file: Path | None,
                camera_pattern: str) -> dict[str, str]:
    """Video name -> camera id: from `cameras_file`, else from the names when all carry one, else by scene."""
    videos = list(catalogue)
    if cameras_file is not None:
        cameras = read_cameras_file(Path(cameras_file))
        unknown = sorted(set(cameras) - {v.stem for v in videos})
        if unknown:
            raise InputError(f"{cameras_file}: {len(unknown)} video(s) not found under {root}: "
                             f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
        return {v.stem: cameras[v.stem] for v in videos if v.stem in cameras}
    pattern = re.compile(camera_pattern, re.IGNORECASE)
    named = {v.stem: m.group(1) for v in videos if (m := pattern.search(v.relative_to(root).as_posix()))}
    return named if len(named) == len(videos) else cameras_by_scene(videos, [catalogue[v][0] for v in videos])


def _filter_camera(catalogue: dict[Path, tuple[str, str]], cameras: dict[str, str], camera: str | None,
                   root: Path) -> list[Path]:
    videos = list(catalogue)
    if camera is None:
        return videos
    missing = sum(v.stem not in cameras for v in videos)
    if missing:
        logger.warning("%d of %d videos have no camera id and are left out", missing, len(videos))
    kept = [v for v in videos if v.stem in cameras and _same_camera(cameras[v.stem], camera)]
    if not kept:
        raise InputError(f"{root}: no video from camera {camera!r}")
    gone = sorted({catalogue[v][0] for v in videos} - {catalogue[v][0] for v in kept})
    if gone:
        logger.warning("safe-unsafe: camera %s has no clip of class(es) %s; they are left out", camera, ", ".join(gone))
    return kept


def _published_part(video: Path, catalogue: dict[Path, tuple[str, str]]) -> str:
    part = catalogue[video][1]
    if part not in ("train", "test"):
        raise InputError(f"{video}: split=published needs the release's train/ and test/ folders above the class "
                         "folder (or a train/test tag in samples.json)")
    return part


def load(root: Path, *, split: Literal["study", "published"] = "study", camera: str | None = "1",
         camera_pattern: str = DEFAULT_CAMERA_PATTERN, cameras_file: Path | None = None,
         trim_file: Path | None = None, frame_interval_s: float = FRAME_INTERVAL_S, train_fraction: float = 0.7,
         seed: int = 0, unsafe_classes: Sequence[str] | None = None) -> DatasetSplit:
    """The study's split (or the published one) of the Safe/Unsafe dataset under `root` (module docstring).
    `camera="auto"` is the default spelled out: camera ids found as described, the study's camera 1 kept."""
    camera = "1" if camera == "auto" else camera
    if split not in ("study", "published"):
        raise InputError(f"safe-unsafe: split must be study or published, got {split!r}")
    if not frame_interval_s > 0:
        raise InputError(f"safe-unsafe: frame_interval_s must be > 0, got {frame_interval_s}")
    if not 0.0 < train_fraction < 1.0:
        raise InputError(f"safe-unsafe: train_fraction must be in (0, 1), got {train_fraction}")
    trims = read_trim_file(Path(trim_file)) if trim_file is not None else {}
    catalogue = _catalogue(root)
    # every class must be readable before cameras are looked for (that decodes every clip)
    labels = {video: int(_is_unsafe(folder, unsafe_classes, video)) for video, (folder, _) in catalogue.items()}
    cameras = _camera_ids(catalogue, root, cameras_file, camera_pattern)
    videos = _filter_camera(catalogue, cameras, None if camera is None else str(camera), root)
    safe: list[Clip] = []
    unsafe: list[Clip] = []
    for video in videos:
        label = labels[video]
        cam = cameras.get(video.stem)
        clip = clip_from_path(video, video.stem, stream_id("safe-unsafe", f"cam{cam}" if cam else "", video.stem),
                              label=label)
        clip.start_s, clip.end_s = trims.get(video.stem, (0.0, None))
        (unsafe if label else safe).append(clip)
    unused = sorted(set(trims) - {c.name for c in safe + unsafe})
    if unused:
        logger.warning("trim list rows for %d videos not loaded (other camera or absent): %s", len(unused),
                       ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else ""))
    if split == "published":
        train_names = {c.name for c in safe if _published_part(c.path, catalogue) == "train"}
        test_names = {c.name for c in safe + unsafe if _published_part(c.path, catalogue) == "test"}
    else:
        names = sorted(c.name for c in safe)
        random.Random(seed).shuffle(names)
        n_train = int(Decimal(str(train_fraction)) * len(names) + Decimal("0.5"))  # exact: half rounds up
        train_names = set(names[:n_train])
        test_names = {c.name for c in safe + unsafe} - train_names
    if not train_names:
        raise InputError(f"{root}: no safe video left for training ({len(safe)} safe videos found)")
    train = sorted((c for c in safe if c.name in train_names), key=lambda c: c.name)
    test = sorted((c for c in safe + unsafe if c.name in test_names), key=lambda c: c.name)
    return DatasetSplit("safe-unsafe", train, test, 1.0 / frame_interval_s, cameras=cameras)
