"""Where torch work runs: one rule for every component that takes a `device` setting."""

from __future__ import annotations

import torch

from streamvad.errors import ConfigError


def resolve_device(setting: str | torch.device, field: str = "backbone.device") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA on a machine without it is a config error on `field`."""
    if str(setting) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field}: {str(setting)!r} requested but no CUDA device is available")
    return device
