"""The contract every image detector meets, and the parts all of them share.

A detector consumes `EmbeddingBatch`es (precomputed backbone features), never images, so it can be
trained and served next to the k-NNN scorer from the same forward pass; it states which extra
features it needs (`requirements`) and the worker asks the backbone for exactly those.

Scores: a detector produces a raw image score and a raw patch map per frame (`score_maps`). The
threshold comes from held-out *normal* frames only (`calibrate`: a quantile of their image scores).
For the `Verdict`, the raw patch map is mapped to [0, 1] with the calibrated scale
`(raw - low) / (2 * (threshold - low))`, clipped, where `low` is the median raw patch value of the
calibration frames: a typical normal patch reads 0, a patch as strong as the frame threshold reads
0.5, twice as strong reads 1. `global_confidence` is the image score on the same scale, so the
threshold reads 0.5 there too. The raw map stays available through `score_maps`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel, ValidationError
from safetensors.torch import load_file, save_file
from scipy import ndimage

from streamvad.compute import resolve_device
from streamvad.errors import ModelMismatchError, StreamVADError
from streamvad.types import EmbeddingBatch, FeatureRequest, Verdict

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE = "state.safetensors"
FORMAT_VERSION = 1


@runtime_checkable
class Detector(Protocol):
    name: str
    threshold: float | None

    def requirements(self) -> FeatureRequest: ...

    def fit(self, batches: Iterable[EmbeddingBatch], *, progress: bool = True) -> None:
        """Learn normality from normal frames only."""
        ...

    def score_maps(self, batch: EmbeddingBatch) -> tuple[np.ndarray, np.ndarray]:
        """Raw image scores [B] and raw patch maps [B, N] (row-major on the grid)."""
        ...

    def score(self, batch: EmbeddingBatch) -> list[Verdict]: ...

    def calibrate(self, batches: Iterable[EmbeddingBatch], quantile: float = 0.99) -> float: ...

    def anomaly_map(self, patch_map: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """A raw patch map [N] drawn at image size (H, W), blurred as the method prescribes."""
        ...

    def save(self, directory: str | Path) -> Path: ...


def upsample_map(patch_map: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """Bilinear upsampling of an [h, w] map to (H, W), then a Gaussian blur of `sigma` pixels.

    Pixel-centre aligned (like torch `align_corners=False`), so a map does not shift by half a
    patch; edges are extended rather than zero-padded, so border patches keep their value.
    """
    if patch_map.ndim != 2:
        raise ValueError(f"upsample_map: expected an [h, w] map, got shape {patch_map.shape}")
    src = np.asarray(patch_map, dtype=np.float64)
    zoom = (size[0] / src.shape[0], size[1] / src.shape[1])
    out = ndimage.zoom(src, zoom, order=1, mode="nearest", grid_mode=True)
    if out.shape != tuple(size):  # zoom rounds the output shape; guard against an off-by-one
        out = out[: size[0], : size[1]]
        out = np.pad(out, ((0, size[0] - out.shape[0]), (0, size[1] - out.shape[1])), mode="edge")
    if sigma > 0:
        out = ndimage.gaussian_filter(out, sigma=sigma, mode="nearest", truncate=4.0)
    return out.astype(np.float32)


class BaseDetector:
    """Shared calibration, verdicts, maps and persistence; subclasses implement the method.

    Subclasses set `name` and `config_cls`, and implement `requirements`, `fit`, `_score`
    (tensors in, tensors out), `_state` / `_load_state` (tensors to persist) and may extend
    `_manifest_extra`.
    """

    name: ClassVar[str] = "base"
    config_cls: ClassVar[type[BaseModel]]

    def __init__(
        self,
        cfg: BaseModel | None = None,
        *,
        num_layers: int = 12,
        device: str | torch.device = "auto",
        backbone_manifest: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg if cfg is not None else self.config_cls()
        self.num_layers = num_layers
        self.device = resolve_device(device, field="detector.device")
        self.backbone_manifest = dict(backbone_manifest or {})
        self.threshold: float | None = None
        self.patch_low: float = 0.0

    # --- to implement -------------------------------------------------------------------------------

    def requirements(self) -> FeatureRequest:
        raise NotImplementedError

    def fit(self, batches: Iterable[EmbeddingBatch], *, progress: bool = True) -> None:
        raise NotImplementedError

    def _score(self, batch: EmbeddingBatch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        raise NotImplementedError

    def _manifest_extra(self) -> dict[str, Any]:
        return {}

    @property
    def fitted(self) -> bool:
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------------------

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise StreamVADError(f"detector {self.name!r} is not fitted: call fit() on normal frames first")

    @torch.no_grad()
    def score_maps(self, batch: EmbeddingBatch) -> tuple[np.ndarray, np.ndarray]:
        self._require_fitted()
        image, patches = self._score(batch)
        return image.float().cpu().numpy(), patches.float().cpu().numpy()

    def calibrate(self, batches: Iterable[EmbeddingBatch], quantile: float = 0.99) -> float:
        """Threshold = `quantile` of the image scores of held-out normal frames (no anomalies seen)."""
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"calibration quantile must be in (0, 1), got {quantile}")
        images, patches = [], []
        for batch in batches:
            image, patch = self.score_maps(batch)
            images.append(image)
            patches.append(patch.ravel())
        if not images:
            raise StreamVADError(f"detector {self.name!r}: calibration needs at least one normal frame")
        scores = np.concatenate(images)
        self.threshold = float(np.quantile(scores, quantile))
        self.patch_low = float(np.median(np.concatenate(patches)))
        log.info("%s: threshold %.4g = %.3g quantile of %d normal frames", self.name, self.threshold,
                 quantile, scores.size)
        return self.threshold

    def _confidence(self, raw: np.ndarray) -> np.ndarray:
        assert self.threshold is not None
        scale = max(2.0 * (self.threshold - self.patch_low), 1e-12)
        return np.clip((raw - self.patch_low) / scale, 0.0, 1.0).astype(np.float32)

    def score(self, batch: EmbeddingBatch) -> list[Verdict]:
        self._require_fitted()
        if self.threshold is None:
            raise StreamVADError(
                f"detector {self.name!r} has no threshold: calibrate() it on held-out normal frames first"
            )
        images, patches = self.score_maps(batch)
        thr = self.threshold
        return [
            Verdict(
                key=key,
                score=float(image),
                raw_score=float(image),
                anomalous=bool(image > thr),
                global_confidence=float(self._confidence(np.array([image]))[0]),
                patch_confidences=self._confidence(patch),
                grid=batch.grid,
                unsafe_patches=int((patch > thr).sum()),
                threshold=thr,
                decided_by=f"{self.name}@{thr:.4g}",
            )
            for key, image, patch in zip(batch.keys, images, patches, strict=True)
        ]

    def anomaly_map(self, patch_map: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """Blur width scales with the output size: `map_sigma` pixels at `map_reference` pixels."""
        sigma = self.cfg.map_sigma * min(size) / self.cfg.map_reference  # type: ignore[attr-defined]
        return upsample_map(np.asarray(patch_map).reshape(grid), size, sigma)

    def nbytes(self) -> int:
        """Bytes of the fitted tensors (what serving this detector costs in memory)."""
        self._require_fitted()
        return sum(t.numel() * t.element_size() for t in self._state().values())

    def save(self, directory: str | Path) -> Path:
        """Write `manifest.json` (JSON only) and `state.safetensors` (tensors only): no pickle."""
        self._require_fitted()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._state().items()}
        save_file(tensors, str(out / STATE))
        manifest = {
            "format": FORMAT_VERSION,
            "detector": self.name,
            "config": self.cfg.model_dump(mode="json"),
            "num_layers": self.num_layers,
            "backbone": self.backbone_manifest,
            "requirements": {"layers": list(self.requirements().layers),
                             "attention": self.requirements().attention,
                             "attention_layer": self.requirements().attention_layer},
            "threshold": self.threshold,
            "patch_low": self.patch_low,
            "extra": self._manifest_extra(),
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        log.info("%s: saved to %s", self.name, out)
        return out

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "auto") -> BaseDetector:
        manifest = read_manifest(directory)
        if manifest["detector"] != cls.name:
            raise ModelMismatchError(
                f"{Path(directory) / MANIFEST}: detector is {manifest['detector']!r}, expected {cls.name!r}"
            )
        try:
            cfg = cls.config_cls.model_validate(manifest["config"])
        except ValidationError as err:
            raise ModelMismatchError(f"{Path(directory) / MANIFEST}: config does not fit this version: "
                                     f"{err.errors()[0]['msg']}") from None
        det = cls(cfg, num_layers=int(manifest["num_layers"]), device=device,
                  backbone_manifest=manifest.get("backbone") or {})
        tensors = load_file(str(Path(directory) / STATE), device=str(det.device))
        det._load_state(tensors, manifest.get("extra") or {})
        det.threshold = manifest.get("threshold")
        det.patch_low = float(manifest.get("patch_low", 0.0))
        return det


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The saved manifest, with one-line errors for a missing or foreign directory."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ModelMismatchError(f"{path}: no detector manifest (expected a directory written by save())")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelMismatchError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if manifest.get("format") != FORMAT_VERSION or "detector" not in manifest:
        raise ModelMismatchError(f"{path}: unsupported detector format {manifest.get('format')!r}, "
                                 f"expected {FORMAT_VERSION}")
    if not (Path(directory) / STATE).is_file():
        raise ModelMismatchError(f"{Path(directory) / STATE}: missing detector weights")
    return manifest


def check_batches(batches: Sequence[EmbeddingBatch], who: str) -> None:
    """Fitting on nothing is an input error an operator can fix, not a crash deep in torch."""
    if not batches or sum(len(b) for b in batches) == 0:
        raise StreamVADError(f"{who}: fit() got no frames; give it normal frames to learn from")
