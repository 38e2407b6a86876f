"""The one contract every backbone meets, so scorers and detectors never know which network ran."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from streamvad.types import EmbeddingBatch, FrameKey


@runtime_checkable
class Backbone(Protocol):
    """A frozen feature extractor.

    `embed` takes RGB uint8 images of any size (resized to `image_size` inside), and returns global
    [B, D] and patch [B, N, D] float32 features on `grid`. `layers` asks for intermediate patch
    features by 1-based block index (Hugging Face `hidden_states` numbering); `attention` asks for
    the CLS-to-patch attention of block `attention_layer` (default: last), heads averaged. Backbones
    without attention (CNNs) return None for it.
    """

    name: str
    image_size: tuple[int, int]  # (height, width) fed to the network
    grid: tuple[int, int]
    dim: int
    num_layers: int

    def embed(
        self,
        images: Sequence[np.ndarray],
        keys: Sequence[FrameKey] | None = None,
        *,
        layers: Sequence[int] = (),
        attention: bool = False,
        attention_layer: int | None = None,
    ) -> EmbeddingBatch: ...

    def manifest(self) -> dict[str, object]:
        """What a fitted model must match to be served by this backbone (name, weights, size, D, N)."""
        ...
