"""The normal velocities of every cell of one camera's view, and the distance of new motion to them.

Fit: each cell remembers the velocities seen on normal footage in it and in its 8 neighbours, the
neighbours' at a cost (`neighbour_cost` per cell of distance, a third coordinate), so a sparsely
visited cell has enough to go on while two lanes side by side keep their own directions; cut to
`memory_per_cell` by greedy k-center selection so the memory covers every normal velocity however
rare. Score: a moving cell's distance to the nearest remembered velocity, divided by the cell's
typical normal speed. That division is the perspective correction: a cyclist far away moves fewer
pixels than a walker close by, but both move about three times as fast as *their* neighbours. A cell
where nothing moved in the normal footage keeps the site-wide typical speed and one remembered
velocity, standing still, so any motion there (someone crossing a lawn) scores by its speed.

The frame's motion score is the mean of the `top_cells` highest cell scores: one fast object decides,
and a crowd of normal walkers does not dilute it or add up. Served, it is averaged over the camera's last
`smooth_s` of stream time (motion/fusion.py), and the threshold is cut from normal footage windowed alike.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from streamvad.config import MotionConfig
from streamvad.errors import InputError
from streamvad.scoring.folds import clip_folds
from streamvad.scoring.smoothing import causal_means
from streamvad.types import MotionField

log = logging.getLogger(__name__)

FILE = "motion.npz"
META = "motion.json"
_FLOOR = 0.25  # a cell's speed scale is at least this share of the site-wide typical speed


def _steps(cell: int, around: list[int], grid: tuple[int, int]) -> np.ndarray:
    """Distance in cells from `cell` to each of `around`."""
    w = grid[1]
    r, c = divmod(cell, w)
    return np.array([math.hypot(a // w - r, a % w - c) for a in around], dtype=np.float32)


def motion_memory_bound(grid: tuple[int, int], cfg: MotionConfig) -> int:
    """The most bytes a fitted motion model serves: every cell full (`memory_per_cell` velocities of 3 floats)
    and its scale; what a memory budget sets aside before the appearance part is sized."""
    return grid[0] * grid[1] * (12 * cfg.memory_per_cell + 4)


def _active(motion: MotionField, cfg: MotionConfig) -> np.ndarray:
    """[B, N]: the cells whose velocity counts (enough of them moved, in a frame that has motion)."""
    return (motion.fraction >= cfg.min_fraction) & motion.valid[:, None]


def _neighbourhood(n_cell: int, grid: tuple[int, int]) -> list[int]:
    h, w = grid
    r, c = divmod(n_cell, w)
    return [i * w + j for i in range(max(0, r - 1), min(h, r + 2)) for j in range(max(0, c - 1), min(w, c + 2))]


class MotionModel:
    """memory [N, M, 3]: normal velocities in units of the cell's scale [N] plus the cell offset they were
    seen at (times `neighbour_cost`), rows padded with copies of the first; and the calibrated threshold."""

    def __init__(self, memory: np.ndarray, scale: np.ndarray, grid: tuple[int, int], cfg: MotionConfig,
                 threshold: float | None = None, sum_thresholds: dict[str, float] | None = None,
                 medians: dict[str, float] | None = None, crowd_slopes: dict[str, float] | None = None,
                 appearance_thresholds: dict[str, float] | None = None) -> None:
        self.memory = memory
        self.scale = scale
        self.grid = grid
        self.cfg = cfg
        self.threshold = threshold
        # per appearance "method/rule": the threshold of appearance + motion, each on its fusion scale (fusion: sum)
        self.sum_thresholds = dict(sum_thresholds or {})
        # the median normal score of each part in its own units, "motion" and each appearance "method/rule" (less
        # its crowd share, below): the fusion's zero points (motion/fusion.py); a model fitted without them fuses
        # with zeros there. "crowd": the median crowd of a normal frame (MotionModel.crowd)
        self.medians = dict(medians or {})
        # per appearance "method/rule": how much a normal frame's raw score rises per cell of crowd (crowds look
        # less usual patch by patch), and the calibrated threshold of the score less that share (motion/fusion.py);
        # a model fitted without them fuses the appearance score as it is, against the appearance threshold
        self.crowd_slopes = dict(crowd_slopes or {})
        self.appearance_thresholds = dict(appearance_thresholds or {})

    @classmethod
    def fit(cls, motion: MotionField, grid: tuple[int, int], cfg: MotionConfig) -> MotionModel:
        """From the motion of normal frames (invalid rows, which have none, are skipped)."""
        from streamvad.normality.coreset import k_center  # on torch, which serve's supervisor lacks

        active = _active(motion, cfg)
        n = grid[0] * grid[1]
        speeds = np.linalg.norm(motion.velocity[active], axis=-1)
        site = float(np.median(speeds)) if speeds.size else 1.0
        site = site if site > 0 else 1.0
        cells: list[np.ndarray] = []
        scale = np.full(n, site, dtype=np.float32)
        for cell in range(n):
            around = _neighbourhood(cell, grid)
            seen = motion.velocity[:, around][active[:, around]]
            if len(seen) >= cfg.min_samples:
                scale[cell] = max(float(np.median(np.linalg.norm(seen, axis=-1))), _FLOOR * site)
                steps = _steps(cell, around, grid)[np.nonzero(active[:, around])[1]]
                # the cell offset is a third coordinate, so a neighbour's velocity is a slightly worse match
                points = np.c_[seen / scale[cell], cfg.neighbour_cost * steps]
                cells.append(points[k_center(points.astype(np.float64), cfg.memory_per_cell)].astype(np.float32))
            else:
                cells.append(np.zeros((1, 3), dtype=np.float32))
        width = max(len(c) for c in cells)
        memory = np.stack([np.concatenate([c, np.repeat(c[:1], width - len(c), 0)]) for c in cells])
        log.info("motion: %d moving cells in %d normal frames; %d of %d cells have their own memory (<= %d "
                 "velocities); site speed %.3f frame heights/s", int(active.sum()), int(motion.valid.sum()),
                 sum(len(c) > 1 or c.any() for c in cells), n, width, site)
        return cls(memory, scale, grid, cfg)

    def cell_scores(self, motion: MotionField) -> np.ndarray:
        """[B, N]: each moving cell's distance to the nearest normal velocity there, in units of the cell's
        normal speed; 0 for still cells and for frames without motion."""
        active = _active(motion, self.cfg)
        out = np.zeros(active.shape, dtype=np.float32)
        b, n = np.nonzero(active)
        if b.size:
            q = np.c_[motion.velocity[b, n] / self.scale[n][:, None], np.zeros(b.size, dtype=np.float32)]  # [P, 3]
            out[b, n] = np.sqrt(((self.memory[n] - q[:, None, :]) ** 2).sum(-1).min(1))
        return out

    def crowd(self, motion: MotionField, cells: np.ndarray | None = None, mask: np.ndarray | None = None,
              ) -> np.ndarray:
        """[B]: how crowded each frame is: its cells (inside `mask`) that move as normal footage moves there (within
        `min_threshold` of a normal velocity; `cells`: their `cell_scores`, if already known). An object that moves
        wrong is not crowd, so it cannot excuse its own look (motion/fusion.py). NaN where a frame has no motion
        (a camera's first frame, the first after a gap)."""
        cells = self.cell_scores(motion) if cells is None else cells
        normal = _active(motion, self.cfg) & (cells <= self.cfg.min_threshold)
        if mask is not None:
            normal &= mask
        return np.where(motion.valid, normal.sum(1), np.nan).astype(np.float64)

    def frame_scores(self, cells: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """[B]: mean of the `top_cells` highest cell scores inside `mask`."""
        if mask is not None:
            cells = np.where(mask, cells, 0.0)
        k = min(self.cfg.top_cells, cells.shape[1])
        return -np.sort(-cells, axis=1)[:, :k].mean(1)

    def score(self, motion: MotionField, mask: np.ndarray | None = None) -> np.ndarray:
        return self.frame_scores(self.cell_scores(motion), mask)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / FILE, memory=self.memory, scale=self.scale)
        meta = {"grid": list(self.grid), "config": self.cfg.model_dump(mode="json"), "threshold": self.threshold,
                "sum_thresholds": self.sum_thresholds, "medians": self.medians, "crowd_slopes": self.crowd_slopes,
                "appearance_thresholds": self.appearance_thresholds}
        (directory / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> MotionModel:
        try:
            meta = json.loads((directory / META).read_text(encoding="utf-8"))
            grid = (int(meta["grid"][0]), int(meta["grid"][1]))
            # "folds" moved up; a model fitted before the motion window had none, and its threshold is unwindowed;
            # one fitted before the window's kind had the mean
            cfg = MotionConfig.model_validate({"smooth_s": 0.0, "window": "mean",
                                               **{k: v for k, v in meta["config"].items() if k != "folds"}})
            threshold = None if meta.get("threshold") is None else float(meta["threshold"])
            sums = {str(k): float(v) for k, v in meta.get("sum_thresholds", {}).items()}
            medians = {str(k): float(v) for k, v in meta.get("medians", {}).items()}
            slopes = {str(k): float(v) for k, v in meta.get("crowd_slopes", {}).items()}
            looks = {str(k): float(v) for k, v in meta.get("appearance_thresholds", {}).items()}
            with np.load(directory / FILE, allow_pickle=False) as z:
                memory, scale = z["memory"].astype(np.float32), z["scale"].astype(np.float32)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise InputError(f"{directory}: unreadable motion model ({str(err).splitlines()[0]})") from None
        n = grid[0] * grid[1]
        if memory.ndim != 3 or memory.shape[0] != n or memory.shape[2] != 3 or scale.shape != (n,):
            raise InputError(f"{directory / FILE}: expected memory [{n}, M, 3] and scale [{n}] for grid {grid}, "
                             f"got {memory.shape} and {scale.shape}")
        if not (np.isfinite(memory).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise InputError(f"{directory / FILE}: memory and scale must be finite with positive scales")
        if not all(math.isfinite(v) and v > 0 for v in sums.values()):
            raise InputError(f"{directory / META}: sum_thresholds must be finite and positive, got {sums}")
        if not all(math.isfinite(v) for v in medians.values()):
            raise InputError(f"{directory / META}: medians must be finite numbers, got {medians}")
        if not all(math.isfinite(v) and v >= 0 for v in slopes.values()):
            raise InputError(f"{directory / META}: crowd_slopes must be finite and >= 0, got {slopes}")
        if not all(math.isfinite(v) for v in looks.values()):
            raise InputError(f"{directory / META}: appearance_thresholds must be finite numbers, got {looks}")
        return cls(memory, scale, grid, cfg, threshold, sums, medians, slopes, looks)


def calibrate_motion(motion: MotionField, clip_ids: np.ndarray, pts: np.ndarray, grid: tuple[int, int],
                     cfg: MotionConfig, quantile: float, folds: int, extra: Sequence[np.ndarray] = (),
                     ) -> tuple[float, np.ndarray, np.ndarray]:
    """(threshold, out-of-fold scores, out-of-fold crowd: `MotionModel.crowd`, NaN where unscored) from normal
    footage only.

    Motion is cheap to fit, so every training clip is scored by a model fitted without it (clips in
    `folds` folds, see clip_folds): thousands of normal frames estimate the score tail instead of a couple of
    held-out clips. The scores are windowed over `smooth_s` of each clip's stream time (`pts`), as serving
    windows them. `extra` adds windowed scores of frames that were never trained on (the hold-out).
    """
    scores = np.zeros(len(clip_ids), dtype=np.float32)
    crowd = np.full(len(clip_ids), np.nan)
    scored = np.zeros(len(clip_ids), dtype=bool)
    for held in clip_folds(clip_ids, folds):  # a single clip has no fold to leave out; its hold-out calibrates alone
        model = MotionModel.fit(motion.select(np.flatnonzero(~held)), grid, cfg)
        rows = motion.select(np.flatnonzero(held))
        cells = model.cell_scores(rows)
        scores[held], crowd[held] = model.frame_scores(cells), model.crowd(rows, cells)
        scored |= held
    scores = causal_means(scores, clip_ids, pts, cfg.smooth_s, cfg.window)
    pooled = np.concatenate([scores[scored & motion.valid], *extra])
    threshold = float(np.quantile(pooled, quantile)) if pooled.size else 0.0
    if threshold < cfg.min_threshold:
        log.info("motion: calibrated threshold %.3f is below normality.motion.min_threshold; using %.3f (the "
                 "normal footage barely moved)", threshold, cfg.min_threshold)
    return max(threshold, cfg.min_threshold), scores, crowd
