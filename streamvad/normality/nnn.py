"""The original k-NNN (Nizan & Tal 2023): nearest neighbours of neighbours.

The study's k-NNN divides a distance by one number (the neighbour's local density). The original asks
instead whether the query moved along the directions in which the neighbour's own neighbourhood
varies: for each of the query's k nearest training vectors, the difference is projected on the
eigenvectors of that neighbour's neighbourhood (its `nn` nearest training vectors, itself included)
and each projection is divided by the spread (sqrt eigenvalue) along it. Features are split into
blocks of `block` correlated dims so each neighbourhood covariance is small and well conditioned
(25 points in 5 dims). Score = mean over neighbours and feature dims of |projection| / sigma.

Fitting stores only the neighbours-of-neighbours table [T, Q, nn] (int32) and the feature blocks;
the eigen-decompositions are computed when scoring, for just the (token, neighbour) pairs a batch
needs, deduplicated (consecutive frames of a video mostly share neighbours). Precomputing them all
would take [T, Q, D, block + 1] floats: 7.6 GB for a 330-patch model fitted on 2,220 frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamvad.errors import InputError
from streamvad.normality.kmeans import sq_dists
from streamvad.normality.tokens import chunk_size

log = logging.getLogger(__name__)

NNN_FILE = "nnn.npz"
# Spreads below this fraction of a token's median spread are raised to it: neighbourhoods of
# near-duplicate video frames have directions with almost no variance, and dividing by ~0 would
# let sensor noise along them outweigh every real difference.
SIGMA_FLOOR = 0.1


def feature_blocks(sample: np.ndarray, block: int) -> np.ndarray:
    """Feature indices [G, block] grouping correlated features (-1 pads the last block).

    Greedy: each block starts from the first unused feature and takes the `block - 1` unused
    features most correlated (in absolute value, on average) with the block so far.
    """
    d = sample.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.nan_to_num(np.abs(np.corrcoef(sample, rowvar=False)))
    if d == 1:
        corr = np.ones((1, 1))
    unused = np.ones(d, dtype=bool)
    groups: list[list[int]] = []
    for seed in range(d):
        if not unused[seed]:
            continue
        members = [seed]
        unused[seed] = False
        while len(members) < block and unused.any():
            affinity = np.where(unused, corr[members].mean(0), -1.0)
            best = int(affinity.argmax())
            members.append(best)
            unused[best] = False
        groups.append(members + [-1] * (block - len(members)))
    return np.asarray(groups, dtype=np.int64)


def neighbour_table(block: Callable[[int, int], np.ndarray], n_tokens: int, n_train: int, nn: int,
                    device: str = "cpu") -> np.ndarray:
    """[T, Q, nn] rows of each training vector's nn nearest training vectors of its token (itself first)."""
    nn = min(nn, n_train)
    out = np.empty((n_tokens, n_train, nn), dtype=np.int32)
    step = chunk_size(3 * 4 * n_train * n_train)
    for lo in range(0, n_tokens, step):
        hi = min(n_tokens, lo + step)
        x = torch.from_numpy(np.ascontiguousarray(block(lo, hi))).to(device)
        d = sq_dists(x, x)
        d.diagonal(dim1=1, dim2=2).fill_(-1.0)  # itself first even among exact duplicates
        out[lo:hi] = d.topk(nn, dim=-1, largest=False).indices.cpu().numpy()
    return out


@dataclass
class NNNState:
    """What the original k-NNN needs beyond the training vectors: neighbourhoods and feature blocks."""

    neighbours: np.ndarray  # [T, Q, nn] int32
    blocks: np.ndarray  # [G, block] int64 feature indices, -1 = padding

    @classmethod
    def fit(cls, train: np.ndarray, nn: int, block: int, *, sample: int = 4096, seed: int = 0,
            device: str = "cpu") -> NNNState:
        """From training vectors [T, Q, D]; blocks come from a sample of all tokens' vectors."""
        t, q, d = train.shape
        rng = np.random.default_rng(seed)
        picks = rng.choice(t * q, size=min(sample, t * q), replace=False)
        blocks = feature_blocks(train.reshape(t * q, d)[np.sort(picks)], min(block, d))
        neighbours = neighbour_table(lambda lo, hi: train[lo:hi], t, q, nn, device)
        return cls(neighbours=neighbours, blocks=blocks)

    def save(self, directory: Path) -> None:
        np.savez(directory / NNN_FILE, neighbours=self.neighbours, blocks=self.blocks)

    @classmethod
    def load(cls, path: Path, n_tokens: int, n_train: int, dim: int) -> NNNState:
        try:
            with np.load(path, allow_pickle=False) as z:
                state = cls(neighbours=z["neighbours"], blocks=z["blocks"])
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"{path}: cannot read the k-NNN neighbourhoods ({err}); the model is corrupt") from None
        real = state.blocks[state.blocks >= 0]
        if state.neighbours.shape[:2] != (n_tokens, n_train) or sorted(real.tolist()) != list(range(dim)):
            raise InputError(f"{path}: neighbourhoods {state.neighbours.shape} or feature blocks do not match "
                             f"the model's {n_tokens} tokens x {n_train} vectors of D {dim}; the model is corrupt")
        return state


class NNNScorer:
    """Original k-NNN scores for queries whose k nearest training rows are already known.

    Tensors live on `device`; `train` is the model's [T, Q, D] tensor (shared with the distance
    search), so this adds only the neighbour table and per-token spread floors.
    """

    def __init__(self, state: NNNState, train: torch.Tensor, device: torch.device) -> None:
        self.train = train
        self.device = device
        self.neighbours = torch.from_numpy(state.neighbours.astype(np.int64)).to(device)
        # the padded column D of a zero-extended vector fills the -1 slots of the last block
        self.blocks = torch.from_numpy(np.where(state.blocks < 0, train.shape[-1], state.blocks)).to(device)
        self._floor = self._sigma_floor()

    def _sigma_floor(self) -> torch.Tensor:
        """Per token: SIGMA_FLOOR x the median spread of the neighbourhoods of 64 training vectors."""
        t, q, nn = self.neighbours.shape
        rows = torch.linspace(0, q - 1, min(64, q), device=self.device).long()
        floor = torch.empty(t, dtype=self.train.dtype, device=self.device)
        step = chunk_size(4 * len(rows) * nn * self.blocks.numel(), 256 << 20)
        for lo in range(0, t, step):
            hi = min(t, lo + step)
            tok = torch.arange(lo, hi, device=self.device).repeat_interleave(len(rows))
            sigma, _ = self._eigen(tok, rows.repeat(hi - lo))
            floor[lo:hi] = sigma.reshape(hi - lo, -1).median(dim=1).values
        return SIGMA_FLOOR * floor.clamp_min(1e-12)

    def _blocked(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., G, block], zero in padded slots."""
        padded = torch.cat([x, x.new_zeros(*x.shape[:-1], 1)], dim=-1)
        return padded[..., self.blocks]

    def _eigen(self, tok: torch.Tensor, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma [P, G, b], eigenvectors [P, G, b, b]) of the neighbourhoods of training vectors (tok, row)."""
        hood = self.train[tok.unsqueeze(1), self.neighbours[tok, row]]  # [P, nn, D]
        x = self._blocked(hood - hood.mean(1, keepdim=True))  # [P, nn, G, b]
        cov = torch.einsum("pngi,pngj->pgij", x, x) / max(1, hood.shape[1] - 1)
        values, vectors = torch.linalg.eigh(cov)
        return values.clamp_min(0).sqrt(), vectors

    def scores(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Scores [T, B] for token-major queries [T, B, D] and their k nearest rows [T, B, k]."""
        t, b, k = rows.shape
        d = queries.shape[-1]
        g, blk = self.blocks.shape
        out = torch.empty(t, b, dtype=queries.dtype, device=self.device)
        step = chunk_size(4 * b * k * g * blk * (blk + 8 + self.neighbours.shape[-1]), 256 << 20)
        for lo in range(0, t, step):
            hi = min(t, lo + step)
            tok = torch.arange(lo, hi, device=self.device).view(-1, 1, 1).expand(-1, b, k)
            key = (tok * self.neighbours.shape[1] + rows[lo:hi]).reshape(-1)
            uniq, inverse = torch.unique(key, return_inverse=True)
            tok_u, row_u = uniq // self.neighbours.shape[1], uniq % self.neighbours.shape[1]
            sigma, vectors = self._eigen(tok_u, row_u)
            sigma = torch.maximum(sigma, self._floor[tok_u].view(-1, 1, 1))
            near = self.train[tok.reshape(-1), rows[lo:hi].reshape(-1)]  # [t*b*k, D]
            diff = self._blocked(queries[lo:hi].unsqueeze(2).expand(-1, -1, k, -1).reshape(-1, d) - near)
            proj = torch.einsum("pgi,pgil->pgl", diff, vectors[inverse]).abs() / sigma[inverse]
            out[lo:hi] = proj.sum((1, 2)).reshape(hi - lo, b, k).mean(-1) / d
        return out
