"""Getting the tensors a detector needs out of an `EmbeddingBatch`, with readable failures."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from streamvad.errors import ModelMismatchError
from streamvad.types import EmbeddingBatch


def as_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32, device=device)


def stacked_layers(batch: EmbeddingBatch, layers: Sequence[int], device: torch.device, who: str) -> torch.Tensor:
    """Intermediate patch features as [L, B, N, D]; a missing or odd-sized layer is a model mismatch."""
    missing = [layer for layer in layers if layer not in batch.layers]
    if missing:
        raise ModelMismatchError(
            f"{who}: backbone output lacks layers {missing} (has {sorted(batch.layers)}); "
            f"embed with detector.requirements().embed_kwargs()"
        )
    dims = {batch.layers[layer].shape[-1] for layer in layers}
    if len(dims) != 1:
        raise ModelMismatchError(f"{who}: layers {list(layers)} differ in width {sorted(dims)}; "
                                 "this detector needs equal-width blocks (a ViT)")
    return torch.stack([as_tensor(batch.layers[layer], device) for layer in layers])


def top_mean(values: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k largest entries of each row of [B, M]."""
    k = max(1, min(k, values.shape[1]))
    return values.topk(k, dim=1).values.mean(dim=1)


def ratio_count(ratio: float, total: int) -> int:
    """How many of `total` items a ratio selects, at least one."""
    return max(1, math.ceil(ratio * total))


def check_grid(expected: tuple[int, int] | None, batch: EmbeddingBatch, who: str) -> None:
    if expected is not None and tuple(batch.grid) != tuple(expected):
        raise ModelMismatchError(f"{who}: fitted on a {expected} patch grid, got {batch.grid}; "
                                 "use the backbone and image size the detector was fitted with")
