"""Appearance and motion in one verdict, each on the scale its own calibration gave it.

Each part is put on a scale cut from its own normal footage at two points: its median normal score at 0 and its
threshold (the calibration quantile) at 1. One point, the threshold alone, is not enough to compare the parts:
the appearance score of an ordinary frame is most of its threshold (its median sits at ~0.8 of it on Ped2), while
motion's is a small part of it (~0.15), since most of the time nothing moves wrong. Divided by their thresholds
only, a walker moving at 0.9 of the motion threshold, which normal footage almost never does, ranks below an
ordinary frame's appearance; on the two-point scale both parts read as how far into their normal tails they are.
The decisions at 1 do not change. Chosen on the Ped2 training clips with pasted anomalies
(tools/fusion_validation.py, docs/VALIDATION.md). `scoring.fusion` joins them:

- `max`: the larger of the two, against 1: a frame is anomalous when it looks wrong OR moves wrong. With
  two parts at quantile q at most 2(1 - q) of normal frames pass (union bound).
- `sum`: their sum, divided by the sum's own threshold (the same quantile of the sum over the normal frames
  both parts were calibrated on, `MotionModel.sum_thresholds`), so the fused threshold is 1 again. Each part
  adds evidence: a crowded normal scene that lifts appearance a little, with ordinary motion, stays below a
  cyclist in it whose appearance is a little off and whose motion is far off, which `max` ranks the other
  way round. This is the sum rule of classifier combination, the one least hurt by errors in the parts'
  estimates (Kittler et al., On combining classifiers, 1998).

The appearance part is first corrected for the crowd. Patch by patch a crowd looks less usual than an empty
walkway, so the top patches' mean of a normal frame rises with the number of walkers (Ped2's training clips:
correlation 0.54 with the number of moving cells), and a crowded normal clip outranks a quiet clip with a cyclist
in it. The crowd of a frame is its cells that move as normal footage moves there (`MotionModel.crowd`): an object
that moves wrong is no crowd and cannot excuse its own look. The fit regresses the appearance score of the normal
calibration frames on their crowd, and fusion scores the appearance less that share above a typical crowd,
raw - slope * max(crowd - typical, 0), with the slope never below 0 and frames without motion taken as typical;
its zero point and threshold are cut from the corrected scores. The correction only discounts: a quieter frame
than the footage it was fitted on keeps its own score, so a scene quieter than any seen cannot raise false
alarms through it. Chosen on the training clips with pasted anomalies (docs/VALIDATION.md).

The motion part is the mean of the camera's motion scores over the model's `smooth_s` of stream time (a
`Smoother` per scorer, keyed by camera: frames of a camera come to its scorer in order), so one jittery flow
vector cannot decide while an object that keeps moving wrong does; the appearance part stays frame by frame,
so an object that appears at rest is judged at once. Verdicts keep `raw_score` as the value compared with the
threshold, and `motion_score` as the (windowed) motion part's divided by its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

from streamvad.motion.model import MotionModel
from streamvad.scoring.smoothing import Smoother
from streamvad.types import EmbeddingBatch, Verdict

Mode = Literal["fused", "motion"]
Score = TypeVar("Score", float, np.ndarray)


@runtime_checkable
class MaskableScorer(Protocol):
    """A scorer of patches, which a camera's mask can restrict (the k-NN scorer and its fusion with motion)."""

    mask: np.ndarray

    def score(self, batch: EmbeddingBatch) -> list[Verdict]: ...

    def with_mask(self, mask: np.ndarray | None) -> MaskableScorer: ...


def on_fusion_scale(value: Score, zero: float, at: float) -> Score:
    """`value` on the scale where `zero` (the normal median) is 0 and `at` (the threshold) is 1; shifted instead
    when the threshold is not above the zero (a user set it there: then only the decision carries over)."""
    return (value - zero) / (at - zero) if at > zero else value - at + 1.0


def motion_on_fusion_scale(model: MotionModel, unit: Score) -> Score:
    """A motion score divided by `model`'s threshold (`unit`), on the fusion scale: its normal median at 0."""
    assert model.threshold is not None
    return on_fusion_scale(unit, model.medians.get("motion", 0.0) / model.threshold, 1.0)


@dataclass(frozen=True)
class AppearanceScale:
    """Where one appearance rule's raw score sits on the fusion scale: less `slope` per cell of crowd above
    `typical` (the crowd's share; a quieter frame keeps its score), `zero` (the normal median of that) is 0 and
    `at` is 1. `at` None: the appearance scorer's own threshold (a model fitted before the crowd correction, with
    slope 0, or a user's `scoring.frame_threshold` on such a model)."""

    zero: float = 0.0
    at: float | None = None
    slope: float = 0.0
    typical: float = 0.0

    @classmethod
    def fit(cls, raw: np.ndarray, cells: np.ndarray, quantile: float, typical: float | None = None,
            ) -> AppearanceScale:
        """From the raw scores of normal frames and their crowds (NaN: no motion, taken as typical); `typical`: the
        model's typical crowd (None: the median of `cells`), one for every rule, as serving reads it."""
        if typical is None:
            typical = float(np.nanmedian(cells)) if np.isfinite(cells).any() else 0.0
        cells = np.where(np.isfinite(cells), cells, typical)
        slope = 0.0
        if len(raw) > 1 and np.ptp(cells) > 0:
            slope = max(0.0, float(np.polyfit(cells, raw, 1)[0]))
        corrected = raw - slope * np.maximum(cells - typical, 0.0)
        return cls(float(np.median(corrected)), float(np.quantile(corrected, quantile)), slope, typical)

    @classmethod
    def of(cls, model: MotionModel, key: str) -> AppearanceScale:
        """The scale `model`'s fit recorded for appearance rule `key` ("method/rule")."""
        return cls(model.medians.get(key, 0.0), model.appearance_thresholds.get(key), model.crowd_slopes.get(key, 0.0),
                   model.medians.get("crowd", 0.0))

    def unit(self, raw: Score, cells: Score, threshold: float) -> Score:
        """`raw` in a crowd of `cells` (NaN: typical) on the fusion scale; `threshold`: the scorer's own."""
        crowd = np.maximum(np.where(np.isfinite(cells), cells, self.typical) - self.typical, 0.0)
        return on_fusion_scale(raw - self.slope * crowd, self.zero, threshold if self.at is None else self.at)


class FusedScorer:
    """An appearance scorer's verdicts, fused with (or replaced by) the motion model's score."""

    def __init__(self, appearance: MaskableScorer, motion: MotionModel, mode: Mode = "fused",
                 sum_at: float | None = None, scale: AppearanceScale | None = None) -> None:
        """`sum_at`: fuse by the sum, with this threshold (see the module docstring); None: by the max.
        `scale`: the appearance rule's fusion scale (`AppearanceScale.of`); None: its raw score against its
        threshold."""
        if motion.threshold is None:
            raise ValueError("FusedScorer: the motion model has no calibrated threshold")
        self.appearance = appearance
        self.motion = motion
        self.mode = mode
        self.sum_at = sum_at
        self.scale = scale or AppearanceScale()
        self.mask = appearance.mask
        self.threshold = 1.0
        self._motion_at = float(motion.threshold)
        self._window = Smoother(motion.cfg.smooth_s, motion.cfg.window)

    def score(self, batch: EmbeddingBatch) -> list[Verdict]:
        verdicts = self.appearance.score(batch)
        crowd = np.full(len(batch), np.nan)  # only fusion corrects appearance for it
        if batch.motion is None:
            cells = np.zeros((len(batch), self.mask.shape[0]), dtype=np.float32)
        else:
            scores = self.motion.cell_scores(batch.motion)
            cells = np.where(self.mask, scores, 0.0) / self._motion_at
            if self.mode != "motion":
                crowd = self.motion.crowd(batch.motion, scores, self.mask)
        motion = self.motion.frame_scores(cells)
        heat = np.minimum(cells, 1.0).astype(np.float32)
        out = []
        for v, m, h, n in zip(verdicts, motion, heat, crowd, strict=True):
            m = self._window.mean(v.key.camera, v.key.pts, float(m), float(m))[0]
            if self.mode == "motion":
                raw, patches, by = m, h, f"motion@{self._motion_at:.2f}"
            else:
                a = float(self.scale.unit(v.raw_score, n, v.threshold))
                b = motion_on_fusion_scale(self.motion, m)
                raw = max(a, b) if self.sum_at is None else (a + b) / self.sum_at
                by = f"{v.decided_by}+motion@{self._motion_at:.2f}"
                by += "" if self.sum_at is None else f":sum@{self.sum_at:.2f}"
                patches = np.maximum(v.patch_confidences, h)
            out.append(replace(v, score=min(raw, 1.0), raw_score=raw, anomalous=raw > self.threshold,
                               patch_confidences=patches, threshold=self.threshold, decided_by=by, motion_score=m))
        return out

    def with_mask(self, mask: np.ndarray | None) -> FusedScorer:
        return FusedScorer(self.appearance.with_mask(mask), self.motion, self.mode, self.sum_at, self.scale)
