"""The original k-NNN (Nizan & Tal): neighbourhood eigenvectors, feature blocks, model persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamvad.config import NormalityConfig, ScoringConfig
from streamvad.normality import nnn
from streamvad.normality.model import NormalityModel
from streamvad.scoring.knn import Scorer, TokenScorer
from streamvad.types import EmbeddingBatch, FrameKey


def _scorer(train: np.ndarray, nn: int = 25, block: int = 5) -> nnn.NNNScorer:
    state = nnn.NNNState.fit(train, nn, block)
    return nnn.NNNScorer(state, torch.from_numpy(train), torch.device("cpu"))


def _score(scorer: nnn.NNNScorer, train: np.ndarray, queries: np.ndarray, k: int = 3) -> np.ndarray:
    """Scores [T, B] of token-major queries [T, B, D], with their k nearest rows found by brute force."""
    rows = np.linalg.norm(queries[:, :, None] - train[:, None], axis=-1).argsort(-1)[..., :k]
    return scorer.scores(torch.from_numpy(queries), torch.from_numpy(rows)).numpy()


def test_feature_blocks_group_correlated_features() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 500))
    noise = rng.normal(scale=0.05, size=(500, 4))
    sample = np.stack([a, b, b, a], axis=1) + noise  # features 0/3 and 1/2 move together
    blocks = nnn.feature_blocks(sample, 2)
    assert sorted(map(sorted, blocks.tolist())) == [[0, 3], [1, 2]]
    padded = nnn.feature_blocks(sample[:, :3], 2)  # 3 features in blocks of 2: the last is padded
    assert padded.shape == (2, 2) and (padded == -1).sum() == 1


def test_offsets_across_the_neighbourhood_score_higher_than_along_it() -> None:
    """Normal data varies along x only: a step off that line is anomalous, the same step along it is not
    (the nearest-neighbour distance alone cannot tell them apart)."""
    rng = np.random.default_rng(1)
    x = np.linspace(0, 10, 400)
    train = np.stack([x, rng.normal(scale=0.01, size=400)], axis=1)[None].astype(np.float32)  # [1, 400, 2]
    scorer = _scorer(train, nn=25, block=2)
    step = 0.3
    along = np.array([[[5.0 + step, 0.0]]], dtype=np.float32)
    across = np.array([[[5.0, step]]], dtype=np.float32)
    s_along, s_across = _score(scorer, train, along)[0, 0], _score(scorer, train, across)[0, 0]
    assert s_across > 5 * s_along


def test_scores_match_a_direct_computation() -> None:
    rng = np.random.default_rng(2)
    train = rng.normal(size=(2, 120, 7)).astype(np.float32)
    queries = rng.normal(size=(2, 5, 7)).astype(np.float32)
    scorer = _scorer(train, nn=10, block=3)
    got = _score(scorer, train, queries)
    blocks, hoods, floor = scorer.blocks.numpy(), scorer.neighbours.numpy(), scorer._floor.numpy()
    padded_train = np.concatenate([train, np.zeros((*train.shape[:2], 1), np.float32)], axis=-1)
    for t in range(2):
        for b in range(5):
            q = np.append(queries[t, b], 0.0)
            near = np.linalg.norm(queries[t, b] - train[t], axis=-1).argsort()[:3]
            per_neighbour = []
            for r in near:
                hood = padded_train[t, hoods[t, r]]
                total = 0.0
                for cols in blocks:
                    x = hood[:, cols]
                    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
                    sigma = np.maximum(np.sqrt(np.clip(values, 0, None)), floor[t])
                    total += (np.abs((q[cols] - padded_train[t, r, cols]) @ vectors) / sigma).sum()
                per_neighbour.append(total / 7)
            assert got[t, b] == pytest.approx(np.mean(per_neighbour), rel=1e-3)


def _fit(tmp_path: Path) -> NormalityModel:
    rng = np.random.default_rng(3)
    patches = rng.normal(size=(60, 4, 6)).astype(np.float32)
    cfg = NormalityConfig(k_min=2, k_max=3, k_candidates=2, silhouette_sample=30, hdbscan="none", chroma=False,
                          nnn_neighbours=8, nnn_block=3)
    model = NormalityModel.fit(patches.mean(1), patches, cfg, sources=[f"f{i}" for i in range(60)],
                               backbone={"name": "test", "grid": [2, 2], "dim": 6}, nnn=True)
    model.save(tmp_path / "model")
    return model


def test_model_keeps_its_neighbourhoods_and_builds_them_when_missing(tmp_path: Path) -> None:
    model = _fit(tmp_path)
    assert (tmp_path / "model" / nnn.NNN_FILE).is_file()
    loaded = NormalityModel.load(tmp_path / "model")
    assert loaded.nnn is None  # serving holds the neighbourhoods only once an nnn scorer asks for them
    np.testing.assert_array_equal(loaded.nnn_state().neighbours, model.nnn_state().neighbours)
    assert loaded.nnn is not None
    (tmp_path / "model" / nnn.NNN_FILE).unlink()  # a model fitted before the scorer existed
    older = NormalityModel.load(tmp_path / "model")
    assert older.nnn is None
    rng = np.random.default_rng(4)
    batch = EmbeddingBatch(keys=[FrameKey("cam", i, float(i)) for i in range(3)], global_=rng.normal(size=(3, 6)),
                           patches=rng.normal(size=(3, 4, 6)).astype(np.float32), grid=(2, 2))
    cfg = ScoringConfig(method="nnn", rule="topk", frame_threshold=1.0)
    fresh = [v.raw_score for v in Scorer(loaded, cfg).score(batch)]
    rebuilt = [v.raw_score for v in Scorer(older, cfg).score(batch)]
    assert fresh == pytest.approx(rebuilt)
    assert older.nnn is not None  # built on first use


def test_nnn_asks_the_search_for_more_neighbours_only_when_scored(tmp_path: Path) -> None:
    model = _fit(tmp_path)
    tokens = TokenScorer(model)
    rng = np.random.default_rng(5)
    g, p = rng.normal(size=(2, 6)).astype(np.float32), rng.normal(size=(2, 4, 6)).astype(np.float32)
    tokens.scores(g, p, "distance")
    assert tokens._last is not None and tokens._last[3].rows.shape[-1] == 1
    assert tokens._nnn is None
    out = tokens.scores_all(g, p, ("distance", "nnn"))
    assert tokens._last[3].rows.shape[-1] == model.config.nnn_k
    assert (out["nnn"].ratio > 0).all()
    searches = []
    real = tokens._search
    tokens._search = lambda q, k: searches.append(k) or real(q, k)  # type: ignore[method-assign]
    g2, p2 = g + 0.1, p + 0.1  # a new batch: once nnn was asked for, distance-then-nnn searches once
    tokens.scores(g2, p2, "distance")
    tokens.scores(g2, p2, "nnn")
    assert searches == [model.config.nnn_k]
