"""APMask-style synthetic anomalies: attention-guided cut-paste, and pixel AUROC measured on them.

A patch of U(0.1W, 0.4W) x U(0.1H, 0.4H) is cut where the CLS token looks, colour-jittered,
rotated, resized and pasted at another attended place; the mask is exactly the pasted pixels. The
location distribution is a softmax over the attention grid after standardising it: head-averaged
attention values are ~1/N, so a softmax of them as they are would be uniform. With no attention
(a CNN backbone) locations are uniform.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from sklearn.metrics import roc_auc_score

from streamvad.types import EmbeddingBatch

if TYPE_CHECKING:
    from streamvad.detectors.base import Detector

EmbedFn = Callable[[Sequence[np.ndarray]], EmbeddingBatch]


def _location_probs(attention_map: np.ndarray | None) -> np.ndarray | None:
    if attention_map is None:
        return None
    a = np.asarray(attention_map, dtype=np.float64)
    z = (a - a.mean()) / (a.std() + 1e-12)
    p = np.exp(z - z.max())
    return p / p.sum()


def _sample_corner(
    probs: np.ndarray | None, image_hw: tuple[int, int], box_hw: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int]:
    """Top-left corner of a box centred on a sampled point, kept inside the image."""
    h, w = image_hw
    if probs is None:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    else:
        gh, gw = probs.shape
        cell = int(rng.choice(probs.size, p=probs.ravel()))
        cy = (cell // gw + rng.uniform()) * h / gh
        cx = (cell % gw + rng.uniform()) * w / gw
    y = int(np.clip(round(cy - box_hw[0] / 2), 0, h - box_hw[0]))
    x = int(np.clip(round(cx - box_hw[1] / 2), 0, w - box_hw[1]))
    return y, x


def _jitter(patch: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        patch = enhancer(patch).enhance(float(rng.uniform(1 - strength, 1 + strength)))
    return patch


def attention_cutpaste(
    image: np.ndarray,
    attention_map: np.ndarray | None,
    rng: np.random.Generator,
    *,
    max_angle: float = 45.0,
    jitter: float = 0.4,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste a transformed piece of `image` ([H, W, 3] uint8) into itself; returns (image, mask [H, W]).

    `attention_map` is the CLS attention on the patch grid ([h, w]) or None for uniform sampling.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"attention_cutpaste: expected an [H, W, 3] uint8 image, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    probs = _location_probs(attention_map)
    box = (max(1, int(rng.uniform(0.1, 0.4) * h)), max(1, int(rng.uniform(0.1, 0.4) * w)))
    sy, sx = _sample_corner(probs, (h, w), box, rng)
    piece = _jitter(Image.fromarray(image[sy : sy + box[0], sx : sx + box[1]]), rng, jitter)
    piece = piece.convert("RGBA").rotate(float(rng.uniform(-max_angle, max_angle)),
                                         resample=Image.Resampling.BILINEAR, expand=True)
    scale = rng.uniform(0.75, 1.25)
    size = (int(np.clip(round(piece.width * scale), 1, w)), int(np.clip(round(piece.height * scale), 1, h)))
    rgba = np.asarray(piece.resize(size, Image.Resampling.BILINEAR))
    alpha = rgba[..., 3] >= 128
    ty, tx = _sample_corner(probs, (h, w), alpha.shape, rng)
    out = image.copy()
    target = out[ty : ty + alpha.shape[0], tx : tx + alpha.shape[1]]
    target[alpha] = rgba[..., :3][alpha]
    mask = np.zeros((h, w), dtype=bool)
    mask[ty : ty + alpha.shape[0], tx : tx + alpha.shape[1]] = alpha
    return out, mask


def mask_to_grid(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Fraction of each patch's pixels inside a pixel mask, as [N] row-major on `grid`."""
    t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return F.adaptive_avg_pool2d(t, grid).reshape(-1).numpy()


def cutpaste_batches(
    images: Sequence[np.ndarray], embed_fn: EmbedFn, rng: np.random.Generator, batch_size: int = 16
) -> Iterator[tuple[EmbeddingBatch, list[np.ndarray]]]:
    """Embedded cut-paste versions of `images` with their pixel masks, a batch at a time.

    Each chunk is embedded twice: once as it is, for the attention that guides where to cut and
    paste, and once after pasting, for the features the detector sees.
    """
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        normal = embed_fn(chunk)
        attention = None if normal.attention is None else normal.attention.reshape(len(chunk), *normal.grid)
        fakes = [attention_cutpaste(img, None if attention is None else attention[i], rng)
                 for i, img in enumerate(chunk)]
        yield embed_fn([f[0] for f in fakes]), [f[1] for f in fakes]


def pixel_auroc(
    detector: Detector,
    embed_fn: EmbedFn,
    normal_images: Sequence[np.ndarray],
    rng: np.random.Generator,
    batch_size: int = 16,
) -> float:
    """Pixel-level AUROC of a fitted detector's maps on cut-paste anomalies of normal images.

    A localisation check that needs no labelled anomalies: every pixel of every pasted image is a
    sample, labelled by the paste mask and scored by the detector's full-size anomaly map.
    """
    scores, labels = [], []
    for batch, masks in cutpaste_batches(normal_images, embed_fn, rng, batch_size):
        _, maps = detector.score_maps(batch)
        for patch_map, mask in zip(maps, masks, strict=True):
            scores.append(detector.anomaly_map(patch_map, batch.grid, mask.shape).ravel())
            labels.append(mask.ravel())
    y = np.concatenate(labels)
    if y.all() or not y.any():
        raise ValueError("pixel_auroc: the pasted masks cover all or none of the pixels")
    return float(roc_auc_score(y, np.concatenate(scores)))
