"""The kinds of model a camera can have, behind one contract: fit (calibration included) and save, the
backbone it was fitted on, load for serving, and the rule variants one evaluation compares.

The k-NN normality model (with its motion part) and every image detector implement `ModelKind`;
`model_kind` is the one place that tells them apart, so fitting, the engine, evaluation and the
worker never switch on a model's kind, and a detector can be a camera's model like a k-NN model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from streamvad.backbones.base import Backbone
from streamvad.compute import resolve_device
from streamvad.config import ScoringConfig, StreamVADConfig
from streamvad.errors import ConfigError, InputError, ModelMismatchError
from streamvad.layout import MOTION_DIR, NORMALITY_DIR
from streamvad.motion import FusedScorer, MotionModel, MotionTracker
from streamvad.motion.fusion import AppearanceScale, motion_on_fusion_scale
from streamvad.motion.model import FILE as MOTION_FILE
from streamvad.motion.model import calibrate_motion, motion_memory_bound
from streamvad.scoring.folds import clip_folds, holdout_mask
from streamvad.scoring.smoothing import causal_means
from streamvad.types import FeatureRequest, Polygon

if TYPE_CHECKING:
    from streamvad.datasets.base import Clip
    from streamvad.offline.pipeline import Embedded
    from streamvad.scoring.engine import Engine, FrameScorer
    from streamvad.scoring.knn import Calibration

log = logging.getLogger(__name__)

KNNN = "knnn"


@dataclass
class Fitted:
    """What a fit reports: its calibrated thresholds, how many frames trained and calibrated, which clips
    were held out (by name, so `eval` can replay them as unseen normal footage), the seconds of each stage
    and the bytes serving the model holds (0: not measured)."""

    thresholds: dict[str, float]
    n_train: int
    n_holdout: int
    holdout: tuple[str, ...]
    seconds: dict[str, float] = field(default_factory=dict)
    serving_bytes: int = 0
    # the served scorer's raw scores of the hold-out, one list per held-out clip in stream order
    holdout_scores: list[list[float]] = field(default_factory=list)
    holdout_decided_by: str = ""  # ... and that scorer (Verdict.decided_by)


class Timer:
    """Seconds of consecutive stages: `lap(name)` ends the stage that began at the last lap."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 2)
        self._t = now


@dataclass
class Served:
    """A loaded model, ready for the engine: its scorer, what it needs from the backbone, its motion tracker."""

    scorer: FrameScorer
    request: FeatureRequest
    tracker: MotionTracker | None = None


class ModelKind(Protocol):
    name: str

    def fit(self, cfg: StreamVADConfig, backbone: Backbone, clips: Sequence[Clip], sample_fps: float | None,
            out: Path, progress: bool, privacy: Sequence[Polygon] = ()) -> Fitted:
        """Fit on normal `clips`, calibrate on normal footage only, save the scorer's files under `out`."""
        ...

    def load(self, model_dir: Path, cfg: ScoringConfig, net: Backbone, device: str, mask: np.ndarray | None,
             ) -> Served:
        """The saved model, checked against `net` (the backbone it will be served on), scoring on `device`."""
        ...

    def fitted_backbone(self, model_dir: Path) -> dict[str, Any]:
        """The backbone's identity recorded by the fit, read without loading the model."""
        ...

    def variants(self, engine: Engine, names: Sequence[str]) -> dict[str, FrameScorer]:
        """Scorers for the named rules sharing the engine's fitted model (what `eval --rules` compares)."""
        ...


def model_kind(name: str) -> ModelKind:
    return _KNN if name == KNNN else DetectorKind(name)


def _held_out_names(clips: Sequence[Clip], clip_ids: np.ndarray) -> tuple[str, ...]:
    return tuple(clips[i].name for i in np.unique(clip_ids)) if len(clips) > 1 else ()


class KnnKind:
    """The per-token k-NN normality model (normality/), with the motion part beside it when enabled."""

    name = KNNN

    def fit(self, cfg: StreamVADConfig, backbone: Backbone, clips: Sequence[Clip], sample_fps: float | None,
            out: Path, progress: bool, privacy: Sequence[Polygon] = ()) -> Fitted:
        import torch

        from streamvad.normality.model import NormalityModel
        from streamvad.offline.exemplars import write_exemplars
        from streamvad.offline.pipeline import embed_clips
        from streamvad.scoring.knn import Frames, calibrate

        motion = cfg.normality.motion if cfg.normality.motion.enabled else None
        timer = Timer()
        embedded = embed_clips(backbone, clips, sample_fps, transport=cfg.transport, progress=progress, motion=motion,
                               thumbnails=True, privacy=privacy)
        hold = holdout_mask(embedded.clip_ids, len(clips), cfg.normality.holdout_fraction)
        train, held = embedded.rows(~hold), embedded.rows(hold)
        timer.lap("embed")
        memory = _memory_frames(train, cfg.normality.max_train_frames, cfg.normality.seed)
        budget = cfg.normality.memory_budget_mb
        motion_bytes = 0 if motion is None else motion_memory_bound(backbone.grid, motion)
        model = NormalityModel.fit(memory.batch.global_, memory.batch.patches, cfg.normality, sources=memory.sources,
                                   backbone=backbone.manifest(), nnn=cfg.scoring.method == "nnn", density=False,
                                   max_bytes=None if budget is None else int(budget * 2**20) - motion_bytes)
        write_exemplars(out, model.frame_of(), memory.thumbnails)
        timer.lap("cluster")
        thresholds: dict[str, float] = {}
        # the system of record is final once clustered: its own process writes it while HDBSCAN, motion and
        # calibration run on one core fewer (Chroma's writer is the longest part, and a busy core slows it)
        chroma = model.chroma_writer(out / NORMALITY_DIR) if cfg.normality.chroma else None
        threads = torch.get_num_threads()
        if chroma is not None:
            torch.set_num_threads(max(1, threads - 1))
        try:
            model.fit_density(memory.batch.global_, memory.batch.patches)
            timer.lap("hdbscan")
            motion_model = None
            if train.batch.motion is not None:
                motion_model, motion_held, motion_oof, crowd_held, crowd_oof = _fit_motion(cfg, backbone.grid,
                                                                                           train, held)
                thresholds["motion"] = float(motion_model.threshold or 0.0)
            timer.lap("motion")
            folds = [np.flatnonzero(f) for f in clip_folds(memory.clip_ids, cfg.normality.folds)]
            if len(held.sources) or folds:
                calibration = calibrate(model, held.batch.global_, held.batch.patches, cfg.scoring, folds=folds,
                                        train=Frames(memory.batch.global_, memory.batch.patches))
                model.set_thresholds(calibration.thresholds)
                if motion_model is not None:
                    rows = folds if memory is train else []
                    order = np.concatenate([motion_held, *(motion_oof[f] for f in rows)])
                    crowd = np.concatenate([crowd_held, *(crowd_oof[f] for f in rows)])
                    quantile = cfg.scoring.calibration_quantile
                    set_appearance_scales(motion_model, calibration, crowd, quantile)
                    motion_model.sum_thresholds = sum_thresholds(calibration, order, crowd, motion_model, quantile)
            if motion_model is not None:
                motion_model.save(out / MOTION_DIR)
                motion_bytes = (out / MOTION_DIR / MOTION_FILE).stat().st_size
            timer.lap("calibrate")
        finally:
            torch.set_num_threads(threads)
            if chroma is not None:
                chroma.join()
        if chroma is not None and chroma.exitcode != 0:
            raise InputError(f"{out / NORMALITY_DIR}: writing the Chroma system of record failed (exit code "
                             f"{chroma.exitcode}; see its log above)")
        model.save(out / NORMALITY_DIR, write_chroma=False, memory=chroma is None)
        timer.lap("write")
        reference = self._holdout_scores(out, cfg.scoring, backbone, held)
        return Fitted({**model.thresholds, **thresholds}, len(train.sources), len(held.sources),
                      _held_out_names(clips, held.clip_ids), timer.laps, model.serving_bytes + motion_bytes,
                      *reference)

    def _holdout_scores(self, out: Path, cfg: ScoringConfig, backbone: Backbone, held: Embedded,
                        ) -> tuple[list[list[float]], str]:
        """The served scorer's decision scores of the hold-out, per clip, and the scorer: what drift compares live
        scores with (live/drift.py) and alert budgets extrapolate from (scoring/budget.py)."""
        if not len(held.sources):
            return [], ""
        verdicts = self.load(out, cfg, backbone, "cpu", None).scorer.score(held.batch)
        clips = [[v.raw_score for v, c in zip(verdicts, held.clip_ids, strict=True) if c == clip]
                 for clip in dict.fromkeys(held.clip_ids.tolist())]
        return clips, verdicts[0].decided_by

    def load(self, model_dir: Path, cfg: ScoringConfig, net: Backbone, device: str, mask: np.ndarray | None,
             ) -> Served:
        from streamvad.normality.model import NormalityModel
        from streamvad.scoring.knn import Scorer

        model = NormalityModel.load(model_dir / NORMALITY_DIR, backbone=net.manifest())
        scorer: FrameScorer = Scorer(model, cfg, mask=mask, device=device)
        motion = _load_motion(model_dir, cfg, net.grid)
        if motion is None:
            return Served(scorer, FeatureRequest())
        fused = FusedScorer(scorer, motion, "motion" if cfg.motion == "motion" else "fused",
                            _sum_at(motion, cfg, cfg.fusion, model_dir), _scale(motion, cfg))
        return Served(fused, FeatureRequest(), MotionTracker(net.grid, motion.cfg))

    def fitted_backbone(self, model_dir: Path) -> dict[str, Any]:
        from streamvad.normality.manifest import read_manifest

        return dict(read_manifest(model_dir / NORMALITY_DIR)["backbone"])

    def variants(self, engine: Engine, names: Sequence[str]) -> dict[str, FrameScorer]:
        """Names are "rule" or "method/rule" (e.g. "majority", "topk", "hdbscan/global") for appearance alone,
        "method/rule+motion" fused with the model's motion part (as `scoring.fusion` says, or
        "method/rule+motion:max" / ":sum"), and "motion" for motion alone."""
        from streamvad.scoring.knn import Scorer

        fused = engine.scorer if isinstance(engine.scorer, FusedScorer) else None
        base = engine.scorer if fused is None else fused.appearance
        assert isinstance(base, Scorer)
        out: dict[str, FrameScorer] = {}
        for name in names:
            appearance, plus, tail = name.partition("+motion")
            if tail not in ("", ":max", ":sum"):
                raise ConfigError(f"--rules: {name!r}: expected +motion, +motion:max or +motion:sum")
            if (plus or name == "motion") and fused is None:
                raise ConfigError(f"--rules: {name!r} needs a model fitted with motion (normality.motion)")
            if name == "motion" and fused is not None:
                out[name] = FusedScorer(base, fused.motion, "motion")
                continue
            method, _, rule = appearance.rpartition("/")
            update: dict[str, Any] = {"rule": rule, "frame_threshold": None}
            if method:
                update["method"] = method
            cfg = ScoringConfig.model_validate({**base.cfg.model_dump(), **update})
            scorer = Scorer(base.model, cfg, mask=base.mask, tokens=base.tokens)
            if plus and fused is not None:
                fusion = tail[1:] or base.cfg.fusion
                out[name] = FusedScorer(scorer, fused.motion, sum_at=_sum_at(fused.motion, cfg, fusion, "being served"),
                                        scale=_scale(fused.motion, cfg))
            else:
                out[name] = scorer
        return out


class DetectorKind:
    """An image detector (detectors/: UniFormaly, GeneralAD, S2VAD) scoring whole frames."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fit(self, cfg: StreamVADConfig, backbone: Backbone, clips: Sequence[Clip], sample_fps: float | None,
            out: Path, progress: bool, privacy: Sequence[Polygon] = ()) -> Fitted:
        from streamvad.detectors import build_detector, fit_and_calibrate
        from streamvad.detectors.config import DetectorConfig
        from streamvad.offline.pipeline import embed_batches, no_frames

        dcfg = cfg.detector or DetectorConfig(name=self.name)
        det = build_detector(self.name, dcfg, num_layers=backbone.num_layers,
                             device=resolve_device(cfg.backbone.device), backbone_manifest=backbone.manifest())
        batches, clip_ids = [], []
        for ci, _, batch in embed_batches(backbone, clips, sample_fps, request=det.requirements(),
                                          transport=cfg.transport, progress=progress):
            batches.append(batch)
            clip_ids.extend([ci] * len(batch))
        if not batches:
            raise no_frames(clips)
        ids = np.asarray(clip_ids)
        threshold = fit_and_calibrate(det, batches, clip_ids=ids, holdout_fraction=dcfg.holdout_fraction,
                                      quantile=dcfg.calibration_quantile, progress=progress)
        det.save(out / "detector")
        hold = holdout_mask(ids, len(clips), dcfg.holdout_fraction)
        return Fitted({"threshold": float(threshold)}, int((~hold).sum()), int(hold.sum()),
                      _held_out_names(clips, ids[hold]))

    def load(self, model_dir: Path, cfg: ScoringConfig, net: Backbone, device: str, mask: np.ndarray | None,
             ) -> Served:
        from streamvad.detectors import load_detector

        detector = load_detector(model_dir / "detector", device=device, backbone_manifest=net.manifest())
        return Served(detector, detector.requirements())

    def fitted_backbone(self, model_dir: Path) -> dict[str, Any]:
        from streamvad.detectors.base import read_manifest

        return dict(read_manifest(model_dir / "detector").get("backbone") or {})

    def variants(self, engine: Engine, names: Sequence[str]) -> dict[str, FrameScorer]:
        """A detector has one decision rule: its own."""
        return {self.name: engine.scorer}


_KNN = KnnKind()


def _memory_frames(train: Embedded, cap: int | None, seed: int) -> Embedded:
    """The training frames the appearance memory keeps: all, or a k-center coreset of `cap` of them (motion is
    always fitted on every frame: its memory is capped per cell)."""
    if cap is None or len(train.sources) <= cap:
        return train
    from streamvad.normality.coreset import frame_coreset  # on torch, as every fit-only import here

    t0 = time.perf_counter()
    keep = np.zeros(len(train.sources), dtype=bool)
    keep[frame_coreset(train.batch.patches, cap, seed)] = True
    log.info("normality: memory of %d of the %d training frames (k-center, normality.max_train_frames), chosen in "
             "%.1f s", cap, len(keep), time.perf_counter() - t0)
    return train.rows(keep)


def _fit_motion(cfg: StreamVADConfig, grid: tuple[int, int], train: Embedded, held: Embedded,
                ) -> tuple[MotionModel, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The motion part fitted on the training frames and calibrated on every normal frame it was not fitted on;
    with the hold-out's scores and the training frames' out-of-fold scores (each windowed over the stream as
    served), each divided by the threshold, and the same frames' crowds (`MotionModel.crowd`)."""
    t0 = time.perf_counter()
    mcfg = cfg.normality.motion
    motion, held_motion = train.batch.motion, held.batch.motion
    assert motion is not None
    model = MotionModel.fit(motion, grid, mcfg)
    held_scores = np.zeros(len(held.sources), dtype=np.float32)
    held_crowd = np.full(len(held.sources), np.nan)
    if held_motion is not None:
        cells = model.cell_scores(held_motion)
        held_scores = causal_means(model.frame_scores(cells), held.clip_ids, _pts(held), mcfg.smooth_s,
                                   mcfg.window)
        held_crowd = model.crowd(held_motion, cells)
    extra = [] if held_motion is None else [held_scores[held_motion.valid]]
    model.threshold, oof, crowd = calibrate_motion(motion, train.clip_ids, _pts(train), grid, mcfg,
                                                   cfg.scoring.calibration_quantile, cfg.normality.folds, extra)
    model.medians["motion"] = float(np.median(np.concatenate([oof[motion.valid], *extra])))
    log.info("motion: threshold %.3f (quantile %.3f of out-of-fold and held-out normal frames, each windowed as "
             "served: %s over %.2f s of its stream), fitted in %.1f s", model.threshold,
             cfg.scoring.calibration_quantile, mcfg.window, mcfg.smooth_s, time.perf_counter() - t0)
    return model, held_scores / model.threshold, oof / model.threshold, held_crowd, crowd


def _pts(frames: Embedded) -> np.ndarray:
    return np.array([k.pts for k in frames.batch.keys], dtype=np.float64)


def set_appearance_scales(model: MotionModel, appearance: Calibration, crowd: np.ndarray, quantile: float) -> None:
    """Each appearance rule's fusion scale (motion/fusion.py: its crowd slope, zero point and threshold), fitted on
    the normal frames its threshold was calibrated on, into `model`; `crowd` holds their crowds in the same order
    (the hold-out, then each fold's rows; where it has fewer, the frames both have, the hold-out first)."""
    # one typical crowd for every rule (serving reads one), from every calibration frame, even where a rule was
    # scored on the hold-out alone
    typical = float(np.nanmedian(crowd)) if np.isfinite(crowd).any() else 0.0
    model.medians["crowd"] = typical
    for key, unit in appearance.unit_scores.items():
        n = min(len(unit), len(crowd))
        if n:
            scale = AppearanceScale.fit(unit[:n] * appearance.thresholds[key], crowd[:n], quantile, typical)
            assert scale.at is not None  # fit always cuts a threshold
            model.medians[key], model.crowd_slopes[key] = scale.zero, scale.slope
            model.appearance_thresholds[key] = scale.at


def sum_thresholds(appearance: Calibration, motion: np.ndarray, crowd: np.ndarray, model: MotionModel,
                   quantile: float) -> dict[str, float]:
    """The threshold of appearance + motion (each on its fusion scale, as `model` records them) per appearance
    rule: the same quantile of the sum over the normal frames both were calibrated on. `motion` (divided by its
    threshold) and `crowd` (crowds) are in the order of the appearance's unit scores (the hold-out, then
    each fold's rows); where one has fewer frames (a rule scored on the hold-out alone, or motion of a capped
    memory's folds), the frames both have: the hold-out first."""
    moved = motion_on_fusion_scale(model, motion)
    out = {}
    for key, scores in appearance.unit_scores.items():
        n = min(len(scores), len(motion))
        threshold = appearance.thresholds[key]
        looks = AppearanceScale.of(model, key).unit(scores[:n] * threshold, crowd[:n], threshold)
        out[key] = float(np.quantile(looks + moved[:n], quantile))
    return out


def _sum_at(motion: MotionModel, cfg: ScoringConfig, fusion: str, model: Path | str) -> float | None:
    """The sum fusion's threshold for cfg's appearance rule, or None for `max`. A model fitted without one (by an
    older StreamVAD, or for a rule it did not calibrate) serves `max` when the config left `fusion` at its
    default, and is refused with one line when it asked for `sum`."""
    if fusion == "max":
        return None
    key = f"{cfg.method}/{cfg.rule}"
    if key not in motion.sum_thresholds and "fusion" not in cfg.model_fields_set:
        log.warning("scoring.fusion: model %s has no threshold of %s + motion (fitted before sum became the default, "
                    "or for another rule), so it fuses by max; refit it to fuse by sum", model, key)
        return None
    if key not in motion.sum_thresholds:
        raise ConfigError(f"scoring.fusion: sum needs the threshold of {key} + motion, which the model {model} "
                          f"does not have (it has {sorted(motion.sum_thresholds) or 'none'}); refit it, or set "
                          "scoring.fusion: max")
    return motion.sum_thresholds[key]


def _scale(motion: MotionModel, cfg: ScoringConfig) -> AppearanceScale:
    """cfg's appearance rule's fusion scale (a model fitted before fusion had zero points: 0 and its threshold)."""
    return AppearanceScale.of(motion, f"{cfg.method}/{cfg.rule}")


def _load_motion(model_dir: Path, cfg: ScoringConfig, grid: tuple[int, int]) -> MotionModel | None:
    """The model's motion part, unless scoring asks for appearance alone; a model fitted without one
    serves appearance, unless motion alone was asked for."""
    folder = model_dir / MOTION_DIR
    if cfg.motion == "appearance":
        return None
    if not (folder / "motion.json").is_file():
        if cfg.motion == "motion":
            raise ConfigError(f"scoring.motion: 'motion' needs a model fitted with normality.motion, and {model_dir} "
                              "has none; refit, or set scoring.motion to appearance")
        return None
    motion = MotionModel.load(folder)
    if motion.grid != tuple(grid):
        raise ModelMismatchError(f"{folder}: motion fitted on a {motion.grid} grid, the backbone gives {grid}")
    return motion
