"""The one scoring path: frames in, verdicts out, for replay, evaluation and the live worker alike.

A model directory holds `model.json` (which backbone embedded the training frames and which scorer
was fitted on them) next to the scorer's own files, so `--model DIR` is all a user has to give: the
engine rebuilds the same backbone, checks the fitted model against it and serves it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from streamvad.backbones.base import Backbone
from streamvad.backbones.registry import build_backbone
from streamvad.compute import resolve_device
from streamvad.config import BackboneConfig, ScoringConfig
from streamvad.errors import InputError, ModelMismatchError
from streamvad.motion import FusedScorer, MotionTracker
from streamvad.scoring.integrity import digest_files, verify_files
from streamvad.scoring.kinds import model_kind
from streamvad.scoring.smoothing import Smoother
from streamvad.types import EmbeddingBatch, FeatureRequest, Frame, Verdict

log = logging.getLogger(__name__)

MODEL_FILE = "model.json"
MODEL_FORMAT = 1


class FrameScorer(Protocol):
    """What the engine needs from a k-NNN scorer or an image detector."""

    def score(self, batch: EmbeddingBatch) -> list[Verdict]: ...


def embed_frames(backbone: Backbone, frames: Sequence[Frame], request: FeatureRequest) -> EmbeddingBatch:
    """The backbone's outputs for `frames`, with what `request` adds (layers, attention)."""
    return backbone.embed([f.image for f in frames], [f.key for f in frames], **request.embed_kwargs())


@dataclass
class ModelInfo:
    """Contents of model.json: enough to rebuild the serving stack from a directory."""

    kind: str  # "knnn" or a detector name
    backbone: BackboneConfig
    scoring: ScoringConfig
    sample_fps: float | None
    # What the fit saw of the wire (transport.frame_max_side, transport.jpeg_quality); replay and eval apply the
    # same, see transport.as_transported. None: models fitted before this was recorded, frames used as read.
    frame_max_side: int | None = None
    jpeg_quality: int | None = None
    holdout: tuple[str, ...] = ()  # names of the clips kept aside to calibrate (never trained on)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> SHA-256 (scoring/integrity.py)
    # what the fit measured: {"seconds": {stage: s}, "serving_bytes": n} (scoring/kinds.py Fitted)
    fit: dict[str, Any] = field(default_factory=dict)

    def save(self, model_dir: Path) -> None:
        """Written last by `fit`: it records the SHA-256 of every file the fit wrote before it."""
        model_dir.mkdir(parents=True, exist_ok=True)
        self.files = digest_files(model_dir, MODEL_FILE)
        doc = {
            "format": MODEL_FORMAT,
            "kind": self.kind,
            "backbone": self.backbone.model_dump(mode="json"),
            "scoring": self.scoring.model_dump(mode="json"),
            "sample_fps": self.sample_fps,
            "frame_max_side": self.frame_max_side,
            "jpeg_quality": self.jpeg_quality,
            "holdout": list(self.holdout),
            "files": self.files,
            "fit": self.fit,
        }
        (model_dir / MODEL_FILE).write_text(json.dumps(doc, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, model_dir: Path) -> ModelInfo:
        path = model_dir / MODEL_FILE
        if not path.is_file():
            raise InputError(f"{model_dir}: not a StreamVAD model directory (no {MODEL_FILE}; run `streamvad fit`)")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict):
                raise InputError(f"{path}: expected a JSON object describing the model, got {type(doc).__name__}")
            if doc.get("format") != MODEL_FORMAT:
                raise ModelMismatchError(
                    f"{path}: model format {doc.get('format')!r}, this StreamVAD reads format {MODEL_FORMAT}; refit "
                    f"it with `streamvad fit --out {model_dir} ...` on the camera's normal footage")
            return cls(str(doc["kind"]), BackboneConfig.model_validate(doc["backbone"]),
                       ScoringConfig.model_validate(doc["scoring"]), doc.get("sample_fps"),
                       doc.get("frame_max_side"), doc.get("jpeg_quality"), tuple(map(str, doc.get("holdout", ()))),
                       {str(k): str(v) for k, v in dict(doc.get("files") or {}).items()}, dict(doc.get("fit") or {}))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError) as err:
            raise InputError(f"{path}: unreadable model description ({str(err).splitlines()[0]})") from None


@dataclass
class Timings:
    """Wall time of the last `process` call, for metrics and benchmarks."""

    embed_s: float = 0.0
    score_s: float = 0.0
    batch_size: int = 0


class Engine:
    """Backbone + scorer (+ the per-camera motion tracker when the model has a motion part) + the
    per-camera smoother of scores over stream time.

    `embed` is stateful when there is a tracker, and `smoother` always is: each camera's frames must come
    in stream order, as they do in the worker and in replay.
    """

    def __init__(self, backbone: Backbone, scorer: FrameScorer, request: FeatureRequest, info: ModelInfo,
                 tracker: MotionTracker | None = None, smooth_s: float = 0.0):
        self.backbone = backbone
        self.scorer = scorer
        self.request = request
        self.info = info
        self.tracker = tracker
        self.smoother = Smoother(smooth_s)
        self.timings = Timings()
        self.version: str | None = None  # its version in the camera's model store, which verdicts name

    def embed(self, frames: Sequence[Frame]) -> EmbeddingBatch:
        batch = embed_frames(self.backbone, frames, self.request)
        if self.tracker is not None:
            batch.motion = self.tracker.observe(frames)
        return batch

    def nbytes(self) -> int:
        """Bytes of the fitted state in memory: what one camera's model costs the worker that serves it."""
        scorer: Any = self.scorer
        total = 0
        if isinstance(scorer, FusedScorer):
            total += scorer.motion.memory.nbytes + scorer.motion.scale.nbytes
            scorer = scorer.appearance
        model = getattr(scorer, "model", None)
        if model is not None:  # the k-NN memory
            return total + model.train.nbytes + model.loc_dens.nbytes + model.clusters.nbytes
        return total + int(scorer.nbytes())  # a detector

    def process(self, frames: Sequence[Frame]) -> list[Verdict]:
        if not frames:
            return []
        t0 = time.perf_counter()
        batch = self.embed(frames)
        t1 = time.perf_counter()
        verdicts = self.smoother.apply(self.scorer.score(batch))
        self.timings = Timings(t1 - t0, time.perf_counter() - t1, len(frames))
        return verdicts


def load_engine(
    model_dir: Path,
    *,
    scoring: ScoringConfig | None = None,
    backbone: BackboneConfig | None = None,
    mask: np.ndarray | None = None,
    net: Backbone | None = None,
) -> Engine:
    """Rebuild the serving stack of a fitted model directory.

    `scoring` overrides the rule/threshold the model was fitted with (e.g. to compare rules on one
    model). The fields a user explicitly set in `backbone` override the fitted model's backbone
    (device, dtype and batch size are harmless; a different network or image size is then refused
    by the manifest check rather than silently scoring garbage). `net` is a backbone already loaded
    for another model (a worker's cameras share one forward pass); the model is checked against it.
    """
    info = ModelInfo.load(model_dir)
    if info.files:
        verify_files(model_dir, info.files)
    else:
        log.warning("%s: no file checksums recorded (fitted by an older StreamVAD); refit it so that a modified or "
                    "corrupt file is refused at load", model_dir)
    bb_cfg = info.backbone
    if backbone is not None:
        bb_cfg = BackboneConfig.model_validate({**bb_cfg.model_dump(), **backbone.model_dump(exclude_unset=True)})
    net = net or build_backbone(bb_cfg)
    device = str(resolve_device(bb_cfg.device))  # the scorer runs where the backbone does
    cfg = scoring or info.scoring
    served = model_kind(info.kind).load(model_dir, cfg, net, device, mask)
    log.info("serving %s model %s on backbone %s%s", info.kind, model_dir, bb_cfg.name,
             "" if served.tracker is None else " with motion")
    return Engine(net, served.scorer, served.request, info, served.tracker, cfg.smooth_s)


def fitted_backbone(model_dir: Path) -> dict[str, Any]:
    """The identity of the backbone a model was fitted on (its scorer's manifest), without loading either:
    what `serve` compares across cameras before it starts anything."""
    return model_kind(ModelInfo.load(model_dir).kind).fitted_backbone(model_dir)
