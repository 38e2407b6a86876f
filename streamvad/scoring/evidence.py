"""The evidence an anomalous verdict carries out of the worker (types.Evidence): the embeddings of the frame's
most anomalous patches and their velocities.

The worker is the only place that has a frame's embeddings, and an operator reviews the event minutes or
days later. The evidence is every patch the heatmap marks as at least half way beyond normal (confidence
0.5; 1 is further from normal than 99% of normal patches), so the rim of an object, which only partly
covers its patches, comes along with its middle; at least the hottest 5% (what a top-5% rule decides on),
at most a quarter of the frame: "mark as normal" adds them to the camera's memory so the same sight no longer alerts,
and the console looks up the nearest normal exemplar of the hottest one. It costs tens of kB per anomalous
frame and nothing for a normal one.
"""

from __future__ import annotations

import math

import numpy as np

from streamvad.types import EmbeddingBatch, Evidence, Verdict

LEAST, MOST = 0.05, 0.25  # shares of a frame's patches kept as evidence
HOT = 0.5  # patch confidence from which a patch is part of what made the frame anomalous


def evidence_of(batch: EmbeddingBatch, row: int, verdict: Verdict, min_fraction: float | None) -> Evidence:
    """The evidence of `batch`'s frame `row`, judged by `verdict`; `min_fraction`: the share of a cell's pixels
    that must move for its velocity to count (the model's motion part), None without one."""
    n = verdict.n_patches
    beyond = int((verdict.patch_confidences >= HOT).sum())
    k = min(max(beyond, math.ceil(LEAST * n), 1), math.ceil(MOST * n))
    hottest = np.argsort(-verdict.patch_confidences, kind="stable")[:k]
    vectors = np.asarray(batch.patches[row, hottest], dtype=np.float16)
    velocities = None
    motion = batch.motion
    if motion is not None and min_fraction is not None:
        moving = bool(motion.valid[row]) & (motion.fraction[row, hottest] >= min_fraction)
        velocities = np.where(moving[:, None], motion.velocity[row, hottest], np.nan).astype(np.float32)
    return Evidence(hottest.astype(np.int64), vectors, velocities)
