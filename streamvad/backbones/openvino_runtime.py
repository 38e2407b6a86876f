"""Backbones on OpenVINO (`backbone.runtime: openvino`), FP32 or INT8 (`backbone.precision`), for CPU sites.

The same torch module every backbone runs is exported once, with OpenVINO's converter, for each set of
outputs a worker asks for (global and patch embeddings, and any intermediate layers or CLS attention its
detectors need), with a dynamic batch. The export is cached under `backbone.cache_dir`
(~/.cache/streamvad/openvino), keyed by the backbone's fingerprint, input size, outputs and precision, so a
changed network or input size is exported again, and compiled for the CPU at start-up. Model versions never
hold it: they stay immutable and hash-verified, while an export belongs to the box that runs it.

INT8 is NNCF's post-training quantisation, calibrated once per backbone (not per camera: every camera on a
worker shares its forward pass) on normal frames: the images under `backbone.calibration`, a folder searched
recursively, for a site its models' exemplar pictures or its enrolment footage, for a benchmark the training
frames. Preprocessing, resizing and everything after the forward pass stay as in torch, so the scorers see
the same arrays whichever runtime ran.

openvino and nncf are an optional extra (`pip install 'streamvad[openvino]'`); without them a config that asks
for this runtime is one error line naming the package.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from streamvad.config import BackboneConfig
from streamvad.errors import ConfigError, InputError

if TYPE_CHECKING:
    from streamvad.backbones.common import Features, TorchBackbone

log = logging.getLogger(__name__)

CALIBRATION_FRAMES = 300  # NNCF's default subset size
_EXTRA = "pip install 'streamvad[openvino]' (openvino and nncf)"


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamvad" / "openvino"


def _require(package: str) -> Any:
    try:
        return __import__(package)
    except ImportError:
        raise ConfigError(f"backbone.runtime: openvino needs the {package!r} package, which is not installed; "
                          f"{_EXTRA}") from None


class _Outputs(nn.Module):
    """The backbone's forward pass for one set of outputs, as a module with a tuple of tensors to export."""

    def __init__(self, backbone: TorchBackbone, layers: tuple[int, ...], attention: bool, attention_layer: int):
        super().__init__()
        self.backbone, self.layers, self.attention, self.attention_layer = backbone, layers, attention, attention_layer

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.backbone._forward(pixels, self.layers, self.attention, self.attention_layer)
        extra = [f.attention] if self.attention and f.attention is not None else []
        return (f.global_, f.patches, *extra, *(f.layers[i] for i in self.layers))


class OpenVINOForward:
    """Runs a TorchBackbone's `_forward` as compiled OpenVINO models, one per requested set of outputs."""

    def __init__(self, backbone: TorchBackbone, cfg: BackboneConfig) -> None:
        self.ov = _require("openvino")
        if cfg.precision == "int8":
            _require("nncf")
        self.backbone = backbone
        self.precision = cfg.precision
        self.cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
        self.calibration = cfg.calibration
        self._compiled: dict[tuple[tuple[int, ...], bool, int], Any] = {}
        self._core = self.ov.Core()

    def key(self, layers: tuple[int, ...], attention: bool, attention_layer: int) -> str:
        """The cache entry of one export: fingerprint, input size, outputs and precision."""
        identity = self.backbone.manifest()
        what = {"fingerprint": identity["fingerprint"], "name": identity["name"], "image_size": identity["image_size"],
                "layers": list(layers), "attention": attention, "attention_layer": attention_layer,
                "precision": self.precision, "openvino": self.ov.get_version()}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]

    def path(self, layers: tuple[int, ...], attention: bool, attention_layer: int) -> Path:
        name = f"{self.backbone.name}-{self.key(layers, attention, attention_layer)}-{self.precision}.xml"
        return self.cache / name

    def _export(self, layers: tuple[int, ...], attention: bool, attention_layer: int) -> Path:
        """Export (and for INT8 quantise) the outputs once; later starts load the cached IR."""
        path = self.path(layers, attention, attention_layer)
        if path.is_file():
            return path
        h, w = self.backbone.image_size
        module = _Outputs(self.backbone, layers, attention, attention_layer).eval()
        example = torch.zeros(2, 3, h, w, dtype=torch.float32)
        log.info("backbone %s: exporting to OpenVINO (%s) into %s", self.backbone.name, self.precision, self.cache)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # tracing freezes the input's height and width, which is what is wanted: only the batch is dynamic
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            model = self.ov.convert_model(module, example_input=example, input=[(-1, 3, h, w)])
        if self.precision == "int8":
            model = self._quantise(model)
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.xml")
        self.ov.save_model(model, str(tmp), compress_to_fp16=False)
        tmp.with_suffix(".bin").replace(path.with_suffix(".bin"))
        tmp.replace(path)  # the .xml last: a cache entry with an .xml is complete
        return path

    def _quantise(self, model: Any) -> Any:
        import nncf

        frames = calibration_frames(self.calibration, CALIBRATION_FRAMES)
        pixels = [self.backbone.pixels([f]).numpy() for f in frames]
        log.info("backbone %s: quantising to INT8 on %d normal frames from %s", self.backbone.name, len(pixels),
                 self.calibration)
        kind = nncf.ModelType.TRANSFORMER if self.backbone.kind_of_network == "transformer" else None
        return nncf.quantize(model, nncf.Dataset(pixels), subset_size=len(pixels), model_type=kind)

    def __call__(self, pixels: torch.Tensor, layers: Sequence[int], attention: bool,
                 attention_layer: int) -> Features:
        from streamvad.backbones.common import Features

        key = (tuple(layers), attention, attention_layer)
        if key not in self._compiled:
            # f32: the CPU plugin otherwise runs bf16 where the chip has it (AMX), which is not FP32's outputs
            self._compiled[key] = self._core.compile_model(str(self._export(*key)), "CPU",
                                                           {"INFERENCE_PRECISION_HINT": "f32"})
        out = self._compiled[key](np.ascontiguousarray(pixels.to(torch.float32).numpy()))
        values = [torch.from_numpy(np.asarray(out[i])) for i in range(len(out))]
        n_attention = int(attention and len(values) > 2 + len(key[0]))
        return Features(global_=values[0], patches=values[1], attention=values[2] if n_attention else None,
                        layers={i: values[2 + n_attention + j] for j, i in enumerate(key[0])})


def calibration_frames(folder: Path | None, most: int) -> list[np.ndarray]:
    """Up to `most` normal frames under `folder` (searched recursively), spread evenly over what is there."""
    from streamvad.sources.images import IMAGE_SUFFIXES, read_image

    if folder is None:
        raise ConfigError("backbone.calibration: precision int8 needs normal frames to calibrate on: a folder of "
                          "them (searched recursively), e.g. a model store, whose exemplars/ are training frames")
    paths = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"{folder}: backbone.calibration has no images to calibrate INT8 on")
    chosen = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(most, len(paths)))]
    return [read_image(p) for p in chosen]
