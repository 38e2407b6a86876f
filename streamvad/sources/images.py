"""Image folders as a camera: one file per native frame, in natural order, at a nominal rate.

Datasets such as UCSD Ped or extracted frames come as numbered images; treating them as a
stream at `native_fps` lets them go through the same sampler as a live camera.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from streamvad.errors import InputError
from streamvad.sources.emit import RawFrame, emit_frames
from streamvad.sources.status import SourceStatus
from streamvad.types import Frame

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
MAX_PIXELS = 7680 * 4320  # an 8K frame; anything larger in a folder of frames is a mistake or an attack


def _natural_key(path: Path) -> list[int | str]:
    """'frame2' before 'frame10', as a human reads numbered frames."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(folder: Path) -> list[Path]:
    """The images directly inside `folder`, naturally sorted; InputError if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory of images")
    images = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise InputError(f"{folder}: no images found (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(images, key=_natural_key)


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3]; greyscale, palette and alpha images are converted to plain RGB. An image larger
    than MAX_PIXELS is refused from its header, before it is decoded (a decompression bomb)."""
    try:
        with warnings.catch_warnings():  # PIL warns of sizes this refuses anyway
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            if img.width * img.height > MAX_PIXELS:
                raise InputError(f"{path}: {img.width}x{img.height} image, more than the {MAX_PIXELS // 10**6} "
                                 "megapixels a frame may have; not decoded")
            img.load()  # decode now, so truncated files fail here and not later
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable image ({reason})") from None
    return np.asarray(rgb, dtype=np.uint8)


def iter_image_folder(folder: Path, camera: str, *, native_fps: float = 10.0, sample_fps: float | None = None,
                      labels: Sequence[int] | None = None, realtime: bool = False, loop: bool = False,
                      status: SourceStatus | None = None) -> Iterator[Frame]:
    """Frames of an image folder; image i has pts i / native_fps and, if given, label labels[i]."""
    if not native_fps > 0:
        raise InputError(f"{folder}: native_fps must be > 0, got {native_fps}")
    paths = list_images(folder)
    if labels is not None and len(labels) != len(paths):
        raise InputError(f"{folder}: {len(labels)} labels given for {len(paths)} images")

    def one_pass() -> Iterator[RawFrame]:
        for i, path in enumerate(paths):
            yield RawFrame(number=i, pts=i / native_fps, image=lambda p=path: read_image(p), source=str(path))

    return emit_frames(one_pass, camera, period=1.0 / native_fps, sample_fps=sample_fps, labels=labels,
                       realtime=realtime, loop=loop, status=status)
