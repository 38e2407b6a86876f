"""Whole-clip splits of normal training footage: the hold-out every model calibrates on (`holdout_mask`, the
k-NN memory and the image detectors alike), and the folds of out-of-fold calibration (`clip_folds`).

Frames of one clip are near-duplicates of each other, so a frame scored by a memory that holds its
own clip looks more normal than new footage will. Holding out whole clips, and leaving out whole clips
(a fold) at a time, gives every training frame a score as if it were new; thousands of such scores
estimate the tail a threshold is cut from far better than a couple of held-out clips.
"""

from __future__ import annotations

import math

import numpy as np


def clip_folds(clip_ids: np.ndarray, folds: int) -> list[np.ndarray]:
    """Bool masks over the rows of `clip_ids`, one per fold; clips are dealt out in order (clip k goes to
    fold k mod folds). Fewer than two clips give no folds: there is nothing to leave out."""
    clips = np.unique(clip_ids)
    n = min(folds, len(clips))
    if n < 2:
        return []
    return [np.isin(clip_ids, clips[k::n]) for k in range(n)]


def holdout_mask(clip_ids: np.ndarray, n_clips: int, fraction: float) -> np.ndarray:
    """Rows kept aside to calibrate thresholds on normal data.

    Whole clips are held out when there are several, because neighbouring frames of one clip are
    near-duplicates and would make the held-out scores look more normal than new footage is. With a
    single clip, its last `fraction` of frames is held out instead.
    """
    if fraction <= 0:
        return np.zeros(len(clip_ids), dtype=bool)
    if n_clips >= 2:
        n_hold = max(1, round(n_clips * fraction))
        held = np.linspace(n_clips - 1, 0, n_hold, endpoint=False).round().astype(int)
        return np.isin(clip_ids, held)
    cut = len(clip_ids) - max(1, math.ceil(len(clip_ids) * fraction))
    mask = np.zeros(len(clip_ids), dtype=bool)
    mask[cut:] = True
    return mask
