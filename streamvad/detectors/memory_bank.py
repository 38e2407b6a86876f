"""A patch memory bank: greedy coreset subsampling and exact 1-NN squared distances, in torch.

The coreset (PatchCore's greedy k-center) keeps the bank small while covering the feature space:
each step adds the point farthest from everything picked so far, so rare normal patterns survive
subsampling where random sampling would drop them. Distances run on a random projection to a few
dims (Johnson-Lindenstrauss) because only their ranking matters.
"""

from __future__ import annotations

import math

import torch


def greedy_coreset(
    features: torch.Tensor, count: int, *, projection_dim: int = 128, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices of `count` rows of [M, D] chosen by greedy k-center (farthest-point) selection."""
    m, d = features.shape
    if count >= m:
        return torch.arange(m, device=features.device)
    z = features
    if d > projection_dim:
        proj = torch.randn(d, projection_dim, generator=generator, device=features.device,
                           dtype=features.dtype) / math.sqrt(projection_dim)
        z = features @ proj
    z_sq = (z**2).sum(dim=1)
    chosen = torch.empty(count, dtype=torch.long, device=features.device)
    chosen[0] = torch.randint(m, (1,), generator=generator, device=features.device)
    min_dist = torch.full_like(z_sq, float("inf"))
    for i in range(count):
        if i:
            chosen[i] = torch.argmax(min_dist)
        centre = z[chosen[i]]
        # |z - c|^2 as one matrix-vector product: no [M, d] temporary per step
        min_dist = torch.minimum(min_dist, z_sq - 2.0 * (z @ centre) + z_sq[chosen[i]])
    return chosen


def nearest_sqdist(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Squared L2 distance of each query row [Q, D] to its nearest bank row [M, D], in blocks.

    Blocks of `chunk` x `chunk` keep peak memory bounded for large banks; |q|^2 - 2 q.b + |b|^2
    turns the search into matrix products.
    """
    out = torch.empty(queries.shape[0], device=queries.device, dtype=queries.dtype)
    bank_sq = (bank**2).sum(dim=1)
    for qs in range(0, queries.shape[0], chunk):
        q = queries[qs : qs + chunk]
        q_sq = (q**2).sum(dim=1, keepdim=True)
        best = torch.full((q.shape[0],), float("inf"), device=q.device, dtype=q.dtype)
        for bs in range(0, bank.shape[0], chunk):
            b = bank[bs : bs + chunk]
            dist = q_sq - 2.0 * q @ b.T + bank_sq[bs : bs + chunk]
            best = torch.minimum(best, dist.min(dim=1).values)
        out[qs : qs + chunk] = best.clamp_min(0.0)
    return out
