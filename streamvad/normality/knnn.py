"""k-NNN confidence as in the study: distance to the nearest normal vector, relative to how dense
the normal data is around that neighbour.

Local density is precomputed for every training vector at fit time (mean distance to its m nearest
neighbours inside its own k-Means cluster), so serving needs only one 1-NN query per token instead
of the study's second, cluster-restricted query.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from streamvad.normality.kmeans import sq_dists
from streamvad.normality.tokens import chunk_size


def gather_dists(x: torch.Tensor, rows: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Exact ||queries[t, b] - x[t, rows[t, b, j]]|| for rows [T, B, J]: [T, B, J].

    Matmul-expanded distances lose precision for near-duplicates (a true 0 can come out as 1e-3),
    so neighbours are picked with the fast formula and their distances recomputed directly.
    """
    t, b, j = rows.shape
    picked = x[torch.arange(t, device=x.device).unsqueeze(1), rows.reshape(t, b * j)].reshape(t, b, j, -1)
    return (picked - queries.unsqueeze(2)).norm(dim=-1)


def local_density_block(x: torch.Tensor, labels: torch.Tensor, m: int) -> torch.Tensor:
    """Local density [T, Q] of every vector of x [T, Q, D] given its k-Means labels [T, Q].

    Mean distance to its m nearest neighbours in the same cluster (fewer if the cluster is smaller,
    0 for a singleton).
    """
    q = x.shape[1]
    m = min(m, q - 1)
    if m < 1:
        return torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)
    d = sq_dists(x, x)
    d.masked_fill_(labels.unsqueeze(2) != labels.unsqueeze(1), float("inf"))
    d.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    near = d.topk(m, dim=-1, largest=False)
    valid = torch.isfinite(near.values)
    exact = gather_dists(x, near.indices, x).masked_fill_(~valid, 0.0)
    return exact.sum(-1) / valid.sum(-1).clamp_min(1)


def local_density(
    block: Callable[[int, int], np.ndarray], labels: np.ndarray, m: int, device: str = "cpu"
) -> np.ndarray:
    """Local density [T, Q] for every token, in chunks that keep the [t, Q, Q] distances bounded."""
    n_tokens, q = labels.shape
    step = chunk_size(3 * 4 * q * q)
    out = np.zeros((n_tokens, q), dtype=np.float32)
    for start in range(0, n_tokens, step):
        stop = min(n_tokens, start + step)
        x = torch.from_numpy(block(start, stop)).to(device)
        lab = torch.from_numpy(labels[start:stop].astype(np.int64)).to(device)
        out[start:stop] = local_density_block(x, lab, m).cpu().numpy()
    return out


def density_floor(loc_dens: np.ndarray) -> np.ndarray:
    """Per-token smallest positive local density [T] (1 where there is none).

    Used only to keep the uncapped ratio finite where loc_dens is 0; see `knnn_confidence`.
    """
    pos = np.where(loc_dens > 0, loc_dens, np.inf).min(axis=1)
    return np.where(np.isfinite(pos), pos, 1.0).astype(np.float32)


def knnn_confidence(
    d: torch.Tensor, loc: torch.Tensor, floor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, uncapped ratio) for distances d to the nearest neighbour whose density is loc.

    confidence = min(1, d / loc); 1 when loc == 0 and d > 0; 0 when d == 0. The uncapped ratio is
    d / loc, kept for ranking because confidences tie at 1; where loc == 0 it is d / floor (the
    token's smallest positive density) but at least 1, so ratio >= 1 exactly when confidence == 1.
    `floor` broadcasts against d (e.g. [T, 1] for d [T, B]).
    """
    zero = loc <= 0
    ratio = d / torch.where(zero, floor, loc)
    ratio = torch.where(zero, ratio.clamp_min(1.0), ratio)
    ratio = torch.where(d > 0, ratio, torch.zeros_like(ratio))
    return ratio.clamp(max=1.0), ratio
