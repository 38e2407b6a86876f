"""Detector settings, with the defaults of /work/shared/design/DETECTORS.md.

Layer and block indices are given for a 12-block reference ViT (ViT-B) and are rescaled to the
depth of the backbone actually used (see `scale_layers`), so one config serves ViT-S/B/L alike.
Map blur widths are given in pixels at each method's reference input size and scale with the
size the map is drawn at, so a heatmap looks the same whatever the output resolution.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

REFERENCE_DEPTH = 12  # the specs' block numbers refer to a 12-block ViT-B


class _DetectorSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0


class UniformalyConfig(_DetectorSection):
    """UniFormaly: masked multi-layer patch memory bank (PatchCore-style) with 1-NN distance."""

    first_block: int = Field(2, ge=0)  # 0-indexed, inclusive (hidden_states[3])
    last_block: int = Field(9, ge=0)  # 0-indexed, inclusive (hidden_states[10])
    attention_block: int = Field(9, ge=0)  # 0-indexed block whose CLS attention builds the mask
    masking: bool = True
    mask_filter: int = Field(7, ge=1)  # odd mean-filter width on the patch grid
    mask_threshold: float = Field(0.1, ge=0.0, lt=1.0)
    coreset_ratio: float = Field(0.1, gt=0.0, le=1.0)
    projection_dim: int = Field(128, ge=1)
    top_ratio: float = Field(0.05, gt=0.0, le=1.0)
    map_sigma: float = Field(4.0, ge=0.0)
    map_reference: int = Field(224, ge=1)
    chunk_size: int = Field(4096, ge=1)  # query / bank rows per distance block

    @model_validator(mode="after")
    def _blocks(self) -> UniformalyConfig:
        if self.last_block < self.first_block:
            raise ValueError(f"last_block ({self.last_block}) must be >= first_block ({self.first_block})")
        if self.mask_filter % 2 == 0:
            raise ValueError(f"mask_filter must be odd, got {self.mask_filter}")
        return self


class GeneralADConfig(_DetectorSection):
    """GeneralAD: a patch discriminator trained to spot distorted features among clean ones."""

    distortion: Literal["random", "noise_all", "attention_shuffle"] = "random"
    noise_std: float = Field(0.25, gt=0.0)
    num_heads: int = Field(4, ge=1)
    hidden_dim: int = Field(2048, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    lr: float = Field(5e-4, gt=0.0)
    weight_decay: float = Field(1e-5, ge=0.0)
    lr_final_ratio: float = Field(0.2, gt=0.0, le=1.0)
    batch_size: int = Field(16, ge=1)
    epochs: int = Field(160, ge=1)
    top_k: int = Field(10, ge=1)  # image score = mean of the top-K patch logits
    cutpaste: bool = False  # add APMask-style image-space fakes (needs images and an embed function)
    cutpaste_min_overlap: float = Field(0.25, gt=0.0, le=1.0)  # pasted fraction that marks a patch fake
    map_sigma: float = Field(16.0, ge=0.0)
    map_reference: int = Field(518, ge=1)


class S2VADConfig(_DetectorSection):
    """S2VAD / Dinomaly: reconstruct encoder feature groups through a noisy bottleneck."""

    first_block: int = Field(2, ge=0)
    last_block: int = Field(9, ge=0)
    bottleneck_ratio: int = Field(4, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    decoder_depth: int = Field(8, ge=2)
    num_heads: int = Field(12, ge=1)
    mlp_ratio: float = Field(4.0, gt=0.0)
    lr: float = Field(2e-3, gt=0.0)
    lr_final: float = Field(2e-4, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_iters: int = Field(100, ge=0)
    iterations: int = Field(5000, ge=1)
    batch_size: int = Field(16, ge=1)
    grad_clip: float = Field(0.1, gt=0.0)
    hard_mining_max: float = Field(0.9, ge=0.0, le=1.0)
    hard_mining_ramp: int = Field(1000, ge=1)  # p = min(max * iter / ramp, max)
    easy_grad_factor: float = Field(0.1, ge=0.0, le=1.0)
    top_ratio: float = Field(0.01, gt=0.0, le=1.0)  # image score = mean of the top 1% map pixels
    pixels_per_patch: int = Field(14, ge=1)  # map resolution the image score is taken at
    map_sigma: float = Field(4.0, ge=0.0)
    map_reference: int = Field(392, ge=1)

    @model_validator(mode="after")
    def _blocks(self) -> S2VADConfig:
        if self.last_block < self.first_block:
            raise ValueError(f"last_block ({self.last_block}) must be >= first_block ({self.first_block})")
        if self.decoder_depth % 2:
            raise ValueError(f"decoder_depth must be even (two groups), got {self.decoder_depth}")
        return self


DetectorName = Literal["knnn", "uniformaly", "generalad", "s2vad"]


class DetectorConfig(BaseModel):
    """`detector:` section: which detector the worker hosts and the settings of each.

    "knnn" is the built-in normality scorer (streamvad.normality), which needs no detector here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: DetectorName = "knnn"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    calibration_quantile: float = Field(0.99, gt=0.0, lt=1.0)
    holdout_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    uniformaly: UniformalyConfig = UniformalyConfig()
    generalad: GeneralADConfig = GeneralADConfig()
    s2vad: S2VADConfig = S2VADConfig()


def scale_layers(blocks: range | list[int], depth: int) -> tuple[int, ...]:
    """Map 0-indexed blocks of the 12-block reference to 1-based `hidden_states` indices at `depth`.

    Block b of the reference is hidden_states[b + 1]; at another depth it becomes
    round((b + 1) * depth / 12), clipped to [1, depth], duplicates dropped. A 24-block ViT-L thus
    uses every second block from 6 to 20, and a 2-block test model uses blocks 1 and 2.
    """
    if depth < 1:
        raise ValueError(f"backbone depth must be >= 1, got {depth}")
    out = [min(depth, max(1, int((b + 1) * depth / REFERENCE_DEPTH + 0.5))) for b in blocks]
    return tuple(sorted(set(out)))
