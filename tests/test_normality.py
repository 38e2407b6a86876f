"""Normality model: k-means/silhouette, local density, k-NNN formula, HDBSCAN, hnsw and projected indexes,
persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, silhouette_score

from streamvad.bench.scoring import clustered_embeddings
from streamvad.config import NormalityConfig
from streamvad.errors import InputError, ModelMismatchError
from streamvad.normality import chroma_store, hdbscan_, hnsw_index, kmeans
from streamvad.normality.knnn import density_floor, knnn_confidence, local_density_block
from streamvad.normality.model import NormalityModel
from streamvad.normality.projected_index import FILE as PROJECTED_FILE
from streamvad.normality.projected_index import ProjectedIndex
from streamvad.scoring.knn import TokenScorer

BACKBONE = {"name": "tiny", "model": "test/tiny", "fingerprint": "abc", "image_size": [32, 32], "grid": [2, 2],
            "dim": 8}


def blobs(n_blobs: int, n: int = 240, dim: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (n_blobs, dim))
    truth = np.arange(n) % n_blobs
    return (centres[truth] + rng.normal(0, 0.3, (n, dim))).astype(np.float32), truth


def small_model(cfg: NormalityConfig | None = None, q: int = 60) -> NormalityModel:
    g, p = clustered_embeddings(q, 4, 8, n_modes=3, seed=1)
    cfg = cfg or NormalityConfig(k_min=2, k_max=5, k_candidates=4, silhouette_sample=50, hdbscan="none")
    return NormalityModel.fit(g, p, cfg, sources=[f"cam/{i}.jpg" for i in range(q)], backbone=BACKBONE)


def test_kmeans_recovers_blobs_and_silhouette_picks_true_k() -> None:
    x3, t3 = blobs(3, seed=1)
    x5, t5 = blobs(5, seed=2)
    x = np.stack([x3, x5])
    fit = kmeans.fit_tokens(lambda a, b: x[a:b], 2, 240, 6, kmeans.k_candidates(2, 8, 7, 240),
                            iters=50, sample=200, seed=0)
    assert fit.k.tolist() == [3, 5]
    assert adjusted_rand_score(t3, fit.labels[0]) == 1.0
    assert adjusted_rand_score(t5, fit.labels[1]) == 1.0


def test_batched_silhouette_matches_sklearn() -> None:
    x = np.stack([blobs(4, n=120, seed=s)[0] for s in range(3)])
    labels, _ = kmeans.kmeans(torch.from_numpy(x), 6, 20, torch.Generator().manual_seed(0))
    ours = kmeans.silhouette(torch.from_numpy(x), labels, 6).numpy()
    ref = [silhouette_score(x[i], labels[i].numpy()) for i in range(3)]
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_empty_cluster_is_reseeded_on_farthest_point() -> None:
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [9.0, 9.0], [0.5, 0.0]]])
    labels = torch.zeros(1, 4, dtype=torch.long)  # cluster 1 empty
    closest = kmeans.sq_dists(x, x.mean(1, keepdim=True)).squeeze(-1)
    centroids = kmeans._update(x, labels, 2, closest)
    torch.testing.assert_close(centroids[0, 1], torch.tensor([9.0, 9.0]))
    torch.testing.assert_close(centroids[0, 0], x[0].mean(0))


def brute_local_density(x: np.ndarray, labels: np.ndarray, m: int) -> np.ndarray:
    out = np.zeros(len(x))
    for i in range(len(x)):
        mates = [np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i and labels[j] == labels[i]]
        out[i] = np.mean(sorted(mates)[:m]) if mates else 0.0
    return out


def test_local_density_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 25, 5)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 25))
    labels[0, 0] = 7  # a singleton cluster -> 0
    labels[1, :3] = 9  # a cluster of 3 < m + 1 -> mean over the 2 mates
    x[1, 5] = x[1, 6]  # exact duplicates must give distance 0, not rounding noise
    got = local_density_block(torch.from_numpy(x), torch.from_numpy(labels), 5).numpy()
    for t in range(2):
        np.testing.assert_allclose(got[t], brute_local_density(x[t], labels[t], 5), rtol=1e-5, atol=1e-6)
    assert got[0, 0] == 0.0


@pytest.mark.parametrize(
    ("d", "loc", "conf", "ratio"),
    [(0.4, 0.8, 0.5, 0.5), (1.6, 0.8, 1.0, 2.0), (0.0, 0.8, 0.0, 0.0), (0.3, 0.0, 1.0, 1.5), (0.0, 0.0, 0.0, 0.0),
     (0.1, 0.0, 1.0, 1.0)],
)
def test_knnn_confidence_formula(d: float, loc: float, conf: float, ratio: float) -> None:
    # floor 0.2 stands for the token's smallest positive density: ratio d/0.2 but >= 1 when loc == 0
    c, r = knnn_confidence(torch.tensor([d]), torch.tensor([loc]), torch.tensor([0.2]))
    assert c.item() == pytest.approx(conf)
    assert r.item() == pytest.approx(ratio)


def test_density_floor_is_smallest_positive() -> None:
    assert density_floor(np.array([[0.0, 0.5, 0.2], [0.0, 0.0, 0.0]])).tolist() == pytest.approx([0.2, 1.0])


def test_hdbscan_confidence_in_unit_range_and_higher_for_outliers() -> None:
    x, _ = blobs(2, n=200, seed=5)
    clusterer = hdbscan_.fit_one(x, 10, 5)
    inliers = x[:20] + 0.01
    outliers = x[:20] + 100.0
    cin, cout = hdbscan_.confidence(clusterer, inliers), hdbscan_.confidence(clusterer, outliers)
    for c in (cin, cout):
        assert ((c >= 0) & (c <= 1)).all()
    assert cout.mean() > cin.mean() + 0.5
    assert (cout == 1.0).all()  # noise has strength 0


def test_hdbscan_on_a_short_enrolment_uses_the_sizes_the_footage_has(caplog: pytest.LogCaptureFixture) -> None:
    x, _ = blobs(2, n=12, seed=5)  # 12 vectors, against the study's 40 / 40
    clusterer = hdbscan_.fit_one(x, 40, 40)
    assert clusterer.min_samples == 11 and clusterer.min_cluster_size == 12
    assert "12 training vectors, fewer than min_samples 40" in caplog.text
    assert hdbscan_.confidence(clusterer, x[:3]).shape == (3,)
    with pytest.raises(InputError, match=r"normality\.hdbscan: 2 training frame\(s\); HDBSCAN needs at least 3"):
        hdbscan_.fit_one(x[:2], 40, 40)


def test_hdbscan_state_is_saved_as_arrays_and_predicts_as_fitted(tmp_path: Path) -> None:
    x, _ = blobs(3, n=150, seed=7)
    fitted = {0: hdbscan_.fit_one(x, 10, 5), 3: hdbscan_.fit_one(x[:20] * 0.0 + np.arange(20)[:, None], 10, 10)}
    hdbscan_.save(tmp_path / hdbscan_.FILE, fitted)
    loaded = hdbscan_.load(tmp_path)
    probes = np.r_[x[::7] + 0.05, x[:5] + 40.0]
    for token, clusterer in fitted.items():
        np.testing.assert_array_equal(loaded[token].labels_, clusterer.labels_)
        np.testing.assert_allclose(hdbscan_.confidence(loaded[token], probes), hdbscan_.confidence(clusterer, probes))
    conf = hdbscan_.confidence(loaded[0], probes)
    assert conf[:-5].mean() < 0.5 and (conf[-5:] == 1).all()  # members are members, far points are noise
    (tmp_path / hdbscan_.FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match=r"hdbscan\.npz: cannot read the HDBSCAN state .*; refit the model"):
        hdbscan_.load(tmp_path)


def test_a_pickled_hdbscan_state_is_refused_unread(tmp_path: Path) -> None:
    """An older model's hdbscan.pkl, here one crafted to run code when unpickled: never opened."""
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (open, (str(marker), "w"))

    (tmp_path / hdbscan_.LEGACY_FILE).write_bytes(pickle.dumps(Payload()))
    with pytest.raises(InputError, match=r"hdbscan\.pkl: pickled HDBSCAN state is not loaded .*refit"):
        hdbscan_.load(tmp_path)
    assert not marker.exists()


def test_hnsw_and_dense_agree_on_nearest_neighbours() -> None:
    rng = np.random.default_rng(6)
    train = rng.normal(size=(3, 300, 8)).astype(np.float32)
    queries = rng.normal(size=(3, 10, 8)).astype(np.float32)
    indexes = hnsw_index.build_all(lambda a, b: train[a:b], 3)
    got = hnsw_index.nearest(indexes, queries, k=3)
    dense = np.linalg.norm(queries[:, :, None] - train[:, None], axis=-1).argsort(-1)[..., :3]
    np.testing.assert_array_equal(got, dense)


def test_projected_search_finds_the_dense_nearest_in_a_wider_space() -> None:
    """96 dims, more than the sketch's 63 components: a few scene states plus noise, like a camera's patches.
    A query next to a training row finds that row; fresh frames of the same scenes find the exact nearest
    almost always, and k neighbours come nearest first."""
    rng = np.random.default_rng(7)
    centres = rng.normal(0, 3, (2, 5, 96))
    train = (centres[:, rng.integers(5, size=600)] + rng.normal(0, 1, (2, 600, 96))).astype(np.float32)
    index = ProjectedIndex.build(lambda a, b: train[a:b], 2, 600, 96)
    assert index.rows.shape == (2, 64, 600) and index.basis.shape == (2, 96, 63)
    x = torch.from_numpy(train)
    near = x[:, :40] + 0.05 * torch.randn(2, 40, 96, generator=torch.Generator().manual_seed(0))
    assert (index.nearest(x, near)[..., 0] == torch.arange(40)).all()
    fresh = torch.from_numpy((centres[:, rng.integers(5, size=200)] + rng.normal(0, 1, (2, 200, 96)))
                             .astype(np.float32))
    dense = torch.cdist(fresh, x).argsort(-1)[..., :3]
    got = index.nearest(x, fresh, k=3)
    assert (got[..., 0] == dense[..., 0]).float().mean() >= 0.95
    picked = torch.cdist(fresh, x).gather(2, got)
    assert (picked.diff(dim=-1) >= 0).all()  # nearest first


def test_a_projected_model_scores_as_a_dense_one_and_round_trips(tmp_path: Path) -> None:
    """At 8 dims the sketch holds every component, so the projected model must pick exactly the dense rows; saved
    and loaded it keeps its index and maps its memory, and a damaged index file is one line naming it."""
    dense = small_model()
    projected = small_model(NormalityConfig(k_min=2, k_max=5, k_candidates=4, silhouette_sample=50,
                                            hdbscan="none", index="projected"))
    projected.save(tmp_path / "p", write_chroma=False)
    loaded = NormalityModel.load(tmp_path / "p")
    assert loaded.projected is not None and loaded.indexes is None and isinstance(loaded.train, np.memmap)
    g, p = clustered_embeddings(12, 4, 8, n_modes=3, spread=0.4, seed=1, frame_seed=5)
    want = TokenScorer(dense).scores(g, p, "knnn").conf
    for model in (projected, loaded):
        np.testing.assert_array_equal(TokenScorer(model).scores(g, p, "knnn").conf, want)
    (tmp_path / "p" / PROJECTED_FILE).write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"projected\.npz: not a readable projected index"):
        NormalityModel.load(tmp_path / "p")


def test_fit_save_load_round_trip(tmp_path: Path) -> None:
    cfg = NormalityConfig(k_min=2, k_max=5, k_candidates=4, silhouette_sample=50, hdbscan="global",
                          hdbscan_min_cluster_size=5, hdbscan_min_samples=3, index="hnsw")
    model = small_model(cfg)
    model.set_thresholds({"knnn/majority": 0.9})
    model.save(tmp_path / "m")
    loaded = NormalityModel.load(tmp_path / "m", backbone=BACKBONE)
    for name in ("train", "clusters", "loc_dens", "k"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    assert loaded.thresholds == {"knnn/majority": 0.9}
    assert loaded.grid == (2, 2) and loaded.config == cfg and loaded.sources == model.sources
    assert list(loaded.hdbscan) == [0] and loaded.indexes is not None and len(loaded.indexes) == 5
    man = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert man["n_patches"] == 4 and man["dim"] == 8 and man["k"] == model.k.tolist()
    assert all(2 <= k <= 3 for k in man["k"])  # 3 scene states, two of them close in some tokens
    assert all(0.4 < s <= 1 for s in man["silhouette"]) and "chromadb" in man["versions"]
    (tmp_path / "m" / "hnsw" / "patch_001.bin").write_bytes(b"garbage" * 4)
    with pytest.raises(InputError, match=r"patch_001\.bin: not a readable hnsw index"):
        NormalityModel.load(tmp_path / "m")


def test_chroma_collections_and_from_chroma_round_trip(tmp_path: Path) -> None:
    model = small_model()
    model.save(tmp_path)
    client = chroma_store.open_client(tmp_path / "chroma")
    names = sorted(c.name for c in client.list_collections())
    assert names == ["global", "patch_000", "patch_001", "patch_002", "patch_003"]
    coll = client.get_collection("patch_002")
    assert coll.count() == 60
    rec = coll.get(ids=["patch_002-7"], include=["embeddings", "metadatas"])
    np.testing.assert_allclose(rec["embeddings"][0], model.train[3, 7], rtol=1e-6)
    assert rec["metadatas"][0] == {"cluster": int(model.clusters[3, 7]), "loc_dens": pytest.approx(
        float(model.loc_dens[3, 7])), "source": "cam/7.jpg", "frame": 7}
    # serving files gone: Chroma alone rebuilds them
    for f in ("train.npy", "clusters.npy", "loc_dens.npy"):
        (tmp_path / f).unlink()
    rebuilt = NormalityModel.from_chroma(tmp_path)
    np.testing.assert_array_equal(rebuilt.train, model.train)
    np.testing.assert_array_equal(rebuilt.clusters, model.clusters)
    np.testing.assert_allclose(rebuilt.loc_dens, model.loc_dens)
    assert rebuilt.sources == model.sources
    rebuilt.save(tmp_path, write_chroma=False)
    np.testing.assert_array_equal(NormalityModel.load(tmp_path).train, model.train)


def test_load_checks_backbone_and_directory(tmp_path: Path) -> None:
    model = small_model(NormalityConfig(k_min=2, k_max=3, k_candidates=2, hdbscan="none", chroma=False))
    model.save(tmp_path / "m")
    other = {**BACKBONE, "name": "dinov2", "grid": [16, 16], "dim": 384}
    with pytest.raises(ModelMismatchError, match=r"fitted with backbone tiny test/tiny .*differs in name, grid, dim"):
        NormalityModel.load(tmp_path / "m", backbone=other)
    with pytest.raises(InputError, match=r"manifest\.json missing"):
        NormalityModel.load(tmp_path / "nothing")
    (tmp_path / "m" / "loc_dens.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"loc_dens.npy: cannot read"):
        NormalityModel.load(tmp_path / "m")
    (tmp_path / "m" / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable model manifest"):
        NormalityModel.load(tmp_path / "m")


def test_fit_rejects_inconsistent_shapes() -> None:
    g, p = clustered_embeddings(10, 4, 8)
    with pytest.raises(InputError, match="disagree"):
        NormalityModel.fit(g[:9], p, NormalityConfig(), sources=["x"] * 10, backbone=BACKBONE)


@pytest.mark.parametrize("global_dim", [20, 5])
def test_global_of_another_width_is_projected_and_survives_save_load(tmp_path: Path, global_dim: int) -> None:
    """CNN backbones pool a wider (or narrower) global than their patches: the model projects it."""
    q = 60
    _, p = clustered_embeddings(q, 4, 8, n_modes=3, seed=1)
    g = np.random.default_rng(3).normal(size=(q, global_dim)).astype(np.float32)
    cfg = NormalityConfig(k_min=2, k_max=5, k_candidates=4, silhouette_sample=50, hdbscan="none", chroma=False)
    model = NormalityModel.fit(g, p, cfg, sources=[str(i) for i in range(q)], backbone=BACKBONE)
    assert model.global_dim == global_dim and model.dim == 8
    queries = model.token_queries(g[:3], p[:3])
    np.testing.assert_allclose(queries[:, 0], model.train[0, :3], rtol=1e-3, atol=1e-3)  # a float16 memory
    if global_dim < 8:  # zero-padding keeps distances exactly
        np.testing.assert_allclose(np.linalg.norm(queries[0, 0] - queries[1, 0]), np.linalg.norm(g[0] - g[1]),
                                   rtol=1e-5)
    model.save(tmp_path / "m")
    loaded = NormalityModel.load(tmp_path / "m", backbone=BACKBONE)
    assert loaded.global_dim == global_dim
    np.testing.assert_array_equal(loaded.token_queries(g[:3], p[:3]), queries)
