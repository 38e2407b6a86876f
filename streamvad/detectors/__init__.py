"""Image anomaly detectors hosted next to the k-NNN scorer: UniFormaly, GeneralAD, S2VAD.

Names are resolved lazily (PEP 562) so that `streamvad.config`, which imports
`streamvad.detectors.config`, does not pay for importing torch at start-up.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BaseDetector": "base",
    "Detector": "base",
    "FeatureRequest": "base",
    "upsample_map": "base",
    "DetectorConfig": "config",
    "attention_cutpaste": "cutpaste",
    "pixel_auroc": "cutpaste",
    "DETECTORS": "registry",
    "build_detector": "registry",
    "fit_and_calibrate": "registry",
    "load_detector": "registry",
    "split_holdout": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'streamvad.detectors' has no attribute {name!r}")
    return getattr(import_module(f"streamvad.detectors.{_EXPORTS[name]}"), name)
