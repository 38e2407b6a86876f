"""Image detectors (UniFormaly, GeneralAD, S2VAD) and APMask cut-paste, on tiny data.

Most tests build `EmbeddingBatch`es directly from toy features whose structure is known, so each
method's claim can be checked exactly (what enters the memory bank, what the discriminator learns,
what the reconstruction fails on). The end-to-end tests use a tiny random DINOv2 saved to disk and
the real backbone registry.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from transformers import Dinov2Config, Dinov2Model

from streamvad.backbones import Backbone, build_backbone
from streamvad.config import BackboneConfig, parse_config
from streamvad.detectors import (
    BaseDetector,
    Detector,
    DetectorConfig,
    attention_cutpaste,
    build_detector,
    fit_and_calibrate,
    load_detector,
    pixel_auroc,
    split_holdout,
    upsample_map,
)
from streamvad.detectors.config import GeneralADConfig, S2VADConfig, UniformalyConfig, scale_layers
from streamvad.detectors.cutpaste import mask_to_grid
from streamvad.detectors.generalad import distort
from streamvad.detectors.memory_bank import greedy_coreset, nearest_sqdist
from streamvad.detectors.s2vad import hard_mined_cosine_loss
from streamvad.errors import ConfigError, ModelMismatchError, StreamVADError
from streamvad.types import EmbeddingBatch, FrameKey

GRID = (4, 4)
N, D = 16, 32
TOY_RNG = np.random.default_rng(1234)
BASIS = TOY_RNG.normal(size=(4, D))  # normal variation lives in a 4-dim subspace
MEAN = TOY_RNG.normal(size=(N, D))  # each position has its own typical feature


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy(frames: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """Normal toy patch features [frames, N, D]; `shift` moves them off the normal manifold."""
    rng = np.random.default_rng(seed)
    x = MEAN + 0.15 * rng.normal(size=(frames, N, 4)) @ BASIS + shift * rng.normal(size=(1, 1, D))
    return (scale * x).astype(np.float32)


def batch(x: np.ndarray, *, layers: tuple[int, ...] = (1, 2), attention: np.ndarray | None = None,
          start: int = 0) -> EmbeddingBatch:
    """An EmbeddingBatch whose intermediate layers are affine copies of the patches."""
    keys = [FrameKey("cam", start + i, (start + i) / 4) for i in range(len(x))]
    return EmbeddingBatch(keys, x.mean(axis=1), x, GRID, attention,
                          {layer: (x * (1 + 0.1 * layer) + 0.01 * layer).astype(np.float32) for layer in layers})


def batches(frames: int, seed: int, size: int = 16, **kw: object) -> list[EmbeddingBatch]:
    x = toy(frames, seed, **kw)  # type: ignore[arg-type]
    return [batch(x[s : s + size], start=s) for s in range(0, frames, size)]


TINY = {
    "uniformaly": DetectorConfig(name="uniformaly", uniformaly=UniformalyConfig(coreset_ratio=0.5)),
    "generalad": DetectorConfig(name="generalad", generalad=GeneralADConfig(hidden_dim=64, epochs=3, lr=2e-3)),
    "s2vad": DetectorConfig(name="s2vad", s2vad=S2VADConfig(decoder_depth=2, num_heads=4, iterations=30,
                                                            warmup_iters=5, hard_mining_ramp=20, batch_size=8)),
}


def tiny(name: str) -> BaseDetector:
    return build_detector(name, TINY[name], num_layers=2, device="cpu", backbone_manifest={"name": "toy", "dim": D})


# --- shared pieces ----------------------------------------------------------------------------------


def test_layers_scale_with_backbone_depth() -> None:
    assert scale_layers(range(2, 10), 12) == (3, 4, 5, 6, 7, 8, 9, 10)  # hidden_states[3..10] of ViT-B
    assert scale_layers(range(2, 10), 24) == (6, 8, 10, 12, 14, 16, 18, 20)
    assert scale_layers(range(2, 10), 2) == (1, 2)
    assert build_detector("uniformaly", num_layers=12, device="cpu").requirements().attention_layer == 10


def test_upsample_map_is_pixel_aligned_and_blurred() -> None:
    m = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(m)[None, None], size=(32, 48), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(upsample_map(m, (32, 48), sigma=0), ref[0, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(upsample_map(np.full((3, 3), 2.0), (30, 20), sigma=3), 2.0, rtol=1e-6)
    hot = np.zeros((4, 4))
    hot[1, 2] = 1.0
    out = upsample_map(hot, (64, 64), sigma=4)
    y, x = np.unravel_index(out.argmax(), out.shape)
    assert 16 <= y < 32 and 32 <= x < 48  # the peak stays inside its own patch
    assert out.max() < 1.0  # and is blurred


def test_greedy_coreset_covers_every_cluster() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 64)) * 20
    sizes = [2000, 5, 5, 5, 5]  # random subsampling would almost surely miss the small clusters
    pts = np.concatenate([c + rng.normal(size=(s, 64)) for c, s in zip(centres, sizes, strict=True)])
    labels = np.repeat(np.arange(5), sizes)
    idx = greedy_coreset(torch.from_numpy(pts).float(), 5, projection_dim=16,
                         generator=torch.Generator().manual_seed(0)).numpy()
    assert sorted(labels[idx]) == [0, 1, 2, 3, 4]


def test_nearest_sqdist_matches_cdist_across_chunks() -> None:
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(37, 8, generator=g), torch.randn(53, 8, generator=g)
    expected = torch.cdist(q, bank).min(dim=1).values ** 2
    torch.testing.assert_close(nearest_sqdist(q, bank, chunk=10), expected, atol=1e-4, rtol=1e-4)


def test_build_detector_rejects_unknown_names_in_one_line() -> None:
    with pytest.raises(ConfigError, match="built-in normality scorer"):
        build_detector("knnn")
    with pytest.raises(ConfigError, match=r"^detector\.name: unknown detector 'nope'"):
        build_detector("nope")


def test_config_section_is_additive_and_strict() -> None:
    assert parse_config({}).detector is None
    cfg = parse_config({"detector": {"name": "s2vad", "s2vad": {"iterations": 7}}})
    assert cfg.detector is not None and cfg.detector.s2vad.iterations == 7
    with pytest.raises(ConfigError, match=r"detector\.generalad\.epoch: unknown key"):
        parse_config({"detector": {"generalad": {"epoch": 3}}})


def test_missing_layers_or_other_grid_are_model_mismatches() -> None:
    det = tiny("uniformaly")
    with pytest.raises(ModelMismatchError, match=r"lacks layers \[2\]"):
        det.fit([batch(toy(4, 0), layers=(1,))], progress=False)
    det.fit(batches(16, 0), progress=False)
    x = toy(2, 1).reshape(2, 2, 8, D)[:, 0]  # 8 patches on a 2x4 grid
    other = EmbeddingBatch([FrameKey("c", i, 0.0) for i in range(2)], x.mean(1), x, (2, 4), None,
                           {1: x, 2: x})
    with pytest.raises(ModelMismatchError, match=r"fitted on a \(4, 4\) patch grid"):
        det.score_maps(other)


# --- UniFormaly ------------------------------------------------------------------------------------


def _foreground_attention(frames: int) -> np.ndarray:
    """CLS attention on the left half of the 4x4 grid only, so masking keeps exactly that half."""
    att = np.zeros((frames, *GRID), dtype=np.float32)
    att[:, :, :2] = 1.0 / 8
    return att.reshape(frames, N)


def test_uniformaly_masked_out_patches_neither_enter_the_bank_nor_score() -> None:
    det = build_detector("uniformaly", DetectorConfig(uniformaly=UniformalyConfig(coreset_ratio=1.0, mask_filter=1)),
                         num_layers=2, device="cpu")
    x = toy(8, 0)
    x.reshape(8, *GRID, D)[:, :, 2:] = 100.0  # background patches carry a value no normal patch has
    det.fit([batch(x, attention=_foreground_attention(8))], progress=False)
    assert det.bank is not None and det.bank.shape[0] == 8 * 8  # only the 8 foreground patches per frame
    assert float(det.bank.max()) < 50.0  # none of the background rows made it in

    test = toy(2, 1)
    test.reshape(2, *GRID, D)[:, :, 3] += 50.0  # a huge anomaly, but in the masked-out background
    image, patch = det.score_maps(batch(test, attention=_foreground_attention(2)))
    assert np.all(patch.reshape(2, *GRID)[:, :, 2:] == 0.0)
    test.reshape(2, *GRID, D)[:, 1, 1] += 50.0  # the same anomaly in the foreground counts
    image_fg, patch_fg = det.score_maps(batch(test, attention=_foreground_attention(2)))
    assert np.all(image_fg > 100 * image) and np.all(patch_fg.argmax(axis=1) == 5)


def test_uniformaly_default_mask_filter_is_smooth_and_per_frame() -> None:
    det = build_detector("uniformaly", num_layers=2, device="cpu")
    att = np.full((2, N), 1e-4, dtype=np.float32)
    att[0, 0] = 1.0  # one sharp spike in a corner
    att[1] *= 1000  # a frame whose attention is uniformly larger: per-frame max keeps it all in
    mask = det.patch_mask(batch(toy(2, 0), attention=att)).numpy().reshape(2, *GRID)
    assert mask[0, :4, :4].sum() == 16  # 7x7 mean filter spreads the spike over the whole 4x4 grid
    assert mask[1].all()
    no_attention = det.patch_mask(batch(toy(2, 0))).numpy()
    assert no_attention.all()  # CNN backbones: no masking


# --- calibration, verdicts, persistence ------------------------------------------------------------


def test_calibration_uses_only_held_out_normal_frames() -> None:
    data = batches(64, 0)
    train, held = split_holdout(data, 0.25)
    assert [k.index for b in held for k in b.keys] == list(range(48, 64))  # the last quarter, in order
    assert [k.index for b in train for k in b.keys] == list(range(48))

    det = tiny("uniformaly")
    with pytest.raises(StreamVADError, match="not fitted"):
        det.score(data[0])
    threshold = fit_and_calibrate(det, data, holdout_fraction=0.25, quantile=0.9, progress=False)
    held_scores = np.concatenate([det.score_maps(b)[0] for b in held])
    assert threshold == pytest.approx(float(np.quantile(held_scores, 0.9)))
    verdicts = [v for b in held for v in det.score(b)]
    assert sum(v.anomalous for v in verdicts) == int((held_scores > threshold).sum()) <= 2
    shifted = det.score(batch(toy(8, 5, shift=1.0)))
    assert all(v.anomalous for v in shifted)


def test_hold_out_is_whole_clips_as_for_the_knn_model() -> None:
    """One hold-out policy for every model: with several clips, whole clips are held out (the same ones the
    k-NN fit would hold out), and the batches keep their size."""
    from streamvad.scoring.folds import holdout_mask

    data = batches(64, 0)  # 4 batches of 16
    clip_ids = np.repeat(np.arange(4), 16)
    train, held = split_holdout(data, 0.25, clip_ids)
    held_rows = [k.index for b in held for k in b.keys]
    assert held_rows == list(np.flatnonzero(holdout_mask(clip_ids, 4, 0.25))) == list(range(48, 64))
    assert [len(b) for b in train] == [16, 16, 16] and [len(b) for b in held] == [16]
    shuffled = np.array([0, 1, 2, 3] * 16)  # clip 3's frames spread over every batch: all of them still go
    _, held = split_holdout(data, 0.25, shuffled)
    assert sorted(k.index for b in held for k in b.keys) == list(range(3, 64, 4))


def test_verdict_confidences_use_the_calibrated_scale() -> None:
    det = tiny("uniformaly")
    data = batches(48, 0)
    fit_and_calibrate(det, data, holdout_fraction=0.25, progress=False)
    test = batch(toy(4, 9, shift=0.3))
    images, raw = det.score_maps(test)
    verdicts = det.score(test)
    thr, low = det.threshold, det.patch_low
    for v, image, patch in zip(verdicts, images, raw, strict=True):
        expected = np.clip((patch - low) / (2 * (thr - low)), 0, 1)
        np.testing.assert_allclose(v.patch_confidences, expected, rtol=1e-5)
        assert v.score == v.raw_score == pytest.approx(image)
        assert v.anomalous == (image > thr) and v.unsafe_patches == int((patch > thr).sum())
        assert v.heatmap.shape == GRID and v.decided_by.startswith("uniformaly@")


@pytest.mark.parametrize("name", list(TINY))
def test_save_load_gives_identical_scores(name: str, tmp_path: Path) -> None:
    det = tiny(name)
    assert isinstance(det, Detector)
    fit_and_calibrate(det, batches(48, 0), progress=False)
    test = batch(toy(4, 3, shift=0.5))
    det.save(tmp_path / name)

    manifest = json.loads((tmp_path / name / "manifest.json").read_text())
    assert manifest["detector"] == name and manifest["threshold"] == det.threshold
    assert manifest["backbone"] == {"name": "toy", "dim": D}
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["manifest.json", "state.safetensors"]

    loaded = load_detector(tmp_path / name, device="cpu", backbone_manifest={"name": "toy", "dim": D})
    for a, b in zip(det.score_maps(test), loaded.score_maps(test), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [v.anomalous for v in det.score(test)] == [v.anomalous for v in loaded.score(test)]
    with pytest.raises(ModelMismatchError, match="backbone dim=32"):
        load_detector(tmp_path / name, device="cpu", backbone_manifest={"name": "toy", "dim": 64})


def test_load_detector_explains_a_wrong_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelMismatchError, match="no detector manifest"):
        load_detector(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": 99, "detector": "s2vad"}')
    with pytest.raises(ModelMismatchError, match="unsupported detector format 99"):
        load_detector(tmp_path)


# --- GeneralAD -------------------------------------------------------------------------------------


def test_distortions_label_exactly_the_touched_patches() -> None:
    g = torch.Generator().manual_seed(0)
    clean = torch.from_numpy(toy(8, 0))
    noisy, labels = distort(clean, None, "random", 0.25, g)
    changed = (noisy != clean).any(dim=-1).float()
    assert torch.equal(changed, labels) and labels.sum(dim=1).min() >= 1
    _, labels_all = distort(clean, None, "noise_all", 0.25, g)
    assert labels_all.all()
    attention = torch.arange(N, dtype=torch.float32).expand(8, N)  # the last patches are most attended
    shuffled, moved = distort(clean, attention, "attention_shuffle", 0.25, g)
    assert torch.equal((shuffled != clean).any(dim=-1).float(), moved)
    first_moved = torch.where(moved.any(dim=0))[0].min()
    assert first_moved > 0 and torch.equal(shuffled[:, :first_moved], clean[:, :first_moved])
    assert torch.allclose(shuffled.sum(dim=1), clean.sum(dim=1), atol=1e-4)  # a permutation, no noise


def test_generalad_learns_to_spot_distorted_features() -> None:
    cfg = DetectorConfig(generalad=GeneralADConfig(hidden_dim=64, epochs=5, lr=2e-3))
    det = build_detector("generalad", cfg, num_layers=2, device="cpu")
    det.fit(batches(128, 0, scale=0.1), progress=False)
    clean = torch.from_numpy(toy(32, 77, scale=0.1))
    fake, labels = distort(clean, None, "random", 0.25, torch.Generator().manual_seed(5))
    _, clean_map = det.score_maps(batch(clean.numpy()))
    _, fake_map = det.score_maps(batch(fake.numpy()))
    y = np.concatenate([np.zeros(clean_map.size), labels.numpy().ravel()])
    auroc = roc_auc_score(y, np.concatenate([clean_map.ravel(), fake_map.ravel()]))
    assert auroc > 0.9


def test_generalad_is_deterministic_given_a_seed() -> None:
    a, b = tiny("generalad"), tiny("generalad")
    data = batches(32, 0)
    a.fit(data, progress=False)
    b.fit(data, progress=False)
    test = batch(toy(2, 1))
    np.testing.assert_array_equal(a.score_maps(test)[1], b.score_maps(test)[1])


# --- S2VAD -----------------------------------------------------------------------------------------


def test_hard_mining_scales_only_the_easy_points_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(2, 10, 8, generator=g)
    dec0 = torch.randn(2, 10, 8, generator=g)

    def grad(p: float) -> torch.Tensor:
        dec = dec0.clone().requires_grad_(True)
        hard_mined_cosine_loss(enc, dec, p, 0.1).backward()
        return dec.grad  # type: ignore[return-value]

    full, mined = grad(0.0), grad(0.7)
    dist = 1 - F.cosine_similarity(enc, dec0, dim=-1)
    hard = dist >= dist.flatten().topk(6).values[-1]  # the hardest 30% of 20 points keep their gradient
    assert int(hard.sum()) == 6
    torch.testing.assert_close(mined[hard], full[hard])
    torch.testing.assert_close(mined[~hard], 0.1 * full[~hard])


def test_s2vad_learns_to_reconstruct_normal_features_only() -> None:
    cfg = DetectorConfig(s2vad=S2VADConfig(decoder_depth=2, num_heads=4, iterations=120, warmup_iters=10,
                                           hard_mining_ramp=50, batch_size=8))
    det = build_detector("s2vad", cfg, num_layers=2, device="cpu")
    det.fit(batches(64, 0), progress=False)
    losses = det.loss_history
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    normal, _ = det.score_maps(batch(toy(16, 50)))
    shifted, _ = det.score_maps(batch(toy(16, 51, shift=1.0)))
    assert roc_auc_score(np.r_[np.zeros(16), np.ones(16)], np.r_[normal, shifted]) > 0.95


# --- cut-paste ------------------------------------------------------------------------------------


def _texture(seed: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xx = np.mgrid[: size[0], : size[1]][1]
    stripes = np.sin((xx + rng.uniform(0, 8)) * 2 * np.pi / 8)[..., None] * np.array([1.0, 0.5, 0.2])
    return np.clip(128 + 60 * stripes + rng.normal(0, 5, (*size, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(5))
def test_cutpaste_mask_is_exactly_where_pixels_changed(seed: int) -> None:
    image = np.random.default_rng(seed).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    out, mask = attention_cutpaste(image, None, np.random.default_rng(seed))
    changed = (out != image).any(axis=-1)
    assert out.shape == image.shape and out.dtype == np.uint8 and mask.any()
    assert not (changed & ~mask).any()  # nothing outside the mask moved
    assert changed[mask].mean() > 0.9  # and inside it, pixels are new (random noise rarely repeats)
    again, mask_again = attention_cutpaste(image, None, np.random.default_rng(seed))
    assert np.array_equal(again, out) and np.array_equal(mask_again, mask)  # deterministic per seed


def test_cutpaste_pastes_where_the_cls_token_looks() -> None:
    attention = np.zeros((8, 8))
    attention[6:, 6:] = 1.0  # only the bottom-right corner is salient
    image = _texture(0, (128, 128))
    rng = np.random.default_rng(0)
    centres = [np.argwhere(attention_cutpaste(image, attention, rng)[1]).mean(axis=0) for _ in range(20)]
    # a z-scored softmax puts ~80% of the mass on the 4 salient cells of 64 (see cutpaste.py)
    assert np.mean([c[0] > 64 and c[1] > 64 for c in centres]) >= 0.7
    uniform = [np.argwhere(attention_cutpaste(image, None, rng)[1]).mean(axis=0) for _ in range(40)]
    assert np.mean([c[0] > 64 and c[1] > 64 for c in uniform]) < 0.45


def test_mask_to_grid_counts_pasted_pixels_per_patch() -> None:
    mask = np.zeros((16, 16), dtype=bool)
    mask[:8, :4] = True
    np.testing.assert_allclose(mask_to_grid(mask, (2, 2)), [0.5, 0.0, 0.0, 0.0])


# --- with a real (tiny) backbone --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=64)).save_pretrained(path)
    return build_backbone(BackboneConfig(name="dinov2", model=str(path), image_size=(64, 64), device="cpu"))


def test_uniformaly_localises_cutpaste_anomalies_on_a_real_backbone(tiny_dinov2: Backbone) -> None:
    det = build_detector("uniformaly", TINY["uniformaly"], num_layers=tiny_dinov2.num_layers, device="cpu",
                         backbone_manifest=tiny_dinov2.manifest())
    req = det.requirements()
    assert req.layers == (1, 2) and req.attention and req.attention_layer == 2

    def embed(images: list[np.ndarray]) -> EmbeddingBatch:
        return tiny_dinov2.embed(images, **req.embed_kwargs())

    det.fit([embed([_texture(i) for i in range(32)])], progress=False)
    auroc = pixel_auroc(det, embed, [_texture(100 + i) for i in range(8)], np.random.default_rng(1))
    assert auroc > 0.8


def test_generalad_trains_on_cutpaste_fakes_from_images(tiny_dinov2: Backbone) -> None:
    cfg = DetectorConfig(generalad=GeneralADConfig(hidden_dim=64, epochs=2, cutpaste=True, num_heads=4))
    det = build_detector("generalad", cfg, num_layers=tiny_dinov2.num_layers, device="cpu")
    images = [_texture(i) for i in range(16)]
    normal = tiny_dinov2.embed(images, **det.requirements().embed_kwargs())
    with pytest.raises(ConfigError, match="cutpaste: needs an embed_fn"):
        det.fit([normal], progress=False)

    det = build_detector("generalad", cfg, num_layers=tiny_dinov2.num_layers, device="cpu",
                         embed_fn=lambda ims: tiny_dinov2.embed(ims, **det.requirements().embed_kwargs()))
    fakes = det._cutpaste_set(images)
    assert fakes is not None and fakes[0].shape == (16, 64, 32)
    assert 0 < float(fakes[1].mean()) < 0.5  # some, not all, patches are marked pasted
    det.fit([normal], progress=False, images=images)
    assert det.fitted and det.score_maps(normal)[1].shape == (16, 64)
