"""The appearance memory's frame coreset: whole frames chosen by greedy k-center, so a long enrolment keeps
a bounded memory that still covers every distinct view; motion keeps learning from every frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamvad.bench.throughput import fit_small_model
from streamvad.normality.coreset import frame_coreset
from streamvad.normality.model import NormalityModel
from tests.test_worker import TEST_BACKBONE


def test_frame_coreset_keeps_one_frame_of_each_distinct_view() -> None:
    rng = np.random.default_rng(0)
    views = rng.normal(0, 1, (3, 12, 8)).astype(np.float32)  # three scenes' patch maps (12 patches, D 8)
    frames = np.concatenate([v + rng.normal(0, 0.01, (40, 12, 8)) for v in views]).astype(np.float32)
    kept = frame_coreset(frames, 3)
    assert sorted(k // 40 for k in kept) == [0, 1, 2]  # near-duplicates are not kept twice
    assert list(frame_coreset(frames, 3)) == list(kept)  # deterministic
    assert len(frame_coreset(frames, 500)) == 120


@pytest.mark.slow
def test_a_capped_memory_keeps_max_train_frames_and_motion_keeps_every_frame(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    from streamvad.config import NormalityConfig, StreamVADConfig
    from streamvad.offline.pipeline import clips_from_paths, fit

    full = fit_small_model(TEST_BACKBONE, tmp_path_factory.mktemp("full"), seconds=16, holdout=0.25)
    capped = full.parent.parent / "capped"
    cfg = StreamVADConfig(backbone=TEST_BACKBONE, normality=NormalityConfig(
        k_min=2, k_max=4, k_candidates=2, silhouette_sample=100, hdbscan="none", chroma=False,
        holdout_fraction=0.25, max_train_frames=12))
    fit(cfg, clips_from_paths([full.parent / "normal" / "normal.mp4"]), capped, sample_fps=4.0, progress=False)
    whole, small = NormalityModel.load(full / "normality"), NormalityModel.load(capped / "normality")
    assert whole.n_train == 48 and small.n_train == 12 and set(small.sources) <= set(whole.sources)
    assert (Path(capped / "motion" / "motion.npz").read_bytes() == Path(full / "motion" / "motion.npz").read_bytes())
    assert small.thresholds["distance/topk"] > 0
