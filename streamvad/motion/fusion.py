"""Appearance and motion in one verdict, each on the scale its own calibration gave it.

Both parts are divided by their thresholds, calibrated on normal footage at the same quantile, so neither
can drown the other whatever its units. `scoring.fusion` joins them:

- `max`: the larger of the two, against 1: a frame is anomalous when it looks wrong OR moves wrong. With
  two parts at quantile q at most 2(1 - q) of normal frames pass (union bound).
- `sum`: their sum, divided by the sum's own threshold (the same quantile of the sum over the normal frames
  both parts were calibrated on, `MotionModel.sum_thresholds`), so the fused threshold is 1 again. Each part
  adds evidence: a crowded normal scene that lifts appearance a little, with ordinary motion, stays below a
  cyclist in it whose appearance is a little off and whose motion is far off, which `max` ranks the other
  way round. This is the sum rule of classifier combination, the one least hurt by errors in the parts'
  estimates (Kittler et al., On combining classifiers, 1998).

The motion part is the mean of the camera's motion scores over the model's `smooth_s` of stream time (a
`Smoother` per scorer, keyed by camera: frames of a camera come to its scorer in order), so one jittery flow
vector cannot decide while an object that keeps moving wrong does; the appearance part stays frame by frame,
so an object that appears at rest is judged at once. Verdicts keep `raw_score` as the value compared with the
threshold, and `motion_score` as the (windowed) motion part's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from streamvad.motion.model import MotionModel
from streamvad.scoring.smoothing import Smoother
from streamvad.types import EmbeddingBatch, Verdict

Mode = Literal["fused", "motion"]


@runtime_checkable
class MaskableScorer(Protocol):
    """A scorer of patches, which a camera's mask can restrict (the k-NN scorer and its fusion with motion)."""

    mask: np.ndarray

    def score(self, batch: EmbeddingBatch) -> list[Verdict]: ...

    def with_mask(self, mask: np.ndarray | None) -> MaskableScorer: ...


def _on_unit_scale(v: Verdict) -> float:
    """The appearance verdict's raw score with its threshold at 1: divided by a positive threshold, shifted
    when a user set one at or below 0 (then only the decision, not the scale, can carry over)."""
    return v.raw_score / v.threshold if v.threshold > 0 else v.raw_score - v.threshold + 1.0


class FusedScorer:
    """An appearance scorer's verdicts, fused with (or replaced by) the motion model's score."""

    def __init__(self, appearance: MaskableScorer, motion: MotionModel, mode: Mode = "fused",
                 sum_at: float | None = None) -> None:
        """`sum_at`: fuse by the sum, with this threshold (see the module docstring); None: by the max."""
        if motion.threshold is None:
            raise ValueError("FusedScorer: the motion model has no calibrated threshold")
        self.appearance = appearance
        self.motion = motion
        self.mode = mode
        self.sum_at = sum_at
        self.mask = appearance.mask
        self.threshold = 1.0
        self._motion_at = float(motion.threshold)
        self._window = Smoother(motion.cfg.smooth_s)

    def score(self, batch: EmbeddingBatch) -> list[Verdict]:
        verdicts = self.appearance.score(batch)
        if batch.motion is None:
            cells = np.zeros((len(batch), self.mask.shape[0]), dtype=np.float32)
        else:
            cells = np.where(self.mask, self.motion.cell_scores(batch.motion), 0.0) / self._motion_at
        motion = self.motion.frame_scores(cells)
        heat = np.minimum(cells, 1.0).astype(np.float32)
        out = []
        for v, m, h in zip(verdicts, motion, heat, strict=True):
            m = self._window.mean(v.key.camera, v.key.pts, float(m), float(m))[0]
            if self.mode == "motion":
                raw, patches, by = m, h, f"motion@{self._motion_at:.2f}"
            else:
                a = _on_unit_scale(v)
                raw = max(a, m) if self.sum_at is None else (a + m) / self.sum_at
                by = f"{v.decided_by}+motion@{self._motion_at:.2f}"
                by += "" if self.sum_at is None else f":sum@{self.sum_at:.2f}"
                patches = np.maximum(v.patch_confidences, h)
            out.append(replace(v, score=min(raw, 1.0), raw_score=raw, anomalous=raw > self.threshold,
                               patch_confidences=patches, threshold=self.threshold, decided_by=by, motion_score=m))
        return out

    def with_mask(self, mask: np.ndarray | None) -> FusedScorer:
        return FusedScorer(self.appearance.with_mask(mask), self.motion, self.mode, self.sum_at)
