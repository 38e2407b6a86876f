"""S2VAD, following Dinomaly (Guo et al.): reconstruct frozen encoder features through a noisy bottleneck.

Encoder blocks 2..9 (0-indexed, rescaled to the backbone depth by `scale_layers`) are averaged and
passed through an MLP bottleneck with dropout on input, hidden and output (the noise that keeps the
decoder from learning identity), then through pre-norm transformer blocks with linear attention
(phi = ELU + 1), which cannot focus sharply enough to copy anomalies through. Two groups are
compared: encoder mean of the first half of the blocks vs decoder mean of the last half of its
blocks, and the second half vs the first (the "reversed halves").

Loss per group: 1 - cosine of the flattened maps, with hard mining as in Dinomaly's code: only the
hardest (1 - p) fraction of points (per-point cosine distance, over the batch) keeps its full
gradient, the rest gets x0.1, with p = min(0.9 * iter / 1000, 0.9). AdamW stands in for
StableAdamW (same update without its per-tensor step clipping; grad clipping at 0.1 bounds steps).
Map = 1 - channel cosine per group, averaged; image score = mean of the top 1% pixels of the map
drawn at `pixels_per_patch` pixels per patch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from streamvad.detectors.base import BaseDetector, check_batches
from streamvad.detectors.config import S2VADConfig, scale_layers
from streamvad.detectors.features import check_grid, ratio_count, stacked_layers, top_mean
from streamvad.detectors.training import seeded, warmup_cosine
from streamvad.errors import ModelMismatchError
from streamvad.types import EmbeddingBatch, FeatureRequest

log = logging.getLogger(__name__)


class LinearAttention(nn.Module):
    """Softmax-free attention: phi(q) (phi(k)^T v), normalised, with phi = ELU + 1."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        kv = k.transpose(-2, -1) @ v  # [B, H, Dh, Dh]
        norm = q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1)  # [B, H, N, 1]
        out = (q @ kv) / (norm + 1e-6)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LinearAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Reconstructor(nn.Module):
    """Noisy MLP bottleneck + linear-attention decoder; returns the two decoder groups."""

    def __init__(self, dim: int, cfg: S2VADConfig) -> None:
        super().__init__()
        hidden = dim * cfg.bottleneck_ratio
        self.bottleneck = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(hidden, dim), nn.Dropout(cfg.dropout),
        )
        self.blocks = nn.ModuleList(DecoderBlock(dim, cfg.num_heads, cfg.mlp_ratio)
                                    for _ in range(cfg.decoder_depth))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bottleneck(x)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        outs.reverse()
        half = len(outs) // 2
        return [torch.stack(outs[:half]).mean(dim=0), torch.stack(outs[half:]).mean(dim=0)]


def hard_mined_cosine_loss(enc: torch.Tensor, dec: torch.Tensor, p: float, easy_factor: float) -> torch.Tensor:
    """1 - cosine of the flattened [B, N, D] maps; points outside the hardest (1-p) get scaled grads."""
    with torch.no_grad():
        point = 1.0 - F.cosine_similarity(enc, dec, dim=-1)  # [B, N]
        flat = point.reshape(-1)
        hard_count = max(1, int(flat.numel() * (1.0 - p)))
        thresh = flat.topk(hard_count).values[-1]
        scale = torch.where(point < thresh, easy_factor, 1.0).unsqueeze(-1)
    dec = dec * scale + dec.detach() * (1.0 - scale)  # same values, gradient scaled per point
    b = enc.shape[0]
    return (1.0 - F.cosine_similarity(enc.reshape(b, -1), dec.reshape(b, -1), dim=1)).mean()


class S2VAD(BaseDetector):
    name = "s2vad"
    config_cls = S2VADConfig
    cfg: S2VADConfig

    def __init__(self, cfg: S2VADConfig | None = None, **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        self.model: Reconstructor | None = None
        self.grid: tuple[int, int] | None = None
        self.dim: int | None = None
        self.loss_history: list[float] = []  # per iteration of the last fit, for diagnostics and tests

    @property
    def fitted(self) -> bool:
        return self.model is not None

    def requirements(self) -> FeatureRequest:
        return FeatureRequest(layers=scale_layers(range(self.cfg.first_block, self.cfg.last_block + 1),
                                                  self.num_layers))

    def _encode(self, batch: EmbeddingBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Bottleneck input (mean of all layers) and the two encoder groups, each [B, N, D]."""
        stack = stacked_layers(batch, self.requirements().layers, self.device, self.name)
        half = math.ceil(stack.shape[0] / 2)
        second = stack[half:] if stack.shape[0] > 1 else stack
        return stack.mean(dim=0), [stack[:half].mean(dim=0), second.mean(dim=0)]

    def _build(self, dim: int) -> Reconstructor:
        if dim % self.cfg.num_heads:
            raise ModelMismatchError(f"{self.name}: feature width {dim} is not divisible by "
                                     f"num_heads={self.cfg.num_heads}")
        self.dim = dim
        return Reconstructor(dim, self.cfg).to(self.device)

    def fit(self, batches: Iterable[EmbeddingBatch], *, progress: bool = True) -> None:
        """Cache encoder inputs/targets on the CPU (3 x frames x N x D floats), then train."""
        batches = list(batches)
        check_batches(batches, self.name)
        inputs, group0, group1 = [], [], []
        for batch in batches:
            check_grid(self.grid, batch, self.name)
            self.grid = batch.grid
            x, (g0, g1) = self._encode(batch)
            inputs.append(x.cpu())
            group0.append(g0.cpu())
            group1.append(g1.cpu())
        data = [torch.cat(inputs), torch.cat(group0), torch.cat(group1)]
        with seeded(self.cfg.seed, self.device) as gen:
            self.model = self._build(data[0].shape[-1])
            self._train(data, gen, progress)
        self.model.eval()

    def _train(self, data: list[torch.Tensor], gen: torch.Generator, progress: bool) -> None:
        assert self.model is not None
        cfg = self.cfg
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(cfg.iterations, cfg.warmup_iters, cfg.lr_final / cfg.lr))
        self.model.train()
        frames = data[0].shape[0]
        losses: list[float] = []
        for it in tqdm(range(cfg.iterations), desc=f"{self.name} iterations", disable=not progress):
            idx = torch.randint(frames, (min(cfg.batch_size, frames),), generator=gen, device=self.device).cpu()
            x, *enc = (t[idx].to(self.device) for t in data)
            p = min(cfg.hard_mining_max * it / cfg.hard_mining_ramp, cfg.hard_mining_max)
            dec = self.model(x)
            loss = torch.stack([hard_mined_cosine_loss(e, d, p, cfg.easy_grad_factor)
                                for e, d in zip(enc, dec, strict=True)]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
        self.loss_history = losses
        log.info("%s: trained %d iterations, loss %.4f -> %.4f", self.name, cfg.iterations, losses[0], losses[-1])

    def _score(self, batch: EmbeddingBatch) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.model is not None
        check_grid(self.grid, batch, self.name)
        x, enc = self._encode(batch)
        dec = self.model(x)
        patch = torch.stack([1.0 - F.cosine_similarity(e, d, dim=-1) for e, d in zip(enc, dec, strict=True)])
        patch = patch.mean(dim=0)  # averaging before upsampling equals after: both steps are linear
        return self._image_scores(patch, batch.grid), patch

    def _image_scores(self, patch: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        size = (grid[0] * self.cfg.pixels_per_patch, grid[1] * self.cfg.pixels_per_patch)
        maps = [torch.from_numpy(self.anomaly_map(m, grid, size)).reshape(-1) for m in patch.cpu().numpy()]
        pixels = torch.stack(maps)
        return top_mean(pixels, ratio_count(self.cfg.top_ratio, pixels.shape[1]))

    def _state(self) -> dict[str, torch.Tensor]:
        assert self.model is not None
        return dict(self.model.state_dict())

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        self.grid = tuple(extra["grid"])  # type: ignore[assignment]
        self.model = self._build(int(extra["dim"]))
        self.model.load_state_dict(tensors)
        self.model.eval()

    def _manifest_extra(self) -> dict[str, Any]:
        return {"grid": list(self.grid or ()), "dim": self.dim}
