"""Appearance and motion in one verdict, each on the scale its own calibration gave it.

Both parts are divided by their thresholds, calibrated on normal footage at the same quantile, and
the fused raw score is the larger of the two: a frame is anomalous when it looks wrong OR moves
wrong, and the fused threshold is 1 by construction, so neither part can drown the other whatever
its units. With two parts at quantile q, at most 2(1 - q) of normal frames pass (union bound); the
fit reports what the hold-out actually gives.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from streamvad.motion.model import MotionModel
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

    def __init__(self, appearance: MaskableScorer, motion: MotionModel, mode: Mode = "fused") -> None:
        if motion.threshold is None:
            raise ValueError("FusedScorer: the motion model has no calibrated threshold")
        self.appearance = appearance
        self.motion = motion
        self.mode = mode
        self.mask = appearance.mask
        self.threshold = 1.0
        self._motion_at = float(motion.threshold)

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
            m = float(m)
            if self.mode == "motion":
                raw, patches, by = m, h, f"motion@{self._motion_at:.2f}"
            else:
                raw = max(_on_unit_scale(v), m)
                patches, by = np.maximum(v.patch_confidences, h), f"{v.decided_by}+motion@{self._motion_at:.2f}"
            out.append(replace(v, score=min(raw, 1.0), raw_score=raw, anomalous=raw > self.threshold,
                               patch_confidences=patches, threshold=self.threshold, decided_by=by, motion_score=m))
        return out

    def with_mask(self, mask: np.ndarray | None) -> FusedScorer:
        return FusedScorer(self.appearance.with_mask(mask), self.motion, self.mode)
