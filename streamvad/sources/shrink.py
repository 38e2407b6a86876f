"""Frames larger than the system handles are shrunk once, the same way on every path.

Readers shrink before queueing (the worker decodes every camera's JPEG on one thread, and a 1080p
frame costs ~10x a 640 one); the engine applies the same limit to whatever it embeds, so a model fitted
or evaluated offline on full-size recordings sees the pixels the live path gives it. Shrinking twice
to the same size is a no-op, so frames that readers already shrank pass through the engine untouched.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from streamvad.types import Frame


def limit_size(frame: Frame, max_side: int | None) -> Frame:
    """The frame with its longer side shrunk to `max_side` (aspect kept; PIL's antialiased bilinear)."""
    h, w = frame.image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return frame
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = np.asarray(Image.fromarray(frame.image).resize(size, Image.Resampling.BILINEAR))
    return dataclasses.replace(frame, image=image)
