"""Backbones on OpenVINO: the export and its cache, outputs equal to torch's, INT8, identity checks, and one error
line without the optional package."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from streamvad.backbones import build_backbone
from streamvad.backbones.openvino_runtime import OpenVINOForward
from streamvad.config import BackboneConfig
from streamvad.errors import ConfigError, ModelMismatchError
from streamvad.normality.manifest import check_backbone

pytest.importorskip("openvino")

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "patch_size": 8, "image_size": 32}


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(n)]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(Dinov2Config(**TINY)).save_pretrained(folder)
    return folder


def _pair(cfg: dict[str, object], cache: Path) -> tuple[object, object]:
    torch_bb = build_backbone(BackboneConfig.model_validate({**cfg, "device": "cpu"}))
    ov_bb = build_backbone(BackboneConfig.model_validate({**cfg, "device": "cpu", "runtime": "openvino",
                                                          "cache_dir": str(cache)}))
    return torch_bb, ov_bb


def test_every_output_matches_torch_and_the_export_is_cached(dinov2: Path, tmp_path: Path) -> None:
    """Global, patches, intermediate layers and CLS attention of a ViT, and a CNN's multi-scale patches: the same
    as torch's (cosine >= 0.999); the second build loads the cached export instead of exporting again."""
    images = _images(5)  # not a multiple of the batch: the export's batch is dynamic
    vit_torch, vit_ov = _pair({"name": "dinov2", "model": str(dinov2), "image_size": (32, 48), "batch_size": 4},
                              tmp_path / "cache")
    kw = {"layers": (1, 2), "attention": True, "attention_layer": 2}
    a, b = vit_torch.embed(images, **kw), vit_ov.embed(images, **kw)
    assert _cos(a.global_, b.global_) >= 0.999 and _cos(a.patches, b.patches) >= 0.999
    assert all(_cos(a.layers[i], b.layers[i]) >= 0.999 for i in (1, 2))
    assert a.attention is not None and b.attention is not None
    assert np.allclose(a.attention, b.attention, atol=1e-4) and b.grid == a.grid == (4, 6)
    exports = sorted((tmp_path / "cache").glob("*.xml"))
    assert len(exports) == 1
    stamp = exports[0].stat().st_mtime_ns
    again = build_backbone(BackboneConfig(name="dinov2", model=str(dinov2), image_size=(32, 48), device="cpu",
                                          runtime="openvino", cache_dir=tmp_path / "cache"))
    assert np.array_equal(again.embed(images, **kw).patches, b.patches)
    assert [p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.xml")] == [stamp]  # loaded, not exported
    cnn_torch, cnn_ov = _pair({"name": "efficientnet-lite0-ms", "image_size": (64, 96)}, tmp_path / "cache")
    a, b = cnn_torch.embed(images), cnn_ov.embed(images)
    assert _cos(a.global_, b.global_) >= 0.999 and _cos(a.patches, b.patches) >= 0.999


def test_a_changed_backbone_or_input_size_is_exported_again(dinov2: Path, tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    other = tmp_path / "other"
    Dinov2Model(Dinov2Config(**TINY)).save_pretrained(other)  # the same architecture, other weights
    cache = tmp_path / "cache"
    for model, size in ((dinov2, (32, 48)), (other, (32, 48)), (dinov2, (48, 48))):
        bb = build_backbone(BackboneConfig(name="dinov2", model=str(model), image_size=size, device="cpu",
                                           runtime="openvino", cache_dir=cache))
        bb.embed(_images(1))
    assert len(list(cache.glob("*.xml"))) == 3


@pytest.mark.slow
def test_int8_is_calibrated_on_normal_frames_and_stays_close(dinov2: Path, tmp_path: Path) -> None:
    frames = tmp_path / "normal" / "exemplars"
    frames.mkdir(parents=True)
    for i, image in enumerate(_images(20, seed=3)):
        Image.fromarray(image).save(frames / f"{i:06d}.jpg")
    cfg = {"name": "efficientnet-lite0-ms", "image_size": (64, 96), "device": "cpu", "runtime": "openvino",
           "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(ConfigError, match=r"^backbone\.calibration: precision int8 needs normal frames"):
        build_backbone(BackboneConfig.model_validate({**cfg, "precision": "int8"})).embed(_images(1))
    fp32 = build_backbone(BackboneConfig.model_validate(cfg))
    int8 = build_backbone(BackboneConfig.model_validate({**cfg, "precision": "int8",
                                                         "calibration": str(tmp_path / "normal")}))
    images = _images(4, seed=4)
    a, b = fp32.embed(images), int8.embed(images)
    assert 0.8 < _cos(a.patches, b.patches) < 0.99999  # quantised: close, not the same
    assert int8.manifest()["precision"] == "int8" and fp32.manifest()["runtime"] == "openvino"
    with pytest.raises(ValueError, match="precision int8 needs runtime: openvino"):
        BackboneConfig(precision="int8")


def test_a_model_is_served_on_the_runtime_it_was_fitted_on(tmp_path: Path) -> None:
    torch_bb = build_backbone(BackboneConfig(name="efficientnet-lite0", image_size=(64, 96), device="cpu"))
    ov_bb = build_backbone(BackboneConfig(name="efficientnet-lite0", image_size=(64, 96), device="cpu",
                                          runtime="openvino", cache_dir=tmp_path))
    with pytest.raises(ModelMismatchError, match="differs in runtime"):
        check_backbone(tmp_path / "model", torch_bb.manifest(), ov_bb.manifest())
    old = {k: v for k, v in torch_bb.manifest().items() if k not in ("runtime", "precision")}
    check_backbone(tmp_path / "model", old, torch_bb.manifest())  # fitted before runtimes were recorded: torch FP32


def test_without_openvino_installed_it_is_one_line_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what an interpreter without the package raises on import
    with pytest.raises(ConfigError, match=r"^backbone\.runtime: openvino needs the 'openvino' package") as err:
        build_backbone(BackboneConfig(name="efficientnet-lite0", image_size=(64, 96), device="cpu",
                                      runtime="openvino"))
    assert "\n" not in str(err.value) and "streamvad[openvino]" in str(err.value)
    assert OpenVINOForward is not None
