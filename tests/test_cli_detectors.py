"""`streamvad fit --detector NAME`, then replay and eval through the same CLI, on a tiny random DINOv2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamvad.bench.throughput import save_random_dinov2
from streamvad.cli import main
from streamvad.datasets.synthetic import AnomalySpec, make_scene

DETECTOR_CONFIG = """
backbone: {{name: dinov2, model: {model}, image_size: [48, 64], batch_size: 8, device: cpu}}
detector:
  name: {name}
  device: cpu
  holdout_fraction: 0.25
  generalad: {{epochs: 2, hidden_dim: 32, batch_size: 8}}
  s2vad: {{iterations: 20, warmup_iters: 2, num_heads: 2, decoder_depth: 2, batch_size: 8}}
  uniformaly: {{coreset_ratio: 0.5}}
"""


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("detscene")
    for i in range(2):
        make_scene(root / "train" / "normal", seconds=4, name=f"normal_{i}", seed=i, place_seed=0,
                   size=(96, 128))
    clip = make_scene(root / "test", seconds=4, name="walker", seed=5, place_seed=0, size=(96, 128),
                      anomalies=[AnomalySpec("lawn_walker", 2.0, 4.0)])
    (root / "test" / "walker.labels.json").write_text(json.dumps(clip.labels))
    save_random_dinov2(root / "dinov2", hidden=32, layers=4, heads=2, patch=8, image=64)
    return root


@pytest.mark.parametrize("name", ["uniformaly", "generalad", "s2vad"])
def test_detector_fit_replay_eval(scene: Path, tmp_path: Path, name: str) -> None:
    cfg = tmp_path / "det.yaml"
    cfg.write_text(DETECTOR_CONFIG.format(model=scene / "dinov2", name=name))
    model = tmp_path / "model"
    assert main(["fit", "--config", str(cfg), "--detector", name, "--dataset", "folder", "--root", str(scene),
                 "--out", str(model), "--no-progress"]) == 0
    assert json.loads((model / "model.json").read_text())["kind"] == name
    assert (model / "detector" / "manifest.json").is_file()

    out = tmp_path / "replay.jsonl"
    assert main(["replay", "--model", str(model), str(scene / "test" / "walker.mp4"), "--out", str(out),
                 "--no-progress"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 16 and all(r["n_patches"] == 48 for r in lines)  # 6x8 grid of 8-px patches
    assert all(r["decided_by"].startswith(name) for r in lines)

    report = tmp_path / "report"
    assert main(["eval", "--model", str(model), "--dataset", "folder", "--root", str(scene), "--out", str(report),
                 "--no-progress"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_anomalous"] > 0 and 0.0 <= metrics["auroc"] <= 1.0
    assert list((report / "heatmaps").rglob("*.jpg"))  # overlays drawn from the detector's heatmap


def test_a_detector_is_a_camera_model_like_a_knn_model(scene: Path, tmp_path: Path) -> None:
    """One site, one backbone: camera "a" on a k-NN model and camera "b" on a UniFormaly detector, both fitted
    through the same `fit`. The batch is embedded once (with the layers the detector asks for) and each camera
    gets what its own model gives it alone."""
    from streamvad.config import StreamVADConfig
    from streamvad.live.fleet import load_fleet
    from streamvad.scoring.engine import load_engine
    from tests.test_worker import make_frame

    cfg = tmp_path / "det.yaml"
    cfg.write_text(DETECTOR_CONFIG.format(model=scene / "dinov2", name="uniformaly"))
    knn, det = tmp_path / "knn", tmp_path / "det"
    fit = ["fit", "--config", str(cfg), "--dataset", "folder", "--root", str(scene), "--no-progress"]
    assert main([*fit, "--out", str(knn)]) == 0
    assert main([*fit, "--detector", "uniformaly", "--out", str(det)]) == 0
    site = StreamVADConfig.model_validate({
        "backbone": {"name": "dinov2", "model": str(scene / "dinov2"), "image_size": [48, 64], "device": "cpu"},
        "cameras": [{"id": "a", "url": "x.mp4", "model": str(knn)}, {"id": "b", "url": "y.mp4", "model": str(det)}]})
    fleet = load_fleet(site, site.cameras)
    calls = []
    embed = fleet.backbone.embed
    fleet.backbone.embed = lambda *a, **k: calls.append(k) or embed(*a, **k)  # type: ignore[method-assign]
    frames = [make_frame(cam, i, seed=i) for i in range(3) for cam in ("a", "b")]
    verdicts = fleet.score(frames)
    assert len(calls) == 1 and calls[0]["layers"]  # one pass, carrying the detector's intermediate layers
    for cam, model, rule in (("a", knn, "distance/topk"), ("b", det, "uniformaly")):
        mine = [v for v in verdicts if v is not None and v.key.camera == cam]
        ref = load_engine(model).process([f for f in frames if f.camera == cam])
        assert len(mine) == 3 and all(v.decided_by.startswith(rule) for v in mine)
        assert [v.raw_score for v in mine] == pytest.approx([v.raw_score for v in ref], rel=1e-5, abs=1e-6)
