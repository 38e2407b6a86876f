"""Whole-clip folds of normal training footage, for out-of-fold calibration of appearance and motion.

Frames of one clip are near-duplicates of each other, so a frame scored by a memory that holds its
own clip looks more normal than new footage will. Leaving out whole clips (a fold) at a time gives
every training frame a score as if it were new, and thousands of such scores estimate the tail a
threshold is cut from far better than a couple of held-out clips.
"""

from __future__ import annotations

import numpy as np


def clip_folds(clip_ids: np.ndarray, folds: int) -> list[np.ndarray]:
    """Bool masks over the rows of `clip_ids`, one per fold; clips are dealt out in order (clip k goes to
    fold k mod folds). Fewer than two clips give no folds: there is nothing to leave out."""
    clips = np.unique(clip_ids)
    n = min(folds, len(clips))
    if n < 2:
        return []
    return [np.isin(clip_ids, clips[k::n]) for k in range(n)]
