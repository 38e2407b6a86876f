"""Small pictures of the training frames a model's memory holds rows of (`<model>/exemplars/<frame>.jpg`), so the
console can show an operator the nearest normal exemplar of an event (console/exemplar.py).

`fit` keeps a thumbnail of every frame it embeds, as the model saw it (after the wire's JPEG round trip),
privacy-blurred as the camera's pictures are, and writes those of the frames the memory kept: a coreset
memory holds rows of far fewer frames than it was fitted on. At 320 pixels a side they cost a few kB each.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from streamvad.overlay import privacy_blur
from streamvad.sources.shrink import limit_size
from streamvad.types import Frame, Polygon

EXEMPLARS = "exemplars"
_SIDE = 320
_QUALITY = 80


def thumbnail(frame: Frame, privacy: Sequence[Polygon] = ()) -> bytes:
    small = limit_size(frame, _SIDE).image
    buf = io.BytesIO()
    Image.fromarray(privacy_blur(small, privacy)).save(buf, format="JPEG", quality=_QUALITY)
    return buf.getvalue()


def exemplar_path(model_dir: Path, frame: int) -> Path:
    return model_dir / EXEMPLARS / f"{frame:06d}.jpg"


def write_exemplars(model_dir: Path, frame_of: np.ndarray, thumbnails: Sequence[bytes]) -> int:
    """The thumbnails (one per training frame, in the model's frame order) of the frames that `frame_of` [T, M]
    names; returns how many were written (none without thumbnails)."""
    if not thumbnails:
        return 0
    kept = np.unique(frame_of)
    for frame in kept:
        path = exemplar_path(model_dir, int(frame))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(thumbnails[int(frame)])
    return len(kept)
