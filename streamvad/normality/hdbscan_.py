"""HDBSCAN per token, the study's second scorer: confidence = 1 - membership strength.

The study found it near chance as configured (min_cluster_size = min_samples = 40), so by default
only the global token gets one; `normality.hdbscan: all` fits every token in parallel processes.

The hdbscan library (and scikit-learn and scipy with it: about 95 MB and 1.5 s of CPU) is imported where a
clusterer is fitted or rebuilt, and a loaded model's clusterers are rebuilt on first use (`Clusterers`), so a
worker serving another rule never imports it.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from joblib import Parallel, delayed

from streamvad.errors import InputError

if TYPE_CHECKING:
    import hdbscan

log = logging.getLogger(__name__)


def fit_one(x: np.ndarray, min_cluster_size: int, min_samples: int) -> hdbscan.HDBSCAN:
    """HDBSCAN on one token's vectors [Q, D], keeping the data approximate prediction needs.

    A short enrolment can hold fewer vectors than the configured sizes; they are then cut to what the
    footage has (hdbscan itself would fail deep inside its neighbour search), with a warning.
    """
    import hdbscan

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
    import hdbscan

    _, strength = hdbscan.approximate_predict(clusterer, np.asarray(points, dtype=np.float64))
    return np.clip(1.0 - np.asarray(strength, dtype=np.float64), 0.0, 1.0).astype(np.float32)


# What approximate prediction needs, as plain arrays: a clusterer is rebuilt from them exactly as `fit`
# left it (its prediction data is derived from the training points and the condensed tree).
_TREE = ("parent", "child", "lambda_val", "child_size")
FILE = "hdbscan.npz"
LEGACY_FILE = "hdbscan.pkl"


def save(path: Path, clusterers: Mapping[int, hdbscan.HDBSCAN]) -> None:
    """The clusterers as arrays in one .npz (no pickle: loading it cannot run code)."""
    arrays: dict[str, np.ndarray] = {"tokens": np.array(sorted(clusterers), dtype=np.int64)}
    for token, c in clusterers.items():
        tree = c._condensed_tree
        arrays.update({f"{token}/data": np.asarray(c._raw_data, dtype=np.float64),
                       f"{token}/labels": c.labels_, f"{token}/probabilities": c.probabilities_,
                       f"{token}/sizes": np.array([c.min_cluster_size, c.min_samples or c.min_cluster_size]),
                       **{f"{token}/tree_{k}": np.asarray(tree[k]) for k in _TREE}})
    with path.open("wb") as f:
        np.savez(f, **arrays)


def _rebuilt(z: Mapping[str, np.ndarray], token: int) -> hdbscan.HDBSCAN:
    import hdbscan

    sizes = z[f"{token}/sizes"]
    c = hdbscan.HDBSCAN(min_cluster_size=int(sizes[0]), min_samples=int(sizes[1]), metric="euclidean")
    tree = np.zeros(len(z[f"{token}/tree_parent"]), dtype=[("parent", np.intp), ("child", np.intp),
                                                          ("lambda_val", np.float64), ("child_size", np.intp)])
    for k in _TREE:
        tree[k] = z[f"{token}/tree_{k}"]
    c._raw_data, c._condensed_tree = z[f"{token}/data"], tree
    c.labels_, c.probabilities_ = z[f"{token}/labels"], z[f"{token}/probabilities"]
    if c.labels_.max() >= 0:  # an all-noise clusterer is never asked to predict (see confidence)
        c.generate_prediction_data()
    return c


class Clusterers(Mapping[int, "hdbscan.HDBSCAN"]):
    """A saved model's clusterers by token, each rebuilt from its checked arrays when first asked for."""

    def __init__(self, arrays: dict[str, np.ndarray], tokens: list[int]) -> None:
        self._arrays, self._tokens = arrays, dict.fromkeys(tokens)  # in order, and a set: scoring looks each up
        self._built: dict[int, hdbscan.HDBSCAN] = {}

    def __getitem__(self, token: int) -> hdbscan.HDBSCAN:
        if token not in self._tokens:
            raise KeyError(token)
        if token not in self._built:
            self._built[token] = _rebuilt(self._arrays, token)
        return self._built[token]

    def __contains__(self, token: object) -> bool:  # without building it (Mapping's would)
        return token in self._tokens

    def __iter__(self) -> Iterator[int]:
        return iter(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)


def load(directory: Path) -> Clusterers:
    """Inverse of `save`; a missing, broken or inconsistent file is an InputError naming it, here rather than at
    first use. A pickled state from an older StreamVAD is refused unread: unpickling a model file could run any
    code."""
    path = directory / FILE
    if not path.is_file() and (directory / LEGACY_FILE).is_file():
        raise InputError(f"{directory / LEGACY_FILE}: pickled HDBSCAN state is not loaded (a pickle can run code); "
                         "refit the model with this StreamVAD")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
        tokens = [int(t) for t in arrays["tokens"]]
        for token in tokens:
            data, labels = arrays[f"{token}/data"], arrays[f"{token}/labels"]
            tree = [arrays[f"{token}/tree_{k}"] for k in _TREE]
            if (not np.isfinite(data).all() or data.ndim != 2 or len(labels) != len(data)
                    or len(arrays[f"{token}/probabilities"]) != len(data) or arrays[f"{token}/sizes"].shape != (2,)
                    or len({len(t) for t in tree}) != 1):
                raise InputError(f"{path}: token {token}: non-finite or mismatched HDBSCAN arrays; refit the model")
    except (OSError, KeyError, ValueError, IndexError, TypeError, zipfile.BadZipFile) as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: cannot read the HDBSCAN state ({why}); refit the model") from None
    return Clusterers(arrays, tokens)
