"""UniFormaly (Lee et al.): a masked multi-layer patch memory bank scored by 1-NN distance.

Features are the mean of blocks 2..9 (0-indexed) of a 12-block ViT, i.e. hidden_states[3..10];
deeper or shallower backbones use the proportional blocks (`scale_layers`). Back patch masking
keeps only patches the CLS token attends to (block 9, heads averaged): the attention map is mean
filtered (7x7, stride 1, zero padding) on the grid, divided by the frame's own maximum (the official
code uses the batch maximum; per frame suits video, where batches mix cameras), and thresholded at
0.1. Masked-out patches neither enter the memory bank nor score. A backbone without attention (a
CNN) gets no masking: every patch is used, and a warning says so once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from streamvad.detectors.base import BaseDetector
from streamvad.detectors.config import UniformalyConfig, scale_layers
from streamvad.detectors.features import as_tensor, check_grid, ratio_count, stacked_layers, top_mean
from streamvad.detectors.memory_bank import greedy_coreset, nearest_sqdist
from streamvad.detectors.training import seeded
from streamvad.errors import StreamVADError
from streamvad.types import EmbeddingBatch, FeatureRequest

log = logging.getLogger(__name__)


class Uniformaly(BaseDetector):
    name = "uniformaly"
    config_cls = UniformalyConfig
    cfg: UniformalyConfig

    def __init__(self, cfg: UniformalyConfig | None = None, **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        self.bank: torch.Tensor | None = None
        self.grid: tuple[int, int] | None = None
        self._warned_no_attention = False

    @property
    def fitted(self) -> bool:
        return self.bank is not None

    def requirements(self) -> FeatureRequest:
        layers = scale_layers(range(self.cfg.first_block, self.cfg.last_block + 1), self.num_layers)
        if not self.cfg.masking:
            return FeatureRequest(layers=layers)
        attention_layer = scale_layers([self.cfg.attention_block], self.num_layers)[0]
        return FeatureRequest(layers=layers, attention=True, attention_layer=attention_layer)

    def _features(self, batch: EmbeddingBatch) -> torch.Tensor:
        return stacked_layers(batch, self.requirements().layers, self.device, self.name).mean(dim=0)

    def patch_mask(self, batch: EmbeddingBatch) -> torch.Tensor:
        """Boolean [B, N]: which patches are foreground by CLS attention (all, without attention)."""
        b, n = len(batch), batch.grid[0] * batch.grid[1]
        if not self.cfg.masking or batch.attention is None:
            if self.cfg.masking and not self._warned_no_attention:
                log.warning("%s: backbone gives no CLS attention; back patch masking is off", self.name)
                self._warned_no_attention = True
            return torch.ones(b, n, dtype=torch.bool, device=self.device)
        att = as_tensor(batch.attention, self.device).reshape(b, 1, *batch.grid)
        k = self.cfg.mask_filter
        smooth = F.avg_pool2d(att, k, stride=1, padding=k // 2, count_include_pad=True).reshape(b, n)
        smooth = smooth / smooth.amax(dim=1, keepdim=True).clamp_min(1e-12)
        return smooth > self.cfg.mask_threshold

    def fit(self, batches: Iterable[EmbeddingBatch], *, progress: bool = True) -> None:
        kept: list[torch.Tensor] = []
        frames = 0
        for batch in tqdm(batches, desc=f"{self.name} features", disable=not progress, unit="batch"):
            check_grid(self.grid, batch, self.name)
            self.grid = batch.grid
            kept.append(self._features(batch)[self.patch_mask(batch)].cpu())
            frames += len(batch)
        if not kept or sum(len(k) for k in kept) == 0:
            raise StreamVADError(f"{self.name}: fit() got no foreground patches from {frames} normal frames")
        feats = torch.cat(kept).to(self.device)
        count = ratio_count(self.cfg.coreset_ratio, feats.shape[0])
        with seeded(self.cfg.seed, self.device) as gen:
            idx = greedy_coreset(feats, count, projection_dim=self.cfg.projection_dim, generator=gen)
        self.bank = feats[idx].contiguous()
        log.info("%s: memory bank of %d patches (coreset of %d from %d frames)", self.name, count,
                 feats.shape[0], frames)

    def _score(self, batch: EmbeddingBatch) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.bank is not None
        check_grid(self.grid, batch, self.name)
        feats = self._features(batch)
        b, n, d = feats.shape
        dist = nearest_sqdist(feats.reshape(b * n, d), self.bank, self.cfg.chunk_size).reshape(b, n)
        patch = dist * self.patch_mask(batch)
        return top_mean(patch, ratio_count(self.cfg.top_ratio, n)), patch

    def _state(self) -> dict[str, torch.Tensor]:
        assert self.bank is not None
        return {"bank": self.bank}

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        self.bank = tensors["bank"].float()
        self.grid = tuple(extra["grid"])  # type: ignore[assignment]

    def _manifest_extra(self) -> dict[str, Any]:
        return {"grid": list(self.grid or ()), "bank_size": int(self.bank.shape[0]) if self.bank is not None
                else 0}

