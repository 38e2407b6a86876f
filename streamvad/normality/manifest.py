"""The normality model's manifest: its format, its backbone's identity, and the checks on both.

Kept apart from the model (k-Means on torch, HDBSCAN on scikit-learn, Chroma) so that what only reads a manifest,
the model store, the fleet's backbone check and serve's supervisor, imports none of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamvad.errors import InputError, ModelMismatchError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BACKBONE_KEYS = ("name", "model", "fingerprint", "image_size", "grid", "dim", "runtime", "precision")
# how a backbone ran before runtimes were recorded: a model fitted then was fitted on torch in FP32
_RAN = {"runtime": "torch", "precision": "fp32"}
_REQUIRED = ("format", "backbone", "grid", "n_patches", "dim", "n_train", "index", "hdbscan_tokens", "k",
             "silhouette", "thresholds", "versions", "created_at", "config")


def plain(value: Any) -> Any:
    """JSON-normalised value (tuples become lists) so manifests compare equal to live dicts."""
    return json.loads(json.dumps(value, default=str))


def _describe(backbone: dict[str, Any]) -> str:
    name = " ".join(str(backbone[k]) for k in ("name", "model") if backbone.get(k))
    ran = {**_RAN, **backbone}
    return f"{name or '?'} (grid {backbone.get('grid', '?')}, D {backbone.get('dim', '?')}, {ran['runtime']} " \
           f"{ran['precision']})"


def backbone_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The identity fields (BACKBONE_KEYS) both backbone manifests state and in which they differ."""
    a, b = {**_RAN, **a}, {**_RAN, **b}
    return [k for k in BACKBONE_KEYS if k in a and k in b and plain(a[k]) != plain(b[k])]


def check_backbone(directory: Path, fitted: dict[str, Any], configured: dict[str, Any]) -> None:
    """Raise ModelMismatchError if the backbones differ in any identity field both of them state."""
    differ = backbone_differences(fitted, configured)
    if differ:
        raise ModelMismatchError(
            f"model {directory} was fitted with backbone {_describe(fitted)} but the configured backbone is "
            f"{_describe(configured)} (differs in {', '.join(differ)}); refit or configure the original backbone"
        )


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed manifest; InputError (one line) when the directory is not a complete model."""
    path = directory / MANIFEST
    if not path.is_file():
        raise InputError(f"{directory}: no fitted normality model here ({MANIFEST} missing); run `streamvad fit`")
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable model manifest ({err})") from None
    missing = [k for k in _REQUIRED if not isinstance(man, dict) or k not in man]
    if missing:
        raise InputError(f"{path}: not a StreamVAD model manifest (missing {', '.join(missing)})")
    if man["format"] != FORMAT_VERSION:
        raise ModelMismatchError(f"{path}: model format {man['format']}, this StreamVAD reads format "
                                 f"{FORMAT_VERSION}; refit the model")
    return man
