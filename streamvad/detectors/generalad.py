"""GeneralAD (Strater et al.): a patch discriminator that tells distorted features from clean ones.

Trained on normal frames only: each clean batch is paired with a distorted copy, and the
discriminator learns per patch whether it was touched. Distortions act on last-layer normed patch
features with Gaussian noise (std 0.25):
- "random": num_fake ~ U{1..N} random patches get noise;
- "noise_all": every patch gets noise;
- "attention_shuffle": the num_fake most attended patches are permuted among themselves. The paper
  uses one random head's attention; backbones here give heads averaged, so the shuffle follows the
  averaged map (and random patches for a backbone without attention).
With `cutpaste=True` image-space fakes (APMask cut-paste, `cutpaste.py`) embedded by `embed_fn`
join every step; a patch is fake when at least `cutpaste_min_overlap` of its pixels were pasted.

No checkpoint selection: the last epoch is kept, since selecting on test AUROC (as the official
code does) leaks labels. Image score = mean of the top-K patch logits; the map is the logits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from streamvad.detectors.base import BaseDetector, check_batches
from streamvad.detectors.config import GeneralADConfig
from streamvad.detectors.cutpaste import EmbedFn, cutpaste_batches, mask_to_grid
from streamvad.detectors.features import as_tensor, check_grid, top_mean
from streamvad.detectors.training import seeded, warmup_cosine
from streamvad.errors import ConfigError, ModelMismatchError
from streamvad.types import EmbeddingBatch, FeatureRequest

log = logging.getLogger(__name__)


class Discriminator(nn.Module):
    """Positional embedding, one attention layer (post-norm), a residual MLP, a per-patch logit."""

    def __init__(self, num_patches: int, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, num_patches, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.head = nn.Linear(dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos
        x = self.norm(x + self.attn(x, x, x, need_weights=False)[0])
        x = x + self.mlp(x)
        return self.head(x).squeeze(-1)


def distort(
    feats: torch.Tensor, attention: torch.Tensor | None, kind: str, std: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A distorted copy of [B, N, D] features and its per-patch labels [B, N] (1 = touched)."""
    b, n, _ = feats.shape
    dev = feats.device
    if kind == "noise_all":
        touched = torch.ones(b, n, dtype=torch.bool, device=dev)
    else:
        num_fake = torch.randint(1, n + 1, (b, 1), generator=gen, device=dev)
        order_key = torch.rand(b, n, generator=gen, device=dev)
        if kind == "attention_shuffle" and attention is not None:
            order_key = attention  # most attended first
        rank = order_key.argsort(dim=1, descending=True).argsort(dim=1)
        touched = rank < num_fake
    if kind != "attention_shuffle":
        noise = torch.randn(feats.shape, generator=gen, device=dev) * std
        return feats + noise * touched.unsqueeze(-1), touched.float()
    out = feats.clone()
    for i in range(b):
        idx = touched[i].nonzero().squeeze(1)
        out[i, idx] = feats[i, idx[torch.randperm(idx.numel(), generator=gen, device=dev)]]
    return out, (out != feats).any(dim=-1).float()


class GeneralAD(BaseDetector):
    name = "generalad"
    config_cls = GeneralADConfig
    cfg: GeneralADConfig

    def __init__(self, cfg: GeneralADConfig | None = None, *, embed_fn: EmbedFn | None = None,
                 **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        self.embed_fn = embed_fn
        self.model: Discriminator | None = None
        self.grid: tuple[int, int] | None = None

    @property
    def fitted(self) -> bool:
        return self.model is not None

    def requirements(self) -> FeatureRequest:
        return FeatureRequest(attention=self.cfg.distortion == "attention_shuffle" or self.cfg.cutpaste)

    def _build(self, num_patches: int, dim: int) -> Discriminator:
        if dim % self.cfg.num_heads:
            raise ModelMismatchError(f"{self.name}: feature width {dim} is not divisible by "
                                     f"num_heads={self.cfg.num_heads}")
        return Discriminator(num_patches, dim, self.cfg.num_heads, self.cfg.hidden_dim,
                             self.cfg.dropout).to(self.device)

    def _cutpaste_set(self, images: Sequence[np.ndarray] | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.cfg.cutpaste:
            return None
        if self.embed_fn is None or not images:
            raise ConfigError(f"detector.{self.name}.cutpaste: needs an embed_fn and the normal images to fit")
        feats, labels = [], []
        rng = np.random.default_rng(self.cfg.seed)
        for batch, masks in cutpaste_batches(images, self.embed_fn, rng, self.cfg.batch_size):
            check_grid(self.grid, batch, self.name)
            feats.append(torch.from_numpy(np.ascontiguousarray(batch.patches, dtype=np.float32)))
            grid_masks = [mask_to_grid(m, batch.grid) >= self.cfg.cutpaste_min_overlap for m in masks]
            labels.append(torch.from_numpy(np.stack(grid_masks).astype(np.float32)))
        return torch.cat(feats), torch.cat(labels)

    def fit(self, batches: Iterable[EmbeddingBatch], *, progress: bool = True,
            images: Sequence[np.ndarray] | None = None) -> None:
        """Train on normal frames; `images` (the same normal frames) are needed only with cutpaste."""
        batches = list(batches)
        check_batches(batches, self.name)
        for batch in batches:
            check_grid(self.grid, batch, self.name)
            self.grid = batch.grid
        feats = torch.from_numpy(np.concatenate([b.patches for b in batches]).astype(np.float32))
        has_attention = all(b.attention is not None for b in batches)
        attention = (torch.from_numpy(np.concatenate([b.attention for b in batches]).astype(np.float32))
                     if has_attention else None)
        if self.cfg.distortion == "attention_shuffle" and attention is None:
            log.warning("%s: no CLS attention from the backbone; shuffling random patches instead", self.name)
        fakes = self._cutpaste_set(images)
        with seeded(self.cfg.seed, self.device) as gen:
            self.model = self._build(feats.shape[1], feats.shape[2])
            self._train(feats, attention, fakes, gen, progress)
        self.model.eval()

    def _train(self, feats: torch.Tensor, attention: torch.Tensor | None,
               fakes: tuple[torch.Tensor, torch.Tensor] | None, gen: torch.Generator, progress: bool) -> None:
        assert self.model is not None
        cfg = self.cfg
        steps_per_epoch = -(-feats.shape[0] // cfg.batch_size)
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(cfg.epochs * steps_per_epoch, 0, cfg.lr_final_ratio))
        self.model.train()
        bar = tqdm(range(cfg.epochs), desc=f"{self.name} epochs", disable=not progress, unit="epoch")
        for _ in bar:
            perm = torch.randperm(feats.shape[0], generator=gen, device=self.device).cpu()
            for start in range(0, feats.shape[0], cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                clean = feats[idx].to(self.device)
                att = None if attention is None else attention[idx].to(self.device)
                fake, fake_labels = distort(clean, att, cfg.distortion, cfg.noise_std, gen)
                x = [clean, fake]
                y = [torch.zeros(clean.shape[:2], device=self.device), fake_labels]
                if fakes is not None:
                    pick = torch.randint(fakes[0].shape[0], (len(idx),), generator=gen, device=self.device).cpu()
                    x.append(fakes[0][pick].to(self.device))
                    y.append(fakes[1][pick].to(self.device))
                loss = F.binary_cross_entropy_with_logits(self.model(torch.cat(x)), torch.cat(y))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        log.info("%s: trained %d epochs, final loss %.4f", self.name, cfg.epochs, loss.item())

    def _score(self, batch: EmbeddingBatch) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.model is not None
        check_grid(self.grid, batch, self.name)
        logits = self.model(as_tensor(batch.patches, self.device))
        return top_mean(logits, self.cfg.top_k), logits

    def _state(self) -> dict[str, torch.Tensor]:
        assert self.model is not None
        return dict(self.model.state_dict())

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        self.grid = tuple(extra["grid"])  # type: ignore[assignment]
        self.model = self._build(int(extra["num_patches"]), int(extra["dim"]))
        self.model.load_state_dict(tensors)
        self.model.eval()

    def _manifest_extra(self) -> dict[str, Any]:
        assert self.model is not None
        _, n, d = self.model.pos.shape
        return {"grid": list(self.grid or ()), "num_patches": n, "dim": d}
