"""Where torch work runs: one rule for every component that takes a `device` setting."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
from threadpoolctl import threadpool_limits

from streamvad.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(setting: str | torch.device, field: str = "backbone.device") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA on a machine without it is a config error on `field`."""
    import torch  # here, not above: what only reads models (serve's supervisor) imports this module too

    if str(setting) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field}: {str(setting)!r} requested but no CUDA device is available")
    return device


def leave_cores_to_torch() -> None:
    """Run numpy's BLAS and OpenCV on one thread each, for the rest of this process.

    Scoring alternates torch's batched searches with small numpy and OpenCV calls (the global projection,
    optical flow of one frame). Each library keeps its own pool of threads, which spin for a while after a
    call, so on a small box the pools take the cores from one another: a worker scoring 16 frames of 8 cameras
    against their 8 models spent 255 ms per batch in scoring with OpenBLAS on 2 threads, 71 ms on 1 (2 cores,
    README: fleet mode). Serving processes call this once; fitting keeps the libraries' defaults.
    """
    threadpool_limits(limits=1, user_api="blas")
    cv2.setNumThreads(1)
