"""Drift: a camera's live scores against its model's hold-out, so that serve can say when to re-enrol.

A fit records the decision scores (`raw_score`) of its hold-out: normal footage of the camera that the fit
did not see, scored by the scorer it serves (model.json, `fit.holdout_scores`). A scene that changed for
good (a bench moved, a new sign, the season) lifts the camera's scores for as long as the change lasts; an
incident lifts them for seconds. So the worker keeps each camera's last `drift.window` scores and compares
them with the hold-out's by the one-sided two-sample Kolmogorov-Smirnov distance: how far the live scores'
distribution lies above the hold-out's at most (0 to 1). Scores that fell (a quieter season, footage more
ordinary than the hold-out's few minutes) are no reason to re-enrol. Past `drift.ks`, with at least
`drift.min_frames` scores, re-enrolment is suggested in /healthz and /metrics. A new model version starts the
comparison afresh, against its own hold-out.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from streamvad.config import DriftConfig

if TYPE_CHECKING:
    from streamvad.scoring.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class Reference:
    """What live scores are compared with: the hold-out's scores and the scorer that gave them (`decided_by`
    of its verdicts), since scores of another scorer (a serve config overriding `scoring`) do not compare."""

    scores: np.ndarray
    decided_by: str

    @classmethod
    def of(cls, fit: dict[str, object]) -> Reference | None:
        scores, by = fit.get("holdout_scores"), fit.get("holdout_decided_by")
        if not isinstance(scores, list) or len(scores) < 10 or not isinstance(by, str):
            return None
        return cls(np.asarray(scores, dtype=np.float64), by)


@dataclass
class _Camera:
    reference: Reference | None
    owner: Engine | None  # the engine scoring the camera: another one (a new version) starts afresh
    scores: deque[float] = field(default_factory=deque)
    since_check: int = 0
    ks: float | None = None


class DriftMonitor:
    """Each camera's live scores, and their distance from its model's hold-out."""

    def __init__(self, cfg: DriftConfig) -> None:
        self.cfg = cfg
        self._cameras: dict[str, _Camera] = {}

    def observe(self, camera: str, owner: Engine | None, raw_score: float, decided_by: str) -> None:
        """One verdict of `camera`, scored by `owner` (its model's engine) with `decided_by`."""
        if not self.cfg.enabled:
            return
        state = self._cameras.get(camera)
        if state is None or state.owner is not owner:
            reference = None if owner is None else Reference.of(owner.info.fit)
            state = self._cameras[camera] = _Camera(reference, owner, deque(maxlen=self.cfg.window))
            if reference is None:
                log.info("drift: camera %s's model recorded no hold-out scores; drift is not measured", camera)
        ref = state.reference
        if ref is None or decided_by != ref.decided_by:
            return
        state.scores.append(raw_score)
        state.since_check += 1
        if len(state.scores) >= self.cfg.min_frames and state.since_check >= self.cfg.every:
            state.since_check = 0
            was = self.suggests(camera)
            from scipy.stats import ks_2samp  # here: serve's supervisor imports this module and has no use for scipy

            # "greater": the largest F_hold(t) - F_live(t), the live scores' lift over the hold-out's
            state.ks = float(ks_2samp(ref.scores, np.fromiter(state.scores, float), alternative="greater").statistic)
            if self.suggests(camera) and not was:
                log.warning("drift: camera %s's last %d scores have parted from its model's hold-out (KS %.2f > "
                            "%.2f); re-enrolment suggested", camera, len(state.scores), state.ks, self.cfg.ks)

    def suggests(self, camera: str) -> bool:
        state = self._cameras.get(camera)
        return state is not None and state.ks is not None and state.ks > self.cfg.ks

    def distances(self) -> dict[str, float]:
        """KS distance of every camera compared so far."""
        return {c: round(s.ks, 4) for c, s in self._cameras.items() if s.ks is not None}

    def suggested(self) -> list[str]:
        return sorted(c for c in self._cameras if self.suggests(c))
