"""Detectors by name: build one from config, load one from disk, fit-and-calibrate for the CLI."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamvad.detectors.base import BaseDetector, read_manifest
from streamvad.detectors.config import DetectorConfig
from streamvad.detectors.generalad import GeneralAD
from streamvad.detectors.s2vad import S2VAD
from streamvad.detectors.uniformaly import Uniformaly
from streamvad.errors import ConfigError, ModelMismatchError
from streamvad.scoring.folds import holdout_mask
from streamvad.types import EmbeddingBatch

log = logging.getLogger(__name__)

DETECTORS: dict[str, type[BaseDetector]] = {cls.name: cls for cls in (Uniformaly, GeneralAD, S2VAD)}


def build_detector(
    name: str,
    cfg: DetectorConfig | None = None,
    *,
    num_layers: int = 12,
    device: str | torch.device | None = None,
    backbone_manifest: dict[str, Any] | None = None,
    **kwargs: Any,
) -> BaseDetector:
    """A fresh detector `name` with its section of `cfg` (defaults when None).

    `num_layers` is the backbone depth (`Backbone.num_layers`), which fixes the blocks requested;
    `backbone_manifest` is stored with the model so serving can check it; extra keyword arguments go
    to the detector (e.g. `embed_fn` for GeneralAD with cut-paste).
    """
    if name not in DETECTORS:
        hint = " (k-NNN is the built-in normality scorer, fitted without --detector)" if name == "knnn" else ""
        raise ConfigError(f"detector.name: unknown detector {name!r}{hint}; expected one of "
                          f"{', '.join(sorted(DETECTORS))}")
    cfg = cfg or DetectorConfig(name=name)  # type: ignore[arg-type]
    return DETECTORS[name](getattr(cfg, name), num_layers=num_layers, device=device or cfg.device,
                           backbone_manifest=backbone_manifest, **kwargs)


def load_detector(directory: str | Path, *, device: str | torch.device = "auto",
                  backbone_manifest: dict[str, Any] | None = None) -> BaseDetector:
    """Load a saved detector; with `backbone_manifest`, refuse one fitted on another backbone."""
    manifest = read_manifest(directory)
    name = manifest["detector"]
    if name not in DETECTORS:
        raise ModelMismatchError(f"{Path(directory)}: unknown detector {name!r} in manifest")
    saved = manifest.get("backbone") or {}
    if backbone_manifest is not None and saved:
        diff = sorted(k for k in saved.keys() & backbone_manifest.keys() if saved[k] != backbone_manifest[k])
        if diff:
            k = diff[0]
            raise ModelMismatchError(f"{Path(directory)}: detector fitted with backbone {k}={saved[k]!r}, "
                                     f"serving backbone has {backbone_manifest[k]!r}")
    return DETECTORS[name].load(directory, device=device)


def split_holdout(batches: Sequence[EmbeddingBatch], fraction: float, clip_ids: np.ndarray | None = None,
                  ) -> tuple[list[EmbeddingBatch], list[EmbeddingBatch]]:
    """(train, held-out) batches by the one hold-out policy of every model (scoring.folds.holdout_mask):
    whole clips when `clip_ids` names several, else the *last* `fraction` of the frames (neighbouring
    frames are near-duplicates, so random ones would calibrate on frames the model has all but seen).
    Both keep the batches' size, which detectors train on."""
    ids = np.zeros(sum(len(b) for b in batches), dtype=int) if clip_ids is None else np.asarray(clip_ids)
    held = holdout_mask(ids, len(np.unique(ids)), fraction)
    if held.all():
        raise ConfigError(f"detector.holdout_fraction: {fraction} leaves no training frames of {len(held)}")
    joined, size = EmbeddingBatch.concat(batches), len(batches[0])

    def chunks(mask: np.ndarray) -> list[EmbeddingBatch]:
        idx = np.flatnonzero(mask)
        return [joined.select(idx[lo:lo + size]) for lo in range(0, len(idx), size)]

    return chunks(~held), chunks(held)


def fit_and_calibrate(
    detector: BaseDetector,
    batches: Sequence[EmbeddingBatch],
    *,
    clip_ids: np.ndarray | None = None,
    holdout_fraction: float = 0.1,
    quantile: float = 0.99,
    progress: bool = True,
) -> float:
    """Fit on normal frames and calibrate the threshold on the held-out ones (see split_holdout); returns it."""
    train, held = split_holdout(batches, holdout_fraction, clip_ids)
    detector.fit(train, progress=progress)
    threshold = detector.calibrate(held, quantile)
    log.info("%s: fitted on %d frames, threshold %.4g from %d held-out frames", detector.name,
             sum(len(b) for b in train), threshold, sum(len(b) for b in held))
    return threshold
