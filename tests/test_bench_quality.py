"""The Ped2 quality benchmark's logic on tiny synthetic features whose anomalies are known exactly.

Normal frames scatter tightly around a per-token mean; anomalous frames (and cut-paste frames)
move the global token and the first patch far away, so a working benchmark must rank them on top
and its k-NNN map must light up the pasted patch. Real NormalityModel, real detectors, tiny sizes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from streamvad.bench.quality import (
    ENSEMBLES,
    KNNN_VARIANTS,
    BenchSettings,
    CutPaste,
    Features,
    Scored,
    causal_mean,
    ensemble,
    markdown_table,
    normal_rows,
    run_benchmark,
)
from streamvad.config import NormalityConfig, ScoringConfig
from streamvad.datasets.synthetic import AnomalySpec, make_scene
from streamvad.detectors.config import GeneralADConfig, S2VADConfig, UniformalyConfig
from streamvad.types import EmbeddingBatch, FrameKey

GRID = (2, 3)
N, D, FRAMES = 6, 8, 12
PIXELS = (12, 18)  # 6x6 pixels per patch
MEAN = np.random.default_rng(7).normal(size=(N + 1, D)).astype(np.float32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def features(clips: int, seed: int, anomalous_from: int | None = None) -> Features:
    """`clips` clips of FRAMES frames; with `anomalous_from`, frames from that index on are anomalous."""
    rng = np.random.default_rng(seed)
    q = clips * FRAMES
    x = MEAN + 0.05 * rng.normal(size=(q, N + 1, D)).astype(np.float32)
    labels = np.zeros(q, dtype=np.int64)
    if anomalous_from is not None:
        labels = (np.arange(q) % FRAMES >= anomalous_from).astype(np.int64)
        x[labels == 1, :2] += 3.0  # global token and patch 0
    patches = x[:, 1:]
    return Features(batch(x[:, 0].copy(), patches.copy()), np.repeat(np.arange(clips), FRAMES), labels)


def batch(global_: np.ndarray, patches: np.ndarray) -> EmbeddingBatch:
    """Rows as a backbone gives them, with two intermediate layers for the detectors."""
    keys = [FrameKey("toy", i, float(i)) for i in range(len(global_))]
    return EmbeddingBatch(keys, global_, patches, GRID, layers={1: patches.copy(), 2: 0.5 * patches})


def cutpaste_set(test: Features) -> CutPaste:
    rows = normal_rows(test.labels, 4)
    pasted = test.rows(rows)
    shifted = pasted.batch.patches.copy()
    shifted[:, 0] += 3.0
    feats = Features(batch(pasted.batch.global_, shifted), np.arange(len(rows)), np.ones(len(rows), dtype=np.int64))
    masks = np.zeros((len(rows), *PIXELS), dtype=bool)
    masks[:, :6, :6] = True  # exactly patch 0
    return CutPaste(feats, masks, rows)


def settings(detectors: bool) -> BenchSettings:
    normality = NormalityConfig(k_min=2, k_max=3, k_candidates=2, silhouette_sample=10, hdbscan="global",
                                hdbscan_min_cluster_size=3, hdbscan_min_samples=2, density_m=2,
                                holdout_fraction=0.25, chroma=False)
    sections = {
        "uniformaly": UniformalyConfig(first_block=0, last_block=1, masking=False, coreset_ratio=0.5),
        "generalad": GeneralADConfig(epochs=1, hidden_dim=16, batch_size=8),
        "s2vad": S2VADConfig(num_heads=2, decoder_depth=2, iterations=3, warmup_iters=1, batch_size=4),
    } if detectors else {}
    return BenchSettings(normality=normality, scoring=ScoringConfig(), detectors=sections, smoothing=(3,))


def test_causal_mean_looks_only_back_and_within_a_clip() -> None:
    scores = np.array([1.0, 3.0, 5.0, 100.0, 0.0, 2.0])
    clips = np.array([0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(causal_mean(scores, clips, 2), [1.0, 2.0, 4.0, 100.0, 50.0, 1.0])
    np.testing.assert_allclose(causal_mean(scores, clips, 1), scores)


def test_ensemble_puts_members_on_their_hold_out_scale() -> None:
    hold = np.linspace(0.0, 1.0, 101)

    def member(scale: float, offset: float) -> Scored:
        return Scored(offset + scale * hold, offset + scale * np.array([0.5, 0.99, 2.0]), offset + scale * hold[:2],
                      None, 1.0, 2.0)

    out = ensemble([member(1.0, 0.0), member(1000.0, -50.0)], quantile=0.99)  # same shape, other units
    np.testing.assert_allclose(out.test, [0.0, 1.0, 1.5 / 0.49], atol=1e-9)  # median 0, own threshold 1
    assert out.fit_s == 2.0 and out.score_s == 4.0 and out.maps is None


def test_cache_round_trip_and_invalidation(tmp_path: Path) -> None:
    f = features(2, seed=1, anomalous_from=6)
    meta = {"backbone": {"name": "toy"}, "layers": [1, 2], "clips": ["01", "02"]}
    f.save(tmp_path / "test", meta)
    back = Features.load(tmp_path / "test", meta)
    assert back is not None and back.grid == GRID and sorted(back.batch.layers) == [1, 2]
    np.testing.assert_array_equal(back.batch.patches, f.batch.patches)
    np.testing.assert_array_equal(back.batch.layers[2], f.batch.layers[2])
    rows = back.rows(np.array([3, 0]))
    np.testing.assert_array_equal(rows.batch.global_, f.batch.global_[[3, 0]])
    assert rows.batch.patches.flags.writeable  # rows of the memory map are copies torch can take
    np.testing.assert_array_equal(back.labels, f.labels)
    assert Features.load(tmp_path / "test", {**meta, "clips": ["01"]}) is None  # other settings: re-embed
    assert Features.load(tmp_path / "missing", meta) is None


def test_knnn_rules_rank_anomalies_and_write_scores(tmp_path: Path) -> None:
    train, test = features(4, seed=1), features(2, seed=2, anomalous_from=6)
    result = run_benchmark(train, 4, test, cutpaste_set(test), settings(detectors=False), num_layers=2,
                           progress=False, scores_out=tmp_path / "scores.npz")
    rows = {r["method"]: r for r in result["methods"]}
    methods = {*KNNN_VARIANTS, "ens(knnn/global,knnn/topk@0.02)"}  # the other ensemble lacks its detectors
    assert set(rows) == methods | {f"{m}+ma3" for m in methods}
    assert result["frames"] == {"train": 36, "holdout": 12, "test": 24, "test_anomalous": 12, "cutpaste": 4}
    for name in ("knnn/global", "knnn/topk@0.02", "knnn/any_k"):
        assert rows[name]["auroc"] == 1.0 and rows[name]["recall"] == 1.0  # calibrated on normals only
    assert rows["knnn/any_k"]["cutpaste_image_auroc"] == 1.0  # only patch 0 was pasted: a local rule sees it
    assert rows["knnn/topk@0.02"]["pixel_auroc"] > 0.95  # the map lights up the pasted patch
    assert rows["knnn/global"]["pixel_auroc"] is None  # the global rule has no map
    assert rows["knnn/global+ma3"]["smoothing"] == 3 and rows["knnn/global+ma3"]["pixel_auroc"] is None
    with np.load(tmp_path / "scores.npz") as z:
        assert z["knnn/global|test"].shape == (24,) and z["knnn/global|hold"].shape == (12,)
        np.testing.assert_array_equal(z["test_labels"], test.labels)
        # each method is scored by its own token scores, not the k-NNN ratio under another name
        for method in ("distance", "nnn"):
            assert not np.allclose(z[f"{method}/topk@0.05|test"], z["knnn/topk@0.05|test"])


def test_every_detector_gets_a_row_with_every_figure() -> None:
    train, test = features(4, seed=1), features(2, seed=2, anomalous_from=6)
    result = run_benchmark(train, 4, test, cutpaste_set(test), settings(detectors=True), num_layers=2,
                           progress=False)
    json.loads(json.dumps(result))  # valid JSON, no NaN
    rows = {r["method"]: r for r in result["methods"]}
    assert len(rows) == 2 * (len(KNNN_VARIANTS) + 3 + len(ENSEMBLES))
    assert rows["ens(knnn/topk@0.02,detectors)"]["auroc"] > 0.9
    for name in ("uniformaly", "generalad", "s2vad"):
        row = rows[name]
        assert 0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["pixel_auroc"] <= 1.0
        assert row["fit_s"] > 0 and row["score_ms_per_frame"] > 0 and np.isfinite(row["threshold"])
    assert rows["uniformaly"]["auroc"] == 1.0  # a memory bank of normal patches cannot miss a +3 shift
    assert result["best_by_test_auroc"] in rows
    assert result["settings"]["detectors"]["s2vad"]["iterations"] == 3
    table = markdown_table(result).splitlines()
    assert len(table) == 2 + len(rows) and table[0].startswith("| method | frame AUROC")


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ped2_benchmark", Path(__file__).parents[1] / "tools" /
                                                  "ped2_benchmark.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_ucsd(root: Path) -> Path:
    """A UCSD Ped2-layout dataset of synthetic frames: 3 normal training clips, 1 test clip with a cart."""
    for k in range(3):
        make_scene(root / "training" / "frames", seconds=0.8, size=(64, 96), seed=k, place_seed=0, fmt="frames",
                   name=f"{k + 1:02d}")
    make_scene(root / "testing" / "frames", seconds=1.2, size=(64, 96), seed=9, place_seed=0, fmt="frames",
               name="01", anomalies=[AnomalySpec("object", 0.6, 1.2)])
    (root / "labels.json").write_text(json.dumps({"abnormal_frames": {"01": [7, 12]}}), encoding="utf-8")
    return root


TINY_CONFIG = """
backbone: {name: efficientnet-lite0-ms, image_size: [64, 96], batch_size: 8, device: cpu}
normality: {k_min: 2, k_max: 3, k_candidates: 2, silhouette_sample: 10, hdbscan: global, density_m: 2,
            hdbscan_min_cluster_size: 3, hdbscan_min_samples: 2, holdout_fraction: 0.34, chroma: false}
"""


def test_tool_embeds_once_and_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = load_tool()
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG, encoding="utf-8")
    args = ["--root", str(tiny_ucsd(tmp_path / "ped2")), "--out", str(tmp_path / "out"),
            "--cache", str(tmp_path / "cache"), "--config", str(tmp_path / "tiny.yaml"), "--epochs", "1",
            "--generalad-hidden", "16", "--iterations", "2", "--s2vad-depth", "2", "--coreset-ratio", "0.5",
            "--pixel-frames", "3", "--smooth", "3", "--no-progress"]
    assert tool.main(args) == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    cached = (tmp_path / "cache" / "train" / "patches.npy").stat().st_mtime_ns
    assert first["layers"] == [9, 11]  # the 112-channel stride-16 blocks UniFormaly and S2VAD average
    assert first["frames"] == {"train": 16, "holdout": 8, "test": 12, "test_anomalous": 6, "cutpaste": 3}
    assert {r["base"] for r in first["methods"]} == {*KNNN_VARIANTS, *ENSEMBLES, "uniformaly", "generalad", "s2vad"}
    assert "embed_train_s" in first["timings"]
    meta = json.loads((tmp_path / "cache" / "train" / "meta.json").read_text(encoding="utf-8"))
    assert meta["wire"] == [640, 90]  # frames embedded as the live worker gets them, as in `make ped2`
    assert tool.main(args) == 0  # same settings: the cached embeddings are reused, not recomputed
    second = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert (tmp_path / "cache" / "train" / "patches.npy").stat().st_mtime_ns == cached
    assert "embed_train_s" not in second["timings"]
    assert [r["auroc"] for r in second["methods"]] == [r["auroc"] for r in first["methods"]]
    out = capsys.readouterr().out
    assert out.count("| knnn/majority |") == 2 and (tmp_path / "out" / "results.md").is_file()
