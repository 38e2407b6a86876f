"""The evidence an anomalous verdict carries out of the worker (types.Evidence): the embeddings of the frame's
most anomalous patches and their velocities.

The worker is the only place that has a frame's embeddings, and an operator reviews the event minutes or
days later. Keeping a tenth of the patches, the hottest of the verdict's heatmap, is enough for both uses
(a top-5% rule decides on half of them): "mark as normal" adds them to the camera's memory so the same
sight no longer alerts, and the console looks up the nearest normal exemplar of the hottest one. It costs
tens of kB per anomalous frame and nothing for a normal one.
"""

from __future__ import annotations

import math

import numpy as np

from streamvad.types import EmbeddingBatch, Evidence, Verdict

SHARE = 0.1  # of a frame's patches kept as evidence


def evidence_of(batch: EmbeddingBatch, row: int, verdict: Verdict, min_fraction: float | None) -> Evidence:
    """The evidence of `batch`'s frame `row`, judged by `verdict`; `min_fraction`: the share of a cell's pixels
    that must move for its velocity to count (the model's motion part), None without one."""
    n = verdict.n_patches
    hottest = np.argsort(-verdict.patch_confidences, kind="stable")[: max(1, math.ceil(SHARE * n))]
    vectors = np.asarray(batch.patches[row, hottest], dtype=np.float16)
    velocities = None
    motion = batch.motion
    if motion is not None and min_fraction is not None:
        moving = bool(motion.valid[row]) & (motion.fraction[row, hottest] >= min_fraction)
        velocities = np.where(moving[:, None], motion.velocity[row, hottest], np.nan).astype(np.float32)
    return Evidence(hottest.astype(np.int64), vectors, velocities)
