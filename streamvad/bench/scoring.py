"""Scoring benchmark: the vectorised Scorer against the study's patch-by-patch ChromaDB queries.

Both paths run in one process on the same synthetic model, and their confidences are compared, so
the speed-up is measured on identical work: per token, find the nearest normal vector and its local
density, and turn the distance into a k-NNN confidence.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from streamvad.bench import environment
from streamvad.config import NormalityConfig, ScoringConfig
from streamvad.normality import chroma_store
from streamvad.normality.model import NormalityModel
from streamvad.scoring.knn import Scorer
from streamvad.types import EmbeddingBatch, FrameKey

log = logging.getLogger(__name__)

N_MODES = 4


def clustered_embeddings(
    n_frames: int,
    n_patches: int,
    dim: int,
    *,
    n_modes: int = N_MODES,
    spread: float = 0.3,
    seed: int = 0,
    frame_seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic "normal footage": global [Q, D] and patches [Q, N, D] float32.

    Each frame shows one of `n_modes` scene states; every token of a state has its own random centre
    (drawn from `seed`) and frames scatter around it with std `spread` (drawn from `frame_seed`,
    default `seed`), so each token is a Gaussian mixture with n_modes clusters, like a fixed
    camera's few recurring scenes. Same seed, other frame_seed: new frames of the same scenes.
    """
    centres = np.random.default_rng([seed, 0]).standard_normal((n_modes, n_patches + 1, dim), dtype=np.float32)
    rng = np.random.default_rng([seed if frame_seed is None else frame_seed, 1])
    modes = rng.integers(n_modes, size=n_frames)
    x = np.empty((n_frames, n_patches + 1, dim), dtype=np.float32)
    for i, mode in enumerate(modes):
        x[i] = centres[mode] + spread * rng.standard_normal((n_patches + 1, dim), dtype=np.float32)
    return x[:, 0], x[:, 1:]


def _batch(global_: np.ndarray, patches: np.ndarray, start: int, grid: tuple[int, int]) -> EmbeddingBatch:
    keys = [FrameKey("bench", start + i, float(start + i)) for i in range(len(global_))]
    return EmbeddingBatch(keys=keys, global_=global_, patches=patches, grid=grid)


def faithful_confidences(directory: Path, queries: np.ndarray, m: int) -> np.ndarray:
    """The study's path for token-major queries [B, T, D]: confidences [B, T].

    Per token and frame, one Chroma query for the nearest neighbour and its cluster, then a second
    query restricted to that cluster for the neighbour's m nearest fellow members, whose mean
    distance is the local density (Chroma's l2 distances are squared).
    """
    client = chroma_store.open_client(directory)
    colls = [chroma_store.collection(client, t) for t in range(queries.shape[1])]
    out = np.zeros(queries.shape[:2], dtype=np.float32)
    for b in range(queries.shape[0]):
        for t, coll in enumerate(colls):
            hit = coll.query(query_embeddings=[queries[b, t]], n_results=1, include=["metadatas", "embeddings",
                                                                                      "distances"])
            nn_id, d = hit["ids"][0][0], float(np.sqrt(hit["distances"][0][0]))
            fellows = coll.query(query_embeddings=[hit["embeddings"][0][0]], n_results=m + 1,
                                 where={"cluster": hit["metadatas"][0][0]["cluster"]}, include=["distances"])
            dists = [np.sqrt(v) for i, v in zip(fellows["ids"][0], fellows["distances"][0], strict=True)
                     if i != nn_id][:m]
            loc = float(np.mean(dists)) if dists else 0.0
            out[b, t] = (1.0 if d > 0 else 0.0) if loc == 0 else min(1.0, d / loc)
    return out


def _time_scorer(scorer: Scorer, warm_g: np.ndarray, warm_p: np.ndarray, q_global: np.ndarray,
                 q_patches: np.ndarray, batch: int, grid: tuple[int, int]) -> float:
    """ms per frame of `scorer` over all query frames in batches, after one warm-up batch."""
    scorer.score(_batch(warm_g, warm_p, 0, grid))
    t0 = time.perf_counter()
    for lo in range(0, len(q_global), batch):
        scorer.score(_batch(q_global[lo : lo + batch], q_patches[lo : lo + batch], lo, grid))
    return 1000 * (time.perf_counter() - t0) / len(q_global)


def run_scoring_bench(
    n_patches: int = 256,
    dim: int = 384,
    n_train: int = 2500,
    n_frames: int = 64,
    batch: int = 16,
    faithful_frames: int = 1,
    seed: int = 0,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Fit a synthetic model of the given size, then time both scoring paths on the same frames.

    Returns ms/frame of each path, the speed-up, the largest confidence difference between them and
    the machine. `workdir` keeps the fitted model (and its Chroma store); default a temp dir.
    """
    with tempfile.TemporaryDirectory(prefix="streamvad-bench-") as tmp:
        directory = Path(workdir) if workdir is not None else Path(tmp)
        side = int(np.sqrt(n_patches))
        grid = (side, side) if side * side == n_patches else (1, n_patches)
        cfg = NormalityConfig(k_min=N_MODES, k_max=N_MODES, k_candidates=1, hdbscan="none", index="dense",
                              chroma=True, seed=seed)
        t0 = time.perf_counter()
        global_, patches = clustered_embeddings(n_train, n_patches, dim, seed=seed)
        model = NormalityModel.fit(global_, patches, cfg, sources=[f"synthetic/{i}" for i in range(n_train)],
                                   backbone={"name": "synthetic", "grid": list(grid), "dim": dim}, progress=True)
        del global_, patches
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.save(directory, progress=True)
        save_s = time.perf_counter() - t0

        # test frames: the same scenes, a little noisier than training, so confidences spread over [0, 1]
        q_global, q_patches = clustered_embeddings(n_frames + batch, n_patches, dim, spread=0.33, seed=seed,
                                                  frame_seed=seed + 1)
        study = ScoringConfig(method="knnn", rule="majority")  # the path the study ran, patch by patch
        scorer = Scorer(model, study)
        warm_g, warm_p = q_global[:batch], q_patches[:batch]
        q_global, q_patches = q_global[batch:], q_patches[batch:]
        vec_ms = _time_scorer(scorer, warm_g, warm_p, q_global, q_patches, batch, grid)
        exact_2_ms = _time_scorer(scorer, warm_g, warm_p, q_global, q_patches, 2, grid)
        exact = scorer.tokens.scores(q_global, q_patches).conf
        indexed: dict[str, dict[str, Any]] = {}
        for index in ("hnsw", "projected"):  # the same memory behind each serving index
            model.config = model.config.model_copy(update={"index": index})
            model.rebuild_indexes()
            other = Scorer(model, study)
            conf = other.tokens.scores(q_global, q_patches).conf
            indexed[index] = {
                "ms_per_frame": round(_time_scorer(other, warm_g, warm_p, q_global, q_patches, batch, grid), 3),
                "ms_per_frame_batch_2": round(_time_scorer(other, warm_g, warm_p, q_global, q_patches, 2, grid), 3),
                "tokens_differing_from_exact_over_1e-3": int((np.abs(conf - exact) > 1e-3).sum()),
            }
            other.close()
        model.config = model.config.model_copy(update={"index": "dense"})
        model.rebuild_indexes()
        nnn_scorer = Scorer(model, ScoringConfig(method="nnn", rule="topk", frame_threshold=1.0))
        nnn_ms = _time_scorer(nnn_scorer, warm_g, warm_p, q_global, q_patches, batch, grid)
        nnn_scorer.close()

        nf = min(faithful_frames, n_frames)
        queries = np.concatenate([q_global[:nf, None], q_patches[:nf]], axis=1)
        t0 = time.perf_counter()
        faithful = np.concatenate([faithful_confidences(directory / "chroma", queries[i : i + 1], cfg.density_m)
                                   for i in tqdm(range(nf), desc="faithful", unit="frame")])
        faithful_ms = 1000 * (time.perf_counter() - t0) / nf
        vectorised = scorer.tokens.scores(q_global[:nf], q_patches[:nf]).conf
        scorer.close()
    diff = np.abs(vectorised - faithful)
    result = {
        "vectorised_ms_per_frame": round(vec_ms, 3),
        "faithful_ms_per_frame": round(faithful_ms, 3),
        "speedup": round(faithful_ms / vec_ms, 1),
        "vectorised_ms_per_frame_batch_2": round(exact_2_ms, 3),  # one camera's share of a per-camera batch
        "hnsw": indexed["hnsw"],
        "hnsw_speedup": round(faithful_ms / indexed["hnsw"]["ms_per_frame"], 1),
        "projected": indexed["projected"],
        "nnn_ms_per_frame": round(nnn_ms, 3),  # the original k-NNN (eigen-decompositions per batch)
        "max_abs_conf_diff": float(diff.max()),
        "tokens_differing_over_1e-3": int((diff > 1e-3).sum()),
        "tokens_compared": int(diff.size),
        "n_patches": n_patches,
        "dim": dim,
        "n_train": n_train,
        "n_frames": n_frames,
        "batch": batch,
        "faithful_frames": nf,
        "fit_s": round(fit_s, 2),
        "save_with_chroma_s": round(save_s, 2),
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "environment": environment(),
    }
    log.info("scoring bench: %s", result)
    return result
