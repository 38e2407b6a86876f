"""The appearance memory's frame coreset: whole frames chosen by greedy k-center, so a long enrolment keeps
a bounded memory that still covers every distinct view; motion keeps learning from every frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamvad.bench.throughput import fit_small_model
from streamvad.errors import ConfigError
from streamvad.normality.coreset import frame_coreset
from streamvad.normality.model import NormalityModel
from tests.test_worker import TEST_BACKBONE


def test_frame_coreset_keeps_one_frame_of_each_distinct_view() -> None:
    rng = np.random.default_rng(0)
    views = rng.normal(0, 1, (3, 12, 8)).astype(np.float32)  # three scenes' patch maps (12 patches, D 8)
    frames = np.concatenate([v + rng.normal(0, 0.01, (40, 12, 8)) for v in views]).astype(np.float32)
    kept = frame_coreset(frames, 3)
    assert sorted(k // 40 for k in kept) == [0, 1, 2]  # near-duplicates are not kept twice
    assert list(frame_coreset(frames, 3)) == list(kept)  # deterministic
    assert len(frame_coreset(frames, 500)) == 120


@pytest.mark.slow
def test_a_capped_memory_keeps_max_train_frames_and_motion_keeps_every_frame(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    from streamvad.config import NormalityConfig, StreamVADConfig
    from streamvad.offline.pipeline import clips_from_paths, fit

    full = fit_small_model(TEST_BACKBONE, tmp_path_factory.mktemp("full"), seconds=16, holdout=0.25)
    capped = full.parent.parent / "capped"
    cfg = StreamVADConfig(backbone=TEST_BACKBONE, normality=NormalityConfig(
        k_min=2, k_max=4, k_candidates=2, silhouette_sample=100, hdbscan="none", chroma=False,
        holdout_fraction=0.25, max_train_frames=12))
    fit(cfg, clips_from_paths([full.parent / "normal" / "normal.mp4"]), capped, sample_fps=4.0, progress=False)
    whole, small = NormalityModel.load(full / "normality"), NormalityModel.load(capped / "normality")
    assert whole.n_train == 48 and small.n_train == 12 and set(small.sources) <= set(whole.sources)
    assert (Path(capped / "motion" / "motion.npz").read_bytes() == Path(full / "motion" / "motion.npz").read_bytes())
    assert small.thresholds["distance/topk"] > 0


def test_each_token_keeps_its_own_coreset_chosen_in_one_vectorised_pass() -> None:
    """Token 0 sees three views in frames 0-9, 10-19 and 20-29; token 1 sees its own three at other frames.
    Each keeps one frame of each of *its* views, and the batched choice is the per-token one."""
    from streamvad.normality.coreset import coreset_rows, k_center, k_center_tokens, token_coreset

    rng = np.random.default_rng(0)
    views = rng.normal(0, 5, (2, 3, 8))
    which = np.stack([np.arange(30) // 10, (np.arange(30) % 3)])  # view of each frame, per token
    train = np.stack([views[t][which[t]] + rng.normal(0, 0.01, (30, 8)) for t in range(2)]).astype(np.float32)
    global_, patches = train[0], train[1:].transpose(1, 0, 2)  # as the fit gets them: global and one patch
    kept = token_coreset(global_, patches, 3, dims=8, chunk=7)
    assert kept.shape == (2, 3)
    assert [sorted(which[t][kept[t]]) for t in range(2)] == [[0, 1, 2], [0, 1, 2]]
    assert set(kept[0]) != set(kept[1])  # the tokens chose different frames
    np.testing.assert_array_equal(kept, token_coreset(global_, patches, 3, dims=8))  # seeded: the same again
    np.testing.assert_array_equal(coreset_rows(global_, patches, kept), np.take_along_axis(train, kept[..., None], 1))
    batched = k_center_tokens(torch.from_numpy(train), 5).numpy()
    assert [list(batched[t]) for t in range(2)] == [list(k_center(train[t], 5)) for t in range(2)]


def _fit_small(tmp_path: Path, budget: int | None, *, index: str = "dense", chroma: bool = False,
               ) -> tuple[NormalityModel, np.ndarray, np.ndarray]:
    from streamvad.config import NormalityConfig
    from tests.test_normality import BACKBONE, clustered_embeddings

    g, p = clustered_embeddings(80, 4, 8, n_modes=3, seed=1)
    cfg = NormalityConfig(k_min=2, k_max=4, k_candidates=2, silhouette_sample=50, hdbscan="none", chroma=chroma,
                          index=index)
    model = NormalityModel.fit(g, p, cfg, sources=[f"cam/{i}.jpg" for i in range(80)], backbone=BACKBONE,
                               max_bytes=budget)
    model.save(tmp_path)
    return model, g, p


def test_a_memory_budget_keeps_a_float16_coreset_per_token_that_serving_and_chroma_hold(tmp_path: Path) -> None:
    from streamvad.normality import chroma_store
    from streamvad.scoring.knn import TokenScorer

    budget = 5 * (2 * 8 + 16) * 20 + 100  # 5 tokens x 20 rows of a D-8 float16 memory, and a little over
    model, g, p = _fit_small(tmp_path / "m", budget, chroma=True)
    assert model.n_train == 20 and model.n_frames == 80 and model.train.dtype == np.float16
    assert model.frames is not None and model.frames.shape == (5, 20)
    assert 0 < model.serving_bytes <= budget + 1024  # .npy headers: a few hundred bytes per file
    loaded = NormalityModel.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.frames, model.frames)
    np.testing.assert_array_equal(loaded.train, model.train)
    # the served search is exact on the compact memory: the nearest of its rows, computed in float32
    queries = model.token_queries(g[:6], p[:6])
    nearest = np.linalg.norm(model.train.astype(np.float32)[None] - queries[:, :, None], axis=-1).min(-1)
    got = TokenScorer(loaded).scores(g[:6], p[:6], "distance").ratio * method_scale(loaded)
    np.testing.assert_allclose(got, nearest, rtol=1e-4, atol=1e-5)
    # Chroma keeps the coreset, each record naming its frame, and rebuilds the same memory
    coll = chroma_store.open_client(tmp_path / "m" / "chroma").get_collection("patch_001")
    rec = coll.get(ids=["patch_001-4"], include=["metadatas"])["metadatas"][0]
    assert coll.count() == 20 and rec["frame"] == model.frames[2, 4] and rec["source"] == f"cam/{rec['frame']}.jpg"
    rebuilt = NormalityModel.from_chroma(tmp_path / "m")
    np.testing.assert_array_equal(rebuilt.frames, model.frames)
    np.testing.assert_array_equal(rebuilt.train, model.train)


def test_hnsw_search_runs_on_the_compact_memory(tmp_path: Path) -> None:
    """An hnsw model's budget pays for its index too, and its search finds the compact memory's nearest rows."""
    from streamvad.scoring.knn import TokenScorer

    model, g, p = _fit_small(tmp_path / "m", 20 * 5 * ((2 * 8 + 16) + (4 * 8 + 8 * 16 + 16)), index="hnsw")
    loaded = NormalityModel.load(tmp_path / "m")
    assert model.n_train == 20 and loaded.indexes is not None and len(loaded.indexes) == 5
    queries = model.token_queries(g[:8], p[:8])
    nearest = np.linalg.norm(model.train.astype(np.float32)[None] - queries[:, :, None], axis=-1).min(-1)
    got = TokenScorer(loaded).scores(g[:8], p[:8], "distance").ratio * method_scale(loaded)
    np.testing.assert_allclose(got, nearest, rtol=1e-4, atol=1e-5)  # 20 rows: hnsw's search is exhaustive


def test_out_of_fold_search_of_a_coreset_leaves_out_the_rows_of_the_folds_frames(tmp_path: Path) -> None:
    """Calibrating a compact memory scores every training frame, kept or not, against the rows that came from
    other folds' frames: what a new clip would meet."""
    from streamvad.scoring.knn import Frames, TokenScorer

    model, g, p = _fit_small(tmp_path / "m", 2500)
    fold = np.arange(0, 40)
    tokens = TokenScorer(model)
    got = np.concatenate([c["distance"].ratio for c in tokens.out_of_fold(fold, 16, Frames(g, p))])
    train, rows = model.train.astype(np.float32), model.frame_of()
    queries = model.token_queries(g[fold], p[fold])
    expected = np.stack([[np.linalg.norm(train[t][~np.isin(rows[t], fold)] - queries[b, t], axis=-1).min()
                          for t in range(model.n_tokens)] for b in range(len(fold))])
    np.testing.assert_allclose(got * tokens.scales["distance"], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="needs the training frames"):
        next(tokens.out_of_fold(fold, 16))


def method_scale(model: NormalityModel) -> float:
    from streamvad.scoring.knn import method_scale as scale

    return scale(model, "distance")


@pytest.mark.slow
def test_fit_keeps_the_served_model_within_its_memory_budget_and_reports_each_stage(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fit --memory-budget-mb` on real EfficientNet-Lite0 features: the memory (motion included) is what the
    budget allows, a per-token coreset, and model.json and the CLI say how long each stage took."""
    import yaml

    from streamvad.cli import main
    from streamvad.datasets.synthetic import make_scene
    from streamvad.scoring.engine import ModelInfo, load_engine

    clip = make_scene(tmp_path / "clips", seconds=12, fps=10, size=(120, 160), seed=3, name="normal").path
    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump({"backbone": TEST_BACKBONE.model_dump(), "normality": {
        "k_min": 2, "k_max": 4, "k_candidates": 2, "silhouette_sample": 100, "hdbscan": "none", "chroma": False,
        "holdout_fraction": 0.25}}))
    budget = 1.0  # the global projection (1280 -> 112) and motion take 0.7 MiB of it
    assert main(["fit", str(clip), "--config", str(config), "--out", str(tmp_path / "m"), "--no-progress",
                 "--memory-budget-mb", str(budget)]) == 0
    out = capsys.readouterr().out
    report = ModelInfo.load(tmp_path / "m").fit
    assert set(report["seconds"]) == {"embed", "cluster", "hdbscan", "motion", "calibrate", "write"}
    assert 0 < report["serving_bytes"] <= budget * 2**20 and "; serving memory " in out and "cluster" in out
    model = NormalityModel.load(tmp_path / "m" / "normality")
    assert model.frames is not None and model.n_train < model.n_frames and model.train.dtype == np.float16
    assert model.thresholds["distance/topk"] > 0
    assert load_engine(tmp_path / "m").scorer is not None
    assert main(["fit", str(clip), "--config", str(config), "--out", str(tmp_path / "x"), "--no-progress",
                 "--memory-budget-mb", "-1"]) == 2
    assert "--memory-budget-mb: expected MiB >= 0" in capsys.readouterr().err
