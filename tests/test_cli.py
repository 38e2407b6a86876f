"""The `streamvad` command line end to end on a tiny synthetic scene, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamvad.cli import main
from streamvad.datasets.synthetic import AnomalySpec, make_scene
from streamvad.normality.model import NormalityModel
from streamvad.scoring.engine import load_engine
from streamvad.scoring.knn import TokenScorer
from tests.test_worker import tiny_model

__all__ = ["tiny_model"]

TINY = """
backbone: {name: efficientnet-lite0, image_size: [64, 96], batch_size: 8, device: cpu}
normality: {k_min: 2, k_max: 4, k_candidates: 2, silhouette_sample: 50, hdbscan: global,
            hdbscan_min_cluster_size: 5, hdbscan_min_samples: 5, holdout_fraction: 0.34}
scoring: {rule: topk, topk_ratio: 0.1}
"""


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `folder` dataset: three short normal clips and one labelled test clip with a cart."""
    root = tmp_path_factory.mktemp("scene")
    for i in range(3):
        make_scene(root / "train" / "normal", seconds=4, name=f"normal_{i}", seed=i, place_seed=0)
    clip = make_scene(root / "test", seconds=6, name="cart", seed=7, place_seed=0,
                      anomalies=[AnomalySpec("object", 3.0, 6.0)])
    (root / "test" / "cart.labels.json").write_text(json.dumps(clip.labels))
    (root / "tiny.yaml").write_text(TINY)
    return root


@pytest.fixture(scope="module")
def model(scene: Path) -> Path:
    out = scene / "model"
    assert main(["fit", "--config", str(scene / "tiny.yaml"), "--dataset", "folder", "--root", str(scene),
                 "--out", str(out), "--no-progress"]) == 0
    return out


def test_fit_writes_a_complete_model(model: Path) -> None:
    info = json.loads((model / "model.json").read_text())
    assert info["kind"] == "knnn" and info["backbone"]["image_size"] == [64, 96]
    manifest = json.loads((model / "normality" / "manifest.json").read_text())
    assert manifest["grid"] == [4, 6] and manifest["n_patches"] == 24
    assert "knnn/topk" in manifest["thresholds"]  # calibrated on the held-out normal clip
    assert (model / "normality" / "chroma").is_dir()


def test_replay_writes_one_line_per_frame_and_heatmaps(scene: Path, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    assert main(["replay", "--model", str(model), str(scene / "test" / "cart.mp4"), "--out", str(out),
                 "--heatmaps", str(tmp_path / "hm"), "--no-progress"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 24  # 6 s sampled at 4 fps by pts
    for key in ("camera", "frame", "pts", "score", "anomalous", "global_confidence", "unsafe_patches",
                "n_patches"):
        assert key in lines[0]
    assert [r["frame"] for r in lines] == list(range(24))
    assert all(r["n_patches"] == 24 for r in lines)
    assert len(list((tmp_path / "hm").rglob("*.jpg"))) == 24


def test_eval_scores_the_cart_above_normal_frames(scene: Path, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["eval", "--model", str(model), "--dataset", "folder", "--root", str(scene), "--out", str(out),
                 "--rules", "topk,majority,global,hdbscan/global", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("precision", "recall", "fpr", "specificity", "f1", "balanced_accuracy", "auroc", "threshold",
                "n_normal", "n_anomalous"):
        assert key in metrics
    assert metrics["n_anomalous"] > 0 and metrics["n_normal"] > 0
    assert metrics["auroc"] > 0.8  # a red cart on the walkway is not subtle
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    by_rule = json.loads((out / "by_rule.json").read_text())
    assert set(by_rule) == {"topk", "majority", "global", "hdbscan/global"}


def test_a_model_with_hdbscan_replays_another_rule_without_the_hdbscan_library(scene: Path, model: Path) -> None:
    """The clusterers are rebuilt on first use: a worker serving `topk` from a model fitted with HDBSCAN (the
    default fit) never imports hdbscan, scikit-learn or scipy (about 95 MB and 1.5 s of CPU); `eval` above scores
    with it from the same files."""
    clip = scene / "test" / "cart.mp4"
    code = ("import sys; from pathlib import Path; from streamvad.offline.pipeline import clips_from_paths, replay; "
            "from streamvad.scoring.engine import load_engine; "
            f"rows = replay(load_engine(Path({str(model)!r})), clips_from_paths([Path({str(clip)!r})]), "
            "sample_fps=4.0, progress=False).records['primary']; "
            "print(len(rows), [m for m in ('hdbscan', 'sklearn', 'scipy') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip() == "24 []", done.stdout + done.stderr[-2000:]


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("streamvad: error: ")
    return err[0]


def test_missing_model_directory(capsys: pytest.CaptureFixture[str], scene: Path, tmp_path: Path) -> None:
    line = _error_line(capsys, ["replay", "--model", str(tmp_path / "nope"), str(scene / "test" / "cart.mp4"),
                                "--out", str(tmp_path / "o.jsonl")])
    assert "nope" in line and "model" in line


def test_missing_source_file(capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path) -> None:
    line = _error_line(capsys, ["replay", "--model", str(model), str(tmp_path / "missing.mp4"),
                                "--out", str(tmp_path / "o.jsonl")])
    assert "missing.mp4" in line


def test_wrong_config_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("scoring:\n  rul: topk\n")
    line = _error_line(capsys, ["fit", "--config", str(bad), str(tmp_path), "--out", str(tmp_path / "m")])
    assert "bad.yaml" in line and "scoring.rul" in line and "unknown key" in line


def test_corrupt_image(capsys: pytest.CaptureFixture[str], scene: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "000.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    line = _error_line(capsys, ["fit", "--config", str(scene / "tiny.yaml"), str(folder), "--out",
                                str(tmp_path / "m"), "--no-progress"])
    assert "000.jpg" in line


def test_model_backbone_mismatch(capsys: pytest.CaptureFixture[str], scene: Path, model: Path,
                                 tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("backbone: {image_size: [96, 128]}\n")
    line = _error_line(capsys, ["replay", "--config", str(other), "--model", str(model),
                                str(scene / "test" / "cart.mp4"), "--out", str(tmp_path / "o.jsonl")])
    assert "fitted with backbone" in line


def test_errors_exit_without_traceback_from_the_real_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "streamvad", "replay", "--model", str(tmp_path),
                           str(tmp_path / "x.mp4"), "--out", str(tmp_path / "o.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_receive_command_checks_signatures(tmp_path: Path) -> None:
    import socket

    import httpx

    from streamvad.sinks.webhook import sign

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "streamvad", "receive", "--port", str(port), "--secret", "k"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        body, ts = b'{"event_id": "e1"}', str(int(time.time()))
        statuses = [httpx.post(f"http://127.0.0.1:{port}/hook", content=body, timeout=5,
                               headers={"X-StreamVAD-Signature": sig, "X-StreamVAD-Timestamp": ts,
                                        "Idempotency-Key": "e1:0:opened"}).status_code
                    for sig in (sign(ts, body, "k"), sign(ts, body, "wrong"))]
        first, second = (json.loads(proc.stdout.readline()) for _ in range(2))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert statuses == [200, 401]
    assert first == {"signature_ok": True, "idempotency_key": "e1:0:opened", "body": {"event_id": "e1"}}
    assert second["signature_ok"] is False and "signature does not match" in second["reason"]


def test_dataset_options_reach_the_loader(capsys: pytest.CaptureFixture[str], scene: Path, model: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["eval", "--model", str(model), "--dataset", "folder", "--root", str(scene), "--out", str(out),
                 "--dataset-option", "sample_fps=2", "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["n_frames"] == 12  # 6 s at 2 fps instead of 4
    line = _error_line(capsys, ["eval", "--model", str(model), "--dataset", "folder", "--root", str(scene),
                                "--out", str(out), "--dataset-option", "bogus=1"])
    assert "bogus" in line and "accepted" in line
    line = _error_line(capsys, ["eval", "--model", str(model), "--dataset", "folder", "--root", str(scene),
                                "--out", str(out), "--dataset-option", "no-equals-sign"])
    assert "KEY=VALUE" in line


def test_reindex_serves_the_same_model_by_another_index(tiny_model: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A copy served by the projected index loads (its checksums are its own), scores as the source does (the
    tiny model's 16 dims fit the sketch whole), and back to dense it carries no stale index; an existing --out
    is one line, exit 2, and the source is untouched."""
    projected, dense = tmp_path / "projected", tmp_path / "dense"
    assert main(["reindex", "--model", str(tiny_model), "--index", "projected", "--out", str(projected)]) == 0
    assert "served by projected search" in capsys.readouterr().out
    assert load_engine(projected).scorer is not None
    source, copy = (NormalityModel.load(m / "normality") for m in (tiny_model, projected))
    assert copy.projected is not None and copy.config.index == "projected" and source.projected is None
    rng = np.random.default_rng(0)
    g = rng.normal(size=(3, source.global_dim)).astype(np.float32)
    p = rng.normal(size=(3, source.n_patches, source.dim)).astype(np.float32)
    np.testing.assert_array_equal(TokenScorer(copy).scores(g, p, "knnn").conf,
                                  TokenScorer(source).scores(g, p, "knnn").conf)
    assert main(["reindex", "--model", str(projected), "--index", "dense", "--out", str(dense)]) == 0
    assert not (dense / "normality" / "projected.npz").exists() and load_engine(dense).scorer is not None
    assert main(["reindex", "--model", str(tiny_model), "--index", "hnsw", "--out", str(dense)]) == 2
    assert capsys.readouterr().err.strip().endswith("dense: already exists; reindex writes a new model directory")
