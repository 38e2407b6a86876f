"""What every torch backbone shares: device/dtype choice, batching, and the numpy hand-off.

Concrete backbones only implement `_forward` on a preprocessed batch; `embed` here validates the
request once, cuts the frames into `batch_size` chunks (fewer frames a pass on the CPU when a frame's
activations are large, `forward_frames`), and returns float32 numpy whatever precision the network ran in,
so scorers never see torch or bf16.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from streamvad.backbones.preprocess import check_rgb_uint8, preprocess
from streamvad.compute import resolve_device
from streamvad.config import BackboneConfig
from streamvad.errors import ConfigError
from streamvad.types import EmbeddingBatch, FrameKey

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# glibc serves an allocation above 32 MiB (its largest mmap threshold) with fresh pages from the kernel, faulted in
# and zeroed on first touch, on every forward pass; smaller ones reuse the heap's pages.
CPU_ACTIVATION_BYTES = 32 << 20


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on CUDA (fast, no overflow) and fp32 on CPU (bf16 matmuls are slow there)."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


def fingerprint(config_text: str, tensors: Iterable[torch.Tensor]) -> str:
    """Short hash of a model's config and a few of its weights: equal only for the same checkpoint.

    Hashing a handful of tensors (first, middle, last) instead of all of them keeps this instant
    for ViT-H sized models while still telling apart any two different trainings.
    """
    h = hashlib.sha256(config_text.encode())
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_block(index: int, num_layers: int, what: str, name: str) -> None:
    if not 1 <= index <= num_layers:
        raise ConfigError(f"backbone {name}: {what} {index} is out of range, the network has blocks "
                          f"1..{num_layers}")


@dataclass
class Features:
    """One batch's outputs, still as torch tensors on the backbone's device."""

    global_: torch.Tensor  # [B, D]
    patches: torch.Tensor  # [B, N, D]
    attention: torch.Tensor | None = None  # [B, N]
    layers: dict[int, torch.Tensor] = field(default_factory=dict)  # block -> [B, N, D_l]


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


class TorchBackbone(ABC):
    """Base of the concrete backbones; satisfies `streamvad.backbones.base.Backbone`."""

    name: str
    image_size: tuple[int, int]
    grid: tuple[int, int]
    dim: int
    num_layers: int
    kind_of_network = "cnn"  # or "transformer": how INT8 quantisation treats it
    net: torch.nn.Module

    def __init__(self, cfg: BackboneConfig, mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size = (int(cfg.image_size[0]), int(cfg.image_size[1]))
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.batch_size = cfg.batch_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.runtime, self.precision = cfg.runtime, cfg.precision
        self._run: Callable[[torch.Tensor, Sequence[int], bool, int], Features] = self._forward
        if cfg.runtime == "openvino":
            if self.device.type != "cpu":
                raise ConfigError(f"backbone.runtime: openvino runs on the CPU, but backbone.device is {cfg.device}")
            from streamvad.backbones.openvino_runtime import OpenVINOForward

            self._run = OpenVINOForward(self, cfg)

    def identity(self) -> dict[str, str]:
        """How the network ran, part of what a fitted model must match (a model is served as it was fitted)."""
        return {"runtime": self.runtime, "precision": self.precision}

    def pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """A normalised [B, 3, h, w] batch, as the network takes it."""
        return preprocess(images, self.image_size, self.mean, self.std, device=self.device, dtype=self.dtype)

    @abstractmethod
    def _forward(self, pixels: torch.Tensor, layers: Sequence[int], attention: bool,
                 attention_layer: int) -> Features:
        """Run the network on a normalised [B, 3, h, w] batch."""

    @abstractmethod
    def manifest(self) -> dict[str, object]:
        """What a fitted model must match to be served by this backbone."""

    @functools.cached_property
    def forward_frames(self) -> int:
        """Frames a forward pass takes: `batch_size`, or on the CPU (torch runtime) as many as keep the largest
        activation within CPU_ACTIVATION_BYTES. EfficientNet-Lite0 at 224x336 has a 7 MB map a frame: in passes
        of 4 frames it embeds 36-39 frames/s on one thread and 73-76 on two, in passes of 16 23 and 38-43.
        Scoring still takes the whole batch at once."""
        if self.device.type != "cpu" or self.runtime != "torch":
            return self.batch_size
        return max(1, min(self.batch_size, CPU_ACTIVATION_BYTES // max(1, self._largest_activation_bytes())))

    def _largest_activation_bytes(self) -> int:
        """The largest tensor a module of the network returns for one blank frame."""
        largest = 0

        def record(_module: torch.nn.Module, _inputs: object, output: object) -> None:
            nonlocal largest
            for t in output if isinstance(output, tuple) else (output,):
                if isinstance(t, torch.Tensor):
                    largest = max(largest, t.numel() * t.element_size())

        hooks = [m.register_forward_hook(record) for m in self.net.modules()]
        try:
            with torch.inference_mode():
                self._forward(self.pixels([np.zeros((*self.image_size, 3), np.uint8)]), (), False, self.num_layers)
        finally:
            for hook in hooks:
                hook.remove()
        return largest

    def embed(
        self,
        images: Sequence[np.ndarray],
        keys: Sequence[FrameKey] | None = None,
        *,
        layers: Sequence[int] = (),
        attention: bool = False,
        attention_layer: int | None = None,
    ) -> EmbeddingBatch:
        check_rgb_uint8(images)
        if keys is not None and len(keys) != len(images):
            raise ValueError(f"embed: {len(keys)} keys for {len(images)} images")
        layers = tuple(dict.fromkeys(int(i) for i in layers))
        for i in layers:
            check_block(i, self.num_layers, "layer", self.name)
        att_layer = self.num_layers if attention_layer is None else int(attention_layer)
        if attention:
            check_block(att_layer, self.num_layers, "attention_layer", self.name)
        parts: list[Features] = []
        with torch.inference_mode():
            step = self.forward_frames
            for start in range(0, len(images), step):
                pixels = self.pixels(images[start:start + step])
                parts.append(self._run(pixels, layers, attention, att_layer))
        att = [p.attention for p in parts]
        return EmbeddingBatch(
            keys=list(keys) if keys is not None else [FrameKey("", i, 0.0) for i in range(len(images))],
            global_=np.concatenate([_numpy(p.global_) for p in parts]),
            patches=np.concatenate([_numpy(p.patches) for p in parts]),
            grid=self.grid,
            attention=None if any(a is None for a in att) else np.concatenate([_numpy(a) for a in att]),
            layers={i: np.concatenate([_numpy(p.layers[i]) for p in parts]) for i in layers},
        )
