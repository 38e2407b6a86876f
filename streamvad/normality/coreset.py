"""Greedy k-center coresets (PatchCore's): a budget of rows that cover all of them.

Used three times: each motion cell keeps at most `memory_per_cell` normal velocities, a normality memory keeps
at most `normality.max_train_frames` whole frames, and each of its tokens keeps the rows that fit
`normality.memory_budget_mb`. Training frames of a video are near-duplicates, so a
quarter of Ped2's frames chosen this way score test clips as all of them do (AUROC 0.923 against 0.921 in a
prototype), while a worker streams a quarter of the memory per batch (see README, fleet capacity).
"""

from __future__ import annotations

import numpy as np
import torch


def k_center(points: np.ndarray, budget: int) -> np.ndarray:
    """Indices of `budget` rows of points [P, d] that cover all of them: each next row is the one furthest
    from those chosen, starting from the one nearest the mean, so the choice is deterministic."""
    if len(points) <= budget:
        return np.arange(len(points))
    return k_center_tokens(torch.from_numpy(np.ascontiguousarray(points))[None], budget)[0].numpy()


def k_center_tokens(points: torch.Tensor, budget: int) -> torch.Tensor:
    """`k_center` of every token at once: indices [T, budget] into the rows of points [T, P, d].

    One step picks every token's next row and updates all [T, P] distances with one batched product, so a
    per-token coreset of a whole camera model costs `budget` steps, not T x budget.
    """
    t, p, _ = points.shape
    budget = min(budget, p)
    sq = (points * points).sum(-1)  # [T, P]
    tokens = torch.arange(t)

    def dist_to(rows: torch.Tensor) -> torch.Tensor:
        centre = points[tokens, rows]  # [T, d]
        cross = torch.bmm(points, centre.unsqueeze(-1)).squeeze(-1)
        return (sq - 2 * cross + sq[tokens, rows].unsqueeze(1)).clamp_min(0)

    mean = points.mean(1, keepdim=True)
    chosen = torch.empty((t, budget), dtype=torch.int64)
    chosen[:, 0] = ((points - mean) ** 2).sum(-1).argmin(1)
    dist = dist_to(chosen[:, 0])
    for i in range(1, budget):
        chosen[:, i] = dist.argmax(1)
        dist = torch.minimum(dist, dist_to(chosen[:, i]))
    return chosen


def token_coreset(global_: np.ndarray, patches: np.ndarray, budget: int, seed: int = 0, dims: int = 64,
                  chunk: int = 256) -> np.ndarray:
    """Sorted frames [T, budget] whose vectors cover the rest, per token (token 0 global [Q, D], token i patch
    i - 1 of patches [Q, N, D], possibly an np.memmap read `chunk` frames at a time): PatchCore's greedy
    k-center on a seeded random projection to `dims` dimensions, which keeps distances in expectation and makes
    each step read a seventh of the vectors."""
    rng = np.random.default_rng(seed)
    proj = (rng.standard_normal((patches.shape[2], dims)) / np.sqrt(dims)).astype(np.float32)
    q, n, d = patches.shape
    parts = [(np.asarray(patches[lo : lo + chunk], dtype=np.float32).reshape(-1, d) @ proj).reshape(-1, n, dims)
             for lo in range(0, q, chunk)]  # one 2-D product per chunk: BLAS on every core
    tokens = np.ascontiguousarray(np.concatenate([(np.asarray(global_, dtype=np.float32) @ proj)[None],
                                                  np.concatenate(parts).transpose(1, 0, 2)]))  # token-major
    return np.sort(k_center_tokens(torch.from_numpy(tokens), budget).numpy(), axis=1)


def coreset_rows(global_: np.ndarray, patches: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """The token-major memory [T, M, D] float32 of the coreset `frames` [T, M] (see `token_coreset`)."""
    n = patches.shape[1]
    out = np.empty((n + 1, frames.shape[1], patches.shape[2]), dtype=np.float32)
    out[0] = np.asarray(global_, dtype=np.float32)[frames[0]]
    out[1:] = patches[frames[1:], np.arange(n)[:, None]]
    return out


def frame_coreset(patches: np.ndarray, budget: int, seed: int = 0, dims_per_patch: int = 16) -> np.ndarray:
    """Sorted indices of `budget` frames of patches [Q, N, D] that cover the others, patch map by patch map.

    Each patch is projected to `dims_per_patch` random directions first (one projection for every patch,
    which keeps squared frame distances in expectation), so that a frame is a few thousand numbers.
    """
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((patches.shape[2], dims_per_patch)).astype(np.float32) / np.sqrt(dims_per_patch)
    frames = (patches.astype(np.float32, copy=False) @ proj).reshape(len(patches), -1)
    return np.sort(k_center(frames, budget))
