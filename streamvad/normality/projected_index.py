"""Projected search: a per-token PCA sketch of the memory picks candidates, exact distances rank them.

Dense search reads the whole memory for every batch: [T, M, D] float16, 570 MB for a Ped2-sized model
(331 tokens x 2,000 rows x 432). One model shared by 16 cameras reads it once for 16 frames; 16 cameras on
16 models read 16 memories for 16 frames, and a CPU worker becomes memory-bound (README, fleet mode).
This index keeps, per token, each row's coordinates on the token's 63 leading principal components plus
the norm of what is left (64 float32 values: 3.4x fewer bytes than the float16 rows, and no conversion
before the matmul). Distances between those sketches rank the memory; the best `CANDIDATES` rows per query
are then ranked by their exact distance, read from the memory itself. Appending the residual norm makes the
sketch distance a lower bound that is tight when the residuals are alike
(|x - q|^2 >= |P(x - q)|^2 + (|r_x| - |r_q|)^2), so the true nearest row is almost always a candidate: 99.3%
of Ped2 patch queries (tools/projected_recall.py, README); a miss picks the nearest candidate instead, whose
distance is still exact. Unlike hnswlib it adds 30% to the memory, not 2x.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamvad.errors import InputError
from streamvad.normality.knnn import gather_dists
from streamvad.normality.tokens import chunk_size

FILE = "projected.npz"
DIMS = 64  # sketch values per row: DIMS - 1 principal components and the residual norm
SAMPLE = 512  # rows per token the components are fitted on: enough for 63 of them, cheap at any memory size
CANDIDATES = 16  # rows per query ranked by exact distance


@dataclass
class ProjectedIndex:
    """Per-token sketches of a memory [T, M, D]; tensors, so a scorer moves them to its device once."""

    mean: torch.Tensor  # [T, 1, D] float32
    basis: torch.Tensor  # [T, D, C] float32, orthonormal columns (C = min(DIMS - 1, D))
    rows: torch.Tensor  # [T, C + 1, M] float32: each row's components and residual norm, column-wise
    sq: torch.Tensor  # [T, 1, M] float32: squared norms of `rows`' columns

    @classmethod
    def build(cls, block: Callable[[int, int], np.ndarray], n_tokens: int, n_train: int, dim: int,
              seed: int = 0) -> ProjectedIndex:
        """The index of the memory `block(lo, hi)` yields as float32 [t, M, D], tokens in chunks."""
        sample = torch.from_numpy(np.random.default_rng(seed).permutation(n_train)[:SAMPLE])
        comps = min(DIMS - 1, dim)
        parts = []
        step = chunk_size(4 * n_train * (dim + DIMS) + 4 * dim * dim, 256 << 20)
        for lo in range(0, n_tokens, step):
            x = torch.from_numpy(block(lo, min(n_tokens, lo + step)))
            mean = x[:, sample].mean(1, keepdim=True)
            centred = x[:, sample] - mean
            # the leading eigenvectors of each token's [D, D] scatter, largest first
            basis = torch.linalg.eigh(centred.transpose(1, 2) @ centred).eigenvectors[..., -comps:].flip(-1)
            parts.append((mean, basis, _sketch(x - mean, basis).transpose(1, 2).contiguous()))
        mean, basis, rows = (torch.cat(p) for p in zip(*parts, strict=True))
        return cls(mean, basis.contiguous(), rows, (rows**2).sum(1, keepdim=True))

    def to(self, device: torch.device) -> ProjectedIndex:
        return ProjectedIndex(self.mean.to(device), self.basis.to(device), self.rows.to(device), self.sq.to(device))

    def nearest(self, train: torch.Tensor, q: torch.Tensor, k: int = 1) -> torch.Tensor:
        """Rows of the k nearest training vectors [T, B, k], nearest first, for queries q [T, B, D] float32:
        the k of each query's candidates nearest by exact distance to the memory `train` [T, M, D]."""
        n_train, batch = self.rows.shape[-1], q.shape[1]
        pick = min(n_train, max(CANDIDATES, k))
        step = chunk_size(4 * (n_train * (batch + 2 * DIMS) + batch * pick * q.shape[2]), 64 << 20)
        out = []
        for lo in range(0, q.shape[0], step):
            hi = lo + step
            sketch = _sketch(q[lo:hi] - self.mean[lo:hi], self.basis[lo:hi])
            # ||sketch_q||^2 is the same for every candidate, so ranking needs only ||s||^2 - 2 s.sketch_q
            approx = torch.baddbmm(self.sq[lo:hi], sketch, self.rows[lo:hi], alpha=-2.0)
            candidates = approx.topk(pick, dim=-1, largest=False, sorted=False).indices
            exact = gather_dists(train[lo:hi], candidates, q[lo:hi])
            out.append(candidates.gather(2, exact.topk(k, dim=-1, largest=False).indices))
        return torch.cat(out)

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean.numpy(), basis=self.basis.numpy(), rows=self.rows.numpy(), sq=self.sq.numpy())

    @classmethod
    def load(cls, path: Path, n_tokens: int, n_train: int, dim: int) -> ProjectedIndex:
        """The saved index, checked against the memory's shape; InputError (one line) when missing or corrupt."""
        comps = min(DIMS - 1, dim)
        shapes = {"mean": (n_tokens, 1, dim), "basis": (n_tokens, dim, comps), "rows": (n_tokens, comps + 1, n_train),
                  "sq": (n_tokens, 1, n_train)}
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in shapes}
        except (OSError, ValueError, KeyError, EOFError) as err:
            raise InputError(f"{path}: not a readable projected index ({err}); refit the model or rebuild it "
                             "from Chroma") from None
        for name, shape in shapes.items():
            if arrays[name].shape != shape or arrays[name].dtype.kind != "f" or not np.isfinite(arrays[name]).all():
                raise InputError(f"{path}: {name} is not finite floats of shape {shape}; the index is corrupt, "
                                 "refit the model or rebuild it from Chroma")
        return cls(**{name: torch.from_numpy(a) for name, a in arrays.items()})


def _sketch(centred: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Centred vectors [t, n, D] -> their sketches [t, n, C + 1]: components, then the residual norm."""
    comps = torch.bmm(centred, basis)
    residual = ((centred**2).sum(-1, keepdim=True) - (comps**2).sum(-1, keepdim=True)).clamp_min(0).sqrt()
    return torch.cat([comps, residual], -1)

