"""Scorer: vectorised all-patch scoring against a naive per-patch loop, rules, mask, thresholds, bench."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from streamvad.bench.scoring import clustered_embeddings, run_scoring_bench
from streamvad.config import NormalityConfig, ScoringConfig
from streamvad.errors import ConfigError, ModelMismatchError
from streamvad.normality.model import NormalityModel
from streamvad.scoring.knn import Scorer, calibrate
from streamvad.types import EmbeddingBatch, FrameKey, Verdict

N, D, Q, B = 16, 8, 80, 6
BACKBONE = {"name": "tiny", "grid": [4, 4], "dim": D}


def fit(cfg: NormalityConfig | None = None) -> NormalityModel:
    g, p = clustered_embeddings(Q, N, D, n_modes=3, seed=1)
    cfg = cfg or NormalityConfig(k_min=2, k_max=6, k_candidates=5, silhouette_sample=60, hdbscan="none",
                                 chroma=False)
    return NormalityModel.fit(g, p, cfg, sources=[str(i) for i in range(Q)], backbone=BACKBONE, nnn=True)


def study(**overrides: object) -> ScoringConfig:
    """A scoring config on the study's k-NNN majority vote unless the test says otherwise."""
    return ScoringConfig.model_validate({"method": "knnn", "rule": "majority", **overrides})

@pytest.fixture(scope="module")
def model() -> NormalityModel:
    return fit()


def frames(spread: float = 0.4, seed: int = 9, b: int = B) -> EmbeddingBatch:
    """Same scenes as training, noisier, so confidences spread over (0, 1]."""
    g, p = clustered_embeddings(b, N, D, n_modes=3, spread=spread, seed=1, frame_seed=seed)
    return EmbeddingBatch([FrameKey("cam", i, i / 4) for i in range(b)], g, p, (4, 4))


def naive_confidences(model: NormalityModel, batch: EmbeddingBatch) -> np.ndarray:
    """The study's definition, one token at a time: [B, T] confidences."""
    out = np.zeros((len(batch), model.n_tokens))
    for b in range(len(batch)):
        tokens = [batch.global_[b], *batch.patches[b]]
        for t, q in enumerate(tokens):
            dists = np.linalg.norm(model.train[t].astype(np.float64) - q, axis=1)
            nn = int(dists.argmin())
            loc = float(model.loc_dens[t, nn])
            out[b, t] = (1.0 if dists[nn] > 0 else 0.0) if loc == 0 else min(1.0, dists[nn] / loc)
    return out


def score(model: NormalityModel, batch: EmbeddingBatch, **cfg: object) -> list[Verdict]:
    mask = cfg.pop("mask", None)
    return Scorer(model, study(**cfg), mask=mask).score(batch)  # type: ignore[arg-type]


def test_scorer_equals_naive_per_patch_loop(model: NormalityModel) -> None:
    batch = frames()
    ref = naive_confidences(model, batch)
    assert 0.05 < ref[:, 1:].mean() < 0.95  # the data exercises both capped and uncapped values
    verdicts = score(model, batch, patch_threshold=0.7)
    for v, r in zip(verdicts, ref, strict=True):
        np.testing.assert_allclose(v.patch_confidences, r[1:], atol=1e-5)
        assert v.patch_confidences.dtype == np.float32 and v.heatmap.shape == (4, 4)
        assert v.global_confidence == pytest.approx(r[0], abs=1e-5)
        unsafe = int((r[1:] > 0.7).sum())
        assert v.unsafe_patches == unsafe
        assert v.anomalous == (unsafe >= N - unsafe)
        assert v.decided_by == "knnn/majority@0.70"
    top = math.ceil(0.25 * N)
    for v, r in zip(score(model, batch, rule="topk", topk_ratio=0.25, frame_threshold=0.5), ref, strict=True):
        assert v.score == pytest.approx(np.sort(r[1:])[::-1][:top].mean(), abs=1e-5)
    for v, r in zip(score(model, batch, rule="any_k", any_k=3), ref, strict=True):
        assert v.score == pytest.approx(np.sort(r[1:])[::-1][2], abs=1e-5)
        assert v.anomalous == ((r[1:] > 0.8).sum() >= 3)
    for v, r in zip(score(model, batch, rule="global", frame_threshold=0.5), ref, strict=True):
        assert v.score == pytest.approx(r[0], abs=1e-5)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9, 1.5])
def test_majority_vote_is_median_threshold(model: NormalityModel, threshold: float) -> None:
    mask = np.ones(N, dtype=bool)
    mask[5] = False  # 15 patches: the upper median is the median
    for v in score(model, frames(spread=0.45), mask=mask, patch_threshold=threshold):
        inside = v.patch_confidences[mask]
        assert v.score == pytest.approx(float(np.median(inside)), abs=1e-6)
        assert v.anomalous == (v.unsafe_patches >= 15 - v.unsafe_patches)
        assert v.anomalous == (v.raw_score > threshold)


def test_mask_excludes_patches_from_heatmap_and_vote(model: NormalityModel) -> None:
    batch = frames()
    batch.patches[:, :3] += 50.0  # three patches far from anything normal
    full = score(model, batch, rule="any_k", any_k=1)
    assert all(v.anomalous and (v.patch_confidences[:3] == 1.0).all() for v in full)
    mask = np.ones(N, dtype=bool)
    mask[:3] = False
    base = Scorer(model, study(rule="any_k", any_k=1, patch_threshold=10.0))
    camera = base.with_mask(mask)
    assert camera.tokens is base.tokens  # one copy of the training tensors for all cameras
    masked = camera.score(batch)
    for v, f in zip(masked, full, strict=True):
        assert (v.patch_confidences[:3] == 0.0).all()
        np.testing.assert_array_equal(v.patch_confidences[3:], f.patch_confidences[3:])
        assert v.unsafe_patches == 0 and not v.anomalous


def test_save_load_and_hnsw_give_identical_scores(tmp_path: Path) -> None:
    dense = fit()
    dense.save(tmp_path / "dense")
    loaded = NormalityModel.load(tmp_path / "dense")
    hnsw = fit(NormalityConfig(k_min=2, k_max=6, k_candidates=5, silhouette_sample=60, hdbscan="none",
                               chroma=False, index="hnsw"))
    batch = frames()
    ref = score(dense, batch)
    for other in (score(loaded, batch), score(hnsw, batch)):
        for a, b in zip(ref, other, strict=True):
            np.testing.assert_array_equal(a.patch_confidences, b.patch_confidences)
            assert (a.score, a.raw_score, a.anomalous) == (b.score, b.raw_score, b.anomalous)


def test_calibrated_thresholds_come_from_normal_holdout(model: NormalityModel) -> None:
    cfg = study(calibration_quantile=0.9)
    holdout = frames(spread=0.35, seed=3, b=40)
    thresholds = calibrate(model, holdout.global_, holdout.patches, cfg).thresholds
    rules = ("majority", "topk", "global", "any_k")
    methods = ("knnn", "distance", "nnn")
    assert set(thresholds) == {f"{m}/{r}" for m in methods for r in rules} | {"distance/scale", "nnn/scale"}
    model.set_thresholds(thresholds, replace=True)
    for method in methods:
        for rule in ("majority", "topk", "global"):
            scorer = Scorer(model, study(method=method, rule=rule))
            verdicts = scorer.score(holdout)
            raws = np.array([v.raw_score for v in verdicts])
            assert scorer.threshold == pytest.approx(np.quantile(raws, 0.9))
            assert verdicts[0].decided_by == f"{method}/{rule}@{scorer.threshold:.2f}"
            assert np.mean([v.anomalous for v in verdicts]) == pytest.approx(0.1, abs=0.03)
    # the distance heatmap is calibrated too: about (1 - q) of held-out normal patches read as 1
    heat = np.stack([v.patch_confidences for v in Scorer(model, study(method="distance")).score(holdout)])
    assert np.mean(heat >= 1.0) == pytest.approx(0.1, abs=0.02)
    # an explicit frame threshold wins over the calibrated one
    assert Scorer(model, study(frame_threshold=0.42)).threshold == 0.42
    model.set_thresholds({}, replace=True)


def test_out_of_fold_calibration_scores_training_clips_as_new_footage(model: NormalityModel) -> None:
    """A training frame scored against the memory without its fold gets exactly the distance a model
    fitted without that fold gives it, so the folds' thresholds are those of new footage."""
    from streamvad.scoring.folds import clip_folds
    from streamvad.scoring.knn import TokenScorer

    clip_ids = np.arange(Q) // 20  # four "clips" of 20 frames
    folds = [np.flatnonzero(f) for f in clip_folds(clip_ids, 2)]
    assert [sorted(set(clip_ids[f])) for f in folds] == [[0, 2], [1, 3]]
    tokens = TokenScorer(model)
    oof_top = []
    for rows in folds:
        rest = np.setdiff1d(np.arange(Q), rows)
        chunks = tokens.out_of_fold(rows, chunk=5)  # several chunks of one fold, one blocked memory
        oof = np.concatenate([c["distance"].ratio for c in chunks]) * tokens.scales["distance"]
        train = model.train.astype(np.float32)  # the float16 memory, widened as the search widens it
        expected = np.stack([np.linalg.norm(train[:, rest] - train[:, [r]], axis=-1).min(-1) for r in rows])
        np.testing.assert_allclose(oof, expected, rtol=1e-4, atol=1e-4)
        oof_top.append(expected[:, 1:].max(1))  # topk of 5% of 16 patches is the largest one
    cfg = study(method="distance", rule="topk", calibration_quantile=0.9)
    holdout = frames(spread=0.35, seed=3, b=8)
    held = tokens.scores(holdout.global_, holdout.patches, "distance").ratio * tokens.scales["distance"]
    calibration = calibrate(model, holdout.global_, holdout.patches, cfg, folds=folds)
    crossed = calibration.thresholds
    # the threshold is cut from the pooled hold-out and out-of-fold scores, in raw distance units
    pooled = np.concatenate([held[:, 1:].max(1), *oof_top])
    assert crossed["distance/topk"] * crossed["distance/scale"] == pytest.approx(np.quantile(pooled, 0.9), rel=1e-4)
    # and each frame's score on the threshold's unit scale, hold-out first, then fold by fold (what fusion
    # with motion calibrates its own threshold on)
    np.testing.assert_allclose(calibration.unit_scores["distance/topk"], pooled / np.quantile(pooled, 0.9), rtol=1e-4)
    # nnn and hdbscan keep their hold-out thresholds: their fitted state has seen the folds
    assert crossed["nnn/topk"] == calibrate(model, holdout.global_, holdout.patches, cfg).thresholds["nnn/topk"]
    with pytest.raises(ConfigError, match="hold-out set is empty"):
        calibrate(model, holdout.global_[:0], holdout.patches[:0], cfg)
    assert "distance/topk" in calibrate(model, holdout.global_[:0], holdout.patches[:0], cfg, folds=folds).thresholds


def test_hdbscan_method_scores_global_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = fit(NormalityConfig(k_min=3, k_max=3, hdbscan="global", hdbscan_min_cluster_size=5,
                                hdbscan_min_samples=3, chroma=False))
    batch = frames()
    batch.global_[0] += 50.0
    verdicts = score(model, batch, method="hdbscan", rule="global", frame_threshold=0.9)
    assert verdicts[0].global_confidence == 1.0 and verdicts[0].anomalous
    assert all(0.0 <= v.score <= 1.0 for v in verdicts)
    assert set(calibrate(model, batch.global_, batch.patches, study()).thresholds) >= {"hdbscan/global",
                                                                                   "knnn/majority"}
    with pytest.raises(ConfigError, match="needs HDBSCAN on every token"):
        Scorer(model, study(method="hdbscan", rule="majority"))
    batch.global_[:] += 50.0  # a hold-out that is all HDBSCAN noise: the threshold can never be exceeded
    with caplog.at_level(logging.WARNING, logger="streamvad.scoring.knn"):
        assert calibrate(model, batch.global_, batch.patches, study()).thresholds["hdbscan/global"] == 1.0
    assert "hdbscan/global threshold is 1.0" in caplog.text and "can never flag a frame" in caplog.text


def test_bad_settings_and_inputs_are_one_line_errors(model: NormalityModel) -> None:
    with pytest.raises(ConfigError, match="needs HDBSCAN on the global token"):
        Scorer(model, study(method="hdbscan", rule="global"))
    with pytest.raises(ConfigError, match="rule topk needs a frame threshold"):
        Scorer(model, study(rule="topk"))
    with pytest.raises(ConfigError, match="excludes every patch"):
        Scorer(model, study(), mask=np.zeros(N, dtype=bool))
    with pytest.raises(ConfigError, match="any_k: 20 exceeds"):
        Scorer(model, study(rule="any_k", any_k=20))
    g, p = clustered_embeddings(2, N, D + 1)
    with pytest.raises(ModelMismatchError, match="D 9"):
        Scorer(model, study()).score(EmbeddingBatch([FrameKey("c", i, 0.0) for i in range(2)], g, p, (4, 4)))


def test_scoring_bench_runs_and_paths_agree(tmp_path: Path) -> None:
    result = run_scoring_bench(n_patches=4, dim=8, n_train=60, n_frames=4, batch=2, faithful_frames=1,
                               workdir=tmp_path)
    assert result["speedup"] > 1
    assert result["max_abs_conf_diff"] < 1e-4
    assert result["tokens_compared"] == 5 and result["n_patches"] == 4
    assert result["nnn_ms_per_frame"] > 0
    for index in ("hnsw", "projected"):  # a small memory, and 8 dims the sketch holds whole: both find every nearest
        assert result[index]["tokens_differing_from_exact_over_1e-3"] == 0 and result[index]["ms_per_frame"] > 0
    assert (tmp_path / "manifest.json").is_file()


def test_distance_method_ranks_by_nearest_neighbour_distance(model: NormalityModel) -> None:
    """method distance: the per-patch ratio is the raw nearest-neighbour distance over one model-wide scale."""
    batch = frames(spread=0.5, seed=7, b=6)
    knnn = Scorer(model, study(method="knnn", rule="topk", frame_threshold=1.0)).tokens
    dist = knnn.scores(batch.global_, batch.patches, "distance")
    queries = model.token_queries(batch.global_, batch.patches)
    d = np.sqrt(((queries[:, :, None, :] - model.train[None]) ** 2).sum(-1)).min(-1)  # [B, T]
    scale = dist.ratio / np.maximum(d, 1e-12)
    np.testing.assert_allclose(scale, scale.flat[0], rtol=1e-4)  # one scale for every token and frame
    np.testing.assert_allclose(dist.conf, np.minimum(dist.ratio, 1.0))


def test_rules_sharing_a_token_scorer_search_each_batch_once(model: NormalityModel,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    base = Scorer(model, study(rule="majority"))
    other = Scorer(model, study(rule="any_k"), tokens=base.tokens)
    searches = []
    real = base.tokens._search
    monkeypatch.setattr(base.tokens, "_search", lambda q, k: searches.append(k) or real(q, k))
    batch = frames(seed=21)
    shared = [v.score for v in base.score(batch)] + [v.score for v in other.score(batch)]
    assert len(searches) == 1
    alone = [v.score for v in Scorer(model, study(rule="any_k")).score(batch)]
    assert shared[len(alone):] == alone
    base.score(frames(seed=22))  # a new batch is searched again
    assert len(searches) == 2
