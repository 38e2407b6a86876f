"""Vision transformers from Hugging Face: DINOv2 (with or without registers), ViT and I-JEPA.

Loading (`load_hf_model`) is kept apart from the forward pass (`HFBackbone`), timm style. The model
runs with SDPA attention; the first time a detector asks for CLS attention it is switched to the
eager kernel, which is the one that materialises attention weights, and stays there (a detector that
wants attention wants it on every frame). I-JEPA has no CLS token, so its attention is None.
Intermediate blocks and the attention map are read with forward hooks on just the requested
modules, so asking for one block of a ViT-L at 518 px does not keep all 24 layers' [T, T] maps alive
the way `output_attentions=True` would.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.utils import cached_file

from streamvad.backbones.common import Features, TorchBackbone, fingerprint, resolve_dtype
from streamvad.backbones.preprocess import IMAGENET_MEAN, IMAGENET_STD
from streamvad.backbones.registry import register_backbone
from streamvad.compute import resolve_device
from streamvad.config import BackboneConfig
from streamvad.errors import ConfigError, InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HFKind:
    """How one family lays out its tokens and handles other input sizes."""

    name: str
    model_types: tuple[str, ...]
    has_cls: bool  # I-JEPA has no CLS token: its global feature is the mean patch token
    interpolate_kwarg: bool  # ViT / I-JEPA need interpolate_pos_encoding=True off their trained size
    mean: tuple[float, float, float]  # used when the checkpoint ships no preprocessor_config.json
    std: tuple[float, float, float]


KINDS = {
    "dinov2": HFKind("dinov2", ("dinov2", "dinov2_with_registers"), True, False, IMAGENET_MEAN, IMAGENET_STD),
    "vit": HFKind("vit", ("vit",), True, True, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "ijepa": HFKind("ijepa", ("ijepa",), False, True, IMAGENET_MEAN, IMAGENET_STD),
}


def _looks_like_path(model: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else can only have meant a directory."""
    return (model.startswith((".", "~", os.sep)) or model.count("/") > 1 or "\\" in model
            or (os.altsep is not None and model.startswith(os.altsep)))


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def load_hf_model(model: str, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """`AutoModel.from_pretrained` from a local directory or a hub id, frozen, on `device`."""
    local = Path(model).expanduser()
    if not local.is_dir() and _looks_like_path(model):
        raise InputError(f"backbone model {model!r}: not a local directory (a hub id looks like 'org/name')")
    source = str(local) if local.is_dir() else model
    try:
        net = AutoModel.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
    except (OSError, ValueError) as err:
        where = ("cannot be loaded from that directory" if local.is_dir()
                 else "not a local directory and the hub could not be reached or has no such model")
        raise InputError(f"backbone model {model!r}: {where} ({_first_line(err)})") from None
    return net.to(device).eval().requires_grad_(False)


def load_normalisation(model: str, kind: HFKind) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from the checkpoint's preprocessor_config.json, else the family's published values."""
    local = Path(model).expanduser()
    path = cached_file(str(local) if local.is_dir() else model, "preprocessor_config.json",
                       _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)
    if path is None:
        return kind.mean, kind.std
    conf = json.loads(Path(path).read_text(encoding="utf-8"))
    return tuple(conf.get("image_mean", kind.mean)), tuple(conf.get("image_std", kind.std))


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _recorded_modules(net: PreTrainedModel, output: str) -> list[nn.Module]:
    """The per-block modules transformers itself hooks to record `output` ('hidden_states'/'attentions')."""
    rec = getattr(net, "_can_record_outputs", {}).get(output)
    cls = getattr(rec, "target_class", rec)
    return [m for m in net.modules() if isinstance(cls, type) and isinstance(m, cls)]


@contextmanager
def _capture(modules: dict[int, nn.Module], index: int) -> Iterator[dict[int, torch.Tensor]]:
    """Record element `index` of each module's output (or the output itself if not a tuple)."""
    seen: dict[int, torch.Tensor] = {}

    def hook_for(key: int) -> Callable[[nn.Module, object, object], None]:
        def hook(_m: nn.Module, _inp: object, out: object) -> None:
            seen[key] = out[index] if isinstance(out, tuple) else out  # type: ignore[index]

        return hook

    handles = [m.register_forward_hook(hook_for(k)) for k, m in modules.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


class HFBackbone(TorchBackbone):
    """A frozen Hugging Face ViT-family model behind the `Backbone` contract."""

    kind_of_network = "transformer"

    def __init__(self, cfg: BackboneConfig, kind: HFKind, net: PreTrainedModel,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(cfg, mean, std)
        self.name, self.kind, self.net, self.model_id = cfg.name, kind, net, cfg.model or ""
        conf = net.config
        self.patch_size = _pair(conf.patch_size)
        h, w = self.image_size
        if h % self.patch_size[0] or w % self.patch_size[1]:
            raise ConfigError(f"backbone.image_size: {list(self.image_size)} is not a multiple of the patch "
                              f"size {self.patch_size[0]} of {self.model_id!r}")
        self.grid = (h // self.patch_size[0], w // self.patch_size[1])
        self.dim = int(conf.hidden_size)
        self.num_layers = int(conf.num_hidden_layers)
        self._prefix = int(kind.has_cls) + int(getattr(conf, "num_register_tokens", 0) or 0)
        self._kwargs = ({"interpolate_pos_encoding": True}
                        if kind.interpolate_kwarg and _pair(conf.image_size) != self.image_size else {})
        self._blocks = _recorded_modules(net, "hidden_states")
        self._attn = _recorded_modules(net, "attentions")
        if len(self._blocks) != self.num_layers:
            raise ConfigError(f"backbone {self.name}: cannot locate the {self.num_layers} transformer blocks "
                              f"of {type(net).__name__}")

    def _use_attention_impl(self, impl: str) -> None:
        if self.net.config._attn_implementation != impl:
            log.info("backbone %s: switching attention kernel to %s", self.name, impl)
            self.net.set_attn_implementation(impl)

    def _forward(self, pixels: torch.Tensor, layers: Sequence[int], attention: bool,
                 attention_layer: int) -> Features:
        want_attn = attention and self.kind.has_cls
        if want_attn:
            if len(self._attn) != self.num_layers:
                raise ConfigError(f"backbone {self.name}: {type(self.net).__name__} does not expose attention")
            self._use_attention_impl("eager")
        with (_capture({i: self._blocks[i - 1] for i in layers}, 0) as blocks,
              _capture({attention_layer: self._attn[attention_layer - 1]} if want_attn else {}, 1) as attn):
            tokens = self.net(pixel_values=pixels, **self._kwargs).last_hidden_state
        p = self._prefix
        patches = tokens[:, p:]
        return Features(
            global_=tokens[:, 0] if self.kind.has_cls else patches.mean(dim=1),
            patches=patches,
            # CLS row of the attention matrix, heads averaged; mass on CLS/registers is dropped.
            attention=attn[attention_layer][:, :, 0, p:].mean(dim=1) if want_attn else None,
            layers={i: blocks[i][:, p:] for i in layers},
        )

    def manifest(self) -> dict[str, object]:
        conf = self.net.config
        params = list(self.net.state_dict().values())
        return {
            "name": self.name,
            "kind": self.kind.name,
            "model": self.model_id,
            "model_type": conf.model_type,
            "revision": getattr(conf, "_commit_hash", None),
            "fingerprint": fingerprint(conf.to_json_string(use_diff=False),
                                   [params[0], params[len(params) // 2], params[-1]]),
            "image_size": list(self.image_size),
            "grid": list(self.grid),
            "dim": self.dim,
            "patch_size": list(self.patch_size),
            "num_layers": self.num_layers,
            "mean": list(self.mean),
            "std": list(self.std),
            **self.identity(),
        }


def build_hf_backbone(cfg: BackboneConfig, kind_name: str | None) -> HFBackbone:
    """Load `cfg.model`; `kind_name` None means: detect the family from the checkpoint's config."""
    if not cfg.model:
        raise ConfigError(f"backbone.model: backbone {cfg.name!r} needs a hub id or a local model directory")
    device = resolve_device(cfg.device)
    net = load_hf_model(cfg.model, device, resolve_dtype(cfg.dtype, device))
    model_type = net.config.model_type
    detected = next((k for k in KINDS.values() if model_type in k.model_types), None)
    if detected is None or (kind_name is not None and detected.name != kind_name):
        expected = KINDS[kind_name].model_types if kind_name else [t for k in KINDS.values() for t in k.model_types]
        raise ConfigError(f"backbone.model: {cfg.model!r} is a {model_type!r} model, backbone "
                          f"{cfg.name!r} expects one of {', '.join(expected)}")
    mean, std = load_normalisation(cfg.model, detected)
    return HFBackbone(cfg, detected, net, mean, std)


@register_backbone("dinov2")
def _dinov2(cfg: BackboneConfig) -> HFBackbone:
    return build_hf_backbone(cfg, "dinov2")


@register_backbone("vit")
def _vit(cfg: BackboneConfig) -> HFBackbone:
    return build_hf_backbone(cfg, "vit")


@register_backbone("ijepa")
def _ijepa(cfg: BackboneConfig) -> HFBackbone:
    return build_hf_backbone(cfg, "ijepa")


@register_backbone("hf")
def _auto(cfg: BackboneConfig) -> HFBackbone:
    return build_hf_backbone(cfg, None)
