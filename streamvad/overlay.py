"""Draw over a frame: a patch-grid heatmap (snapshots, replay heatmaps, reports) and privacy blurs.

Kept in numpy + Pillow (no OpenCV) so the CPU image and CI stay small; the colour map is a fixed
blue-to-red ramp so an operator reads the same colour the same way in every snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from streamvad.types import Polygon

_PIXELATE = 24  # a privacy region keeps at most this many blocks across the picture's longer side
# Anchor colours of the ramp at 0, 0.25, 0.5, 0.75, 1 (dark blue, cyan, green, yellow, red).
_RAMP = np.array(
    [[0, 0, 140], [0, 190, 255], [40, 220, 60], [255, 220, 0], [230, 20, 20]], dtype=np.float32
)


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] ([H, W]) to RGB uint8 ([H, W, 3])."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(np.int64).clip(0, len(_RAMP) - 2)
    t = (v - lo)[..., None]
    return ((1 - t) * _RAMP[lo] + t * _RAMP[lo + 1]).astype(np.uint8)


def upsample(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an [h, w] map to (height, width)."""
    img = Image.fromarray(heatmap.astype(np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend an [h, w] map with values in [0, 1] over an RGB uint8 [H, W, 3] image.

    Cells near 0 are blended less than hot ones, so a normal frame stays readable under its map.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay_heatmap: expected an [H, W, 3] image, got {image.shape}")
    h, w = image.shape[:2]
    heat = np.clip(upsample(heatmap, (h, w)), 0.0, 1.0)
    weight = (alpha * (0.35 + 0.65 * heat))[..., None]
    out = (1 - weight) * image.astype(np.float32) + weight * colorize(heat).astype(np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def save_jpeg(image: np.ndarray, path: str | Path, quality: int = 90) -> Path:
    """Write an RGB uint8 image as JPEG, creating parent folders."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(p, format="JPEG", quality=quality)
    return p


def privacy_blur(image: np.ndarray, polygons: Sequence[Polygon]) -> np.ndarray:
    """`image` with every polygon ((x, y) in [0, 1] of its width and height) pixelated, then blurred: coarse
    blocks carry no face or plate, and the blur hides their edges."""
    if not polygons:
        return image
    h, w = image.shape[:2]
    region = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(region)
    for polygon in polygons:
        draw.polygon([(x * (w - 1), y * (h - 1)) for x, y in polygon], fill=255)
    picture = Image.fromarray(image)
    scale = max(w, h) / _PIXELATE
    blocks = picture.resize((max(1, round(w / scale)), max(1, round(h / scale))), Image.Resampling.BOX)
    hidden = blocks.resize((w, h), Image.Resampling.NEAREST).filter(ImageFilter.GaussianBlur(scale / 2))
    return np.asarray(Image.composite(hidden, picture, region))
