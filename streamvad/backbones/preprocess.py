"""Frames in, network input out: RGB uint8 images of any size to a normalised [B, 3, h, w] tensor.

Frames of one camera share a size, so images are grouped by shape and each group is resized in one
batched `interpolate`. On CPU the resize runs on uint8 (torch's vectorised uint8 path is ~2.5x faster
than float for full-HD frames, at under one grey level of rounding); on an accelerator the full-size
uint8 frames are uploaded (4x fewer bytes than float) and resized there. Bilinear with antialiasing,
so a 1080p frame shrunk to 224 rows does not alias the way plain bilinear sampling would.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_rgb_uint8(images: Sequence[np.ndarray]) -> None:
    """Raise ValueError naming the first image that is not an [H, W, 3] uint8 array."""
    if len(images) == 0:
        raise ValueError("preprocess: expected at least one image, got an empty sequence")
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray):
            raise ValueError(f"preprocess: image {i} is a {type(img).__name__}, expected a numpy array")
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"preprocess: image {i} has shape {img.shape} dtype {img.dtype}, "
                             f"expected [H, W, 3] uint8 RGB")
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError(f"preprocess: image {i} is empty ({img.shape})")


def _resize_group(batch: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """[n, H, W, 3] uint8 -> [n, 3, h, w] float32 in 0..255 on `device`."""
    x = torch.from_numpy(batch).permute(0, 3, 1, 2)
    if device.type == "cpu":
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear",
                              antialias=True, align_corners=False)
        return x.float()
    x = x.to(device, non_blocking=True).float()
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x


def preprocess(
    images: Sequence[np.ndarray],
    image_size: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Resize RGB uint8 images to `image_size` (height, width) and normalise per channel.

    `mean` and `std` are in the 0..1 pixel scale, as Hugging Face preprocessor configs give them.
    Returns a contiguous [B, 3, h, w] tensor of `dtype` on `device`, in input order.
    """
    check_rgb_uint8(images)
    dev = torch.device(device)
    size = (int(image_size[0]), int(image_size[1]))
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        groups[img.shape].append(i)
    if len(groups) == 1:
        x = _resize_group(np.stack(images), size, dev)
    else:
        x = torch.empty((len(images), 3, *size), dtype=torch.float32, device=dev)
        for idx in groups.values():
            x[idx] = _resize_group(np.stack([images[i] for i in idx]), size, dev)
    # (x / 255 - mean) / std folded into one multiply-add per channel.
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=dev).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=dev).view(1, 3, 1, 1)
    x = x.mul_(scale).add_(shift)
    return x.to(dtype).contiguous()
