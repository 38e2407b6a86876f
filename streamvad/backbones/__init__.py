"""Frozen feature extractors behind one contract (`Backbone`), built by name from `BackboneConfig`."""

from streamvad.backbones.base import Backbone
from streamvad.backbones.registry import available_backbones, build_backbone, register_backbone

__all__ = ["Backbone", "available_backbones", "build_backbone", "register_backbone"]
