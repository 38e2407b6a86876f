"""Backbones by name, timm style: one table from a config name to a builder.

Builtin backbones register themselves when their module is imported; the table below only says
which module holds which name, so building `efficientnet-lite0` never pays for importing
transformers, and a plug-in backbone is one `@register_backbone("name")` away.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from streamvad.backbones.base import Backbone
from streamvad.config import BackboneConfig
from streamvad.errors import ConfigError

Builder = Callable[[BackboneConfig], Backbone]

_BUILDERS: dict[str, Builder] = {}
_BUILTIN_MODULES = {
    "dinov2": "streamvad.backbones.hf",
    "vit": "streamvad.backbones.hf",
    "ijepa": "streamvad.backbones.hf",
    "hf": "streamvad.backbones.hf",
    "efficientnet-lite0": "streamvad.backbones.efficientnet_lite",
    "efficientnet-lite0-ms": "streamvad.backbones.efficientnet_lite",
}


def register_backbone(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make `build_backbone` construct `name` with the decorated builder."""

    def add(builder: Builder) -> Builder:
        if _BUILDERS.get(name, builder) is not builder:
            raise ValueError(f"backbone name {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return add


def available_backbones() -> list[str]:
    return sorted(set(_BUILDERS) | set(_BUILTIN_MODULES))


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """Construct (and load the weights of) the backbone `cfg.name` names."""
    if cfg.name not in _BUILDERS and cfg.name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[cfg.name])
    builder = _BUILDERS.get(cfg.name)
    if builder is None:
        raise ConfigError(f"backbone.name: unknown backbone {cfg.name!r}; valid names: "
                          f"{', '.join(available_backbones())}")
    return builder(cfg)
