"""Alert budgets: the threshold at which a camera raises at most `false_alerts_per_day` events on normal footage.

A quantile threshold bounds how many normal *frames* cross it, not how many *events* an operator gets: the
hysteresis opens an event when `open_n` of the last `open_m` verdicts are anomalous, scores of neighbouring
frames move together, and a day at 4 fps is 345,600 frames, so "1% of frames" can mean anything from no event
to dozens. The budget threshold is cut from what actually opens events on normal footage: for each frame of
the fit's hold-out (normal clips the model never trained on, scored as served) the `open_n`-th largest of the
last `open_m` scores, `e`. An event opens at a frame where `e` first exceeds the threshold, so

    events per day = frames per day x theta x P(e > threshold)

with theta, the share of exceedances that start a run (the extremal index, counted on the hold-out), turning
exceedances into events. A hold-out is minutes long and a day is not, so P is extrapolated: a generalised
Pareto distribution fitted to the hold-out's `e` above its 90th percentile (peaks over threshold, the
standard model of a tail beyond the data, Pickands 1975), with its shape held to [0, 0.5]: a few dozen
exceedances cannot pin a shape down, and a negative one (a tail that ends) is what they most often suggest by
chance, which would promise a budget a long stream then breaks; an exponential tail (shape 0) or a heavier one
errs on the side of fewer alerts. Within the data the empirical distribution is used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from streamvad.config import EventsConfig
from streamvad.errors import ConfigError
from streamvad.types import Verdict

_TAIL_FROM = 0.9  # the tail model starts at this quantile of e
_SHAPE = (0.0, 0.5)  # the GPD shape is held to this range (see the module docstring)
_MIN_TAIL = 10  # exceedances needed to fit a tail


def opening_statistic(scores: Sequence[float], open_n: int, open_m: int) -> np.ndarray:
    """Per frame of one clip, the open_n-th largest of the last open_m scores (fewer at the clip's start): an
    event opens at a frame when this exceeds the threshold."""
    x = np.asarray(scores, dtype=np.float64)
    out = np.empty(len(x))
    for t in range(len(x)):
        window = np.sort(x[max(0, t - open_m + 1): t + 1])[::-1]
        out[t] = window[open_n - 1] if len(window) >= open_n else -np.inf
    return out


@dataclass(frozen=True)
class ScoreTail:
    """The tail of normal footage's opening statistic, and how often it starts an event."""

    values: np.ndarray  # e of every hold-out frame (finite ones)
    u: float  # where the fitted tail starts
    p_u: float  # P(e > u)
    sigma: float
    xi: float
    theta: float  # runs per exceedance above u (1: every exceedance opens its own event)

    @classmethod
    def fit(cls, clips: Sequence[Sequence[float]], open_n: int, open_m: int) -> ScoreTail:
        from scipy.stats import genpareto  # a second of imports, which serve's supervisor has no use for

        stats = [opening_statistic(c, open_n, open_m) for c in clips if len(c)]
        values = np.concatenate([s[np.isfinite(s)] for s in stats]) if stats else np.empty(0)
        if len(values) < _MIN_TAIL / (1 - _TAIL_FROM):
            raise ValueError(f"an alert budget needs at least {int(_MIN_TAIL / (1 - _TAIL_FROM))} hold-out frames, "
                             f"the model has {len(values)}")
        u = float(np.quantile(values, _TAIL_FROM))
        excess = values[values > u] - u
        xi, _loc, sigma = genpareto.fit(excess, floc=0.0)
        if not _SHAPE[0] <= xi <= _SHAPE[1]:  # held to the range a few dozen points can support: refit the scale
            xi = float(np.clip(xi, *_SHAPE))
            sigma = genpareto.fit(excess, f0=xi, floc=0.0)[2]
        starts = sum(int(((s[1:] > u) & (s[:-1] <= u)).sum() + (s[0] > u)) for s in stats)
        theta = min(1.0, starts / max(1, int((values > u).sum())))
        return cls(np.sort(values), u, float((values > u).mean()), float(sigma), xi, max(theta, 1e-3))

    def exceedance(self, x: float) -> float:
        """P(e > x)."""
        if x <= self.u:
            return float((self.values > x).mean())
        z = (x - self.u) / self.sigma
        if abs(self.xi) < 1e-9:
            return self.p_u * math.exp(-z)
        base = 1.0 + self.xi * z
        return 0.0 if base <= 0 else self.p_u * base ** (-1.0 / self.xi)

    def events_per_day(self, x: float, fps: float) -> float:
        return fps * 86400.0 * self.theta * self.exceedance(x)

    def threshold(self, per_day: float, fps: float) -> float:
        """The lowest threshold at which normal footage is expected to open at most `per_day` events a day."""
        target = per_day / (fps * 86400.0 * self.theta)
        if target >= self.p_u:  # within the data
            return float(np.quantile(self.values, max(0.0, 1.0 - target)))
        if abs(self.xi) < 1e-9:
            return self.u - self.sigma * math.log(target / self.p_u)
        return self.u + self.sigma / self.xi * ((target / self.p_u) ** (-self.xi) - 1.0)


@dataclass(frozen=True)
class Budget:
    """A camera's alert budget and the threshold it gives its model."""

    per_day: float
    threshold: float

    def apply(self, verdicts: Sequence[Verdict]) -> list[Verdict]:
        """The verdicts decided at the budget's threshold instead of the calibrated one."""
        by = f"|budget {self.per_day:g}/day@{self.threshold:.3f}"
        return [replace(v, anomalous=v.raw_score > self.threshold, threshold=self.threshold,
                        decided_by=v.decided_by + by) for v in verdicts]


def budget_for(fit: Mapping[str, Any], per_day: float | None, fps: float, events: EventsConfig) -> Budget | None:
    """The budget threshold of a model (model.json's `fit` section: the hold-out's served scores per clip) for a
    camera sampled at `fps` under the `events` hysteresis; None without a budget. A model fitted without the
    sequences (by an older StreamVAD, or without a hold-out) cannot take one: ConfigError."""
    if per_day is None:
        return None
    clips = fit.get("holdout_sequences")
    if not clips:
        raise ConfigError("false_alerts_per_day: the model keeps no hold-out scores to extrapolate from (fitted "
                          "without a hold-out, or by an older StreamVAD); refit it, or remove the budget")
    try:
        tail = ScoreTail.fit(clips, events.open_n, events.open_m)
    except ValueError as err:
        raise ConfigError(f"false_alerts_per_day: {err}") from None
    return Budget(per_day, tail.threshold(per_day, fps))
