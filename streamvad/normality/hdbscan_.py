"""HDBSCAN per token, the study's second scorer: confidence = 1 - membership strength.

The study found it near chance as configured (min_cluster_size = min_samples = 40), so by default
only the global token gets one; `normality.hdbscan: all` fits every token in parallel processes.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hdbscan
import numpy as np
from joblib import Parallel, delayed

from streamvad.errors import InputError

log = logging.getLogger(__name__)


def fit_one(x: np.ndarray, min_cluster_size: int, min_samples: int) -> hdbscan.HDBSCAN:
    """HDBSCAN on one token's vectors [Q, D], keeping the data approximate prediction needs.

    A short enrolment can hold fewer vectors than the configured sizes; they are then cut to what the
    footage has (hdbscan itself would fail deep inside its neighbour search), with a warning.
    """
    if len(x) < 3:
        raise InputError(f"normality.hdbscan: {len(x)} training frame(s); HDBSCAN needs at least 3 (fit on more "
                         "footage, or set normality.hdbscan to none)")
    if min_samples >= len(x) or min_cluster_size > len(x):
        log.warning("HDBSCAN: %d training vectors, fewer than min_samples %d / min_cluster_size %d; using %d / %d "
                    "(fit on more footage for the configured sizes)", len(x), min_samples, min_cluster_size,
                    min(min_samples, len(x) - 1), min(min_cluster_size, len(x)))
        min_samples, min_cluster_size = min(min_samples, len(x) - 1), min(min_cluster_size, len(x))
    clusterer = hdbscan.HDBSCAN(
        min_cluster_size=min_cluster_size,
        min_samples=min_samples,
        metric="euclidean",
        prediction_data=True,
        core_dist_n_jobs=1,
    )
    clusterer.fit(np.asarray(x, dtype=np.float64))
    if clusterer.labels_.max() < 0:
        log.warning("HDBSCAN found no cluster in %d vectors (min_cluster_size %d, min_samples %d): every frame "
                    "will score HDBSCAN confidence 1; lower them or fit on more footage", len(x),
                    min_cluster_size, min_samples)
    return clusterer


def fit_tokens(
    block: Callable[[int, int], np.ndarray],
    tokens: list[int],
    min_cluster_size: int,
    min_samples: int,
    n_jobs: int = -1,
) -> dict[int, hdbscan.HDBSCAN]:
    """One clusterer per listed token; several tokens are fitted in parallel worker processes."""
    if len(tokens) == 1:
        return {tokens[0]: fit_one(block(tokens[0], tokens[0] + 1)[0], min_cluster_size, min_samples)}
    jobs = (delayed(fit_one)(block(t, t + 1)[0], min_cluster_size, min_samples) for t in tokens)
    fitted = Parallel(n_jobs=n_jobs)(jobs)
    return dict(zip(tokens, fitted, strict=True))


def confidence(clusterer: hdbscan.HDBSCAN, points: np.ndarray) -> np.ndarray:
    """1 - membership strength [B] of points [B, D]; noise has strength 0, hence confidence 1."""
    if clusterer.labels_.max() < 0:  # all noise: hdbscan would warn on every call
        return np.ones(len(points), dtype=np.float32)
    _, strength = hdbscan.approximate_predict(clusterer, np.asarray(points, dtype=np.float64))
    return np.clip(1.0 - np.asarray(strength, dtype=np.float64), 0.0, 1.0).astype(np.float32)


def save(path: Path, clusterers: dict[int, Any]) -> None:
    """Persist clusterers with pickle.

    This is the ONLY pickle in StreamVAD: the hdbscan package has no other way to save prediction
    data. Loading a pickle runs code, so only load model directories you produced or trust.
    """
    with path.open("wb") as f:
        pickle.dump(clusterers, f, protocol=pickle.HIGHEST_PROTOCOL)


def load(path: Path) -> dict[int, Any]:
    """Inverse of `save` (same trust caveat); a broken file is an InputError naming it."""
    try:
        with path.open("rb") as f:
            clusterers = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
        raise InputError(f"{path}: cannot read the HDBSCAN state ({err}); refit the model") from None
    if not isinstance(clusterers, dict):
        raise InputError(f"{path}: expected a dict of HDBSCAN clusterers, got {type(clusterers).__name__}")
    return clusterers
