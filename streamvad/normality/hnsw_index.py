"""One hnswlib index per token, the serving alternative to exact dense search.

Dense search reads every training vector for every query batch; for large normal sets (many
thousands of vectors per token) an HNSW graph answers 1-NN in logarithmic time instead. Queries for
all tokens run on a thread pool (hnswlib releases the GIL during search).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

import hnswlib
import numpy as np

from streamvad.errors import InputError
from streamvad.normality.tokens import token_name

EF_CONSTRUCTION = 200
EF_SEARCH = 64
LINKS = 16


def build(x: np.ndarray, seed: int = 0) -> hnswlib.Index:
    """An L2 index over one token's vectors [Q, D], labels = row numbers."""
    index = hnswlib.Index(space="l2", dim=x.shape[1])
    index.init_index(max_elements=x.shape[0], ef_construction=EF_CONSTRUCTION, M=LINKS, random_seed=seed)
    index.add_items(x, np.arange(x.shape[0]))
    index.set_ef(EF_SEARCH)
    return index


def build_all(block: Callable[[int, int], np.ndarray], n_tokens: int, seed: int = 0) -> list[hnswlib.Index]:
    return [build(block(t, t + 1)[0], seed) for t in range(n_tokens)]


def path_for(directory: Path, token: int) -> Path:
    return directory / f"{token_name(token)}.bin"


def save_all(indexes: list[hnswlib.Index], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for t, index in enumerate(indexes):
        index.save_index(str(path_for(directory, t)))


def load_all(directory: Path, n_tokens: int, dim: int, n_train: int) -> list[hnswlib.Index]:
    indexes = []
    for t in range(n_tokens):
        path = path_for(directory, t)
        if not path.is_file():
            raise InputError(f"{path}: hnsw index file missing; refit the model or rebuild it from Chroma")
        index = hnswlib.Index(space="l2", dim=dim)
        try:
            index.load_index(str(path), max_elements=n_train)
        except RuntimeError as err:
            raise InputError(f"{path}: not a readable hnsw index ({err}); refit or rebuild it from Chroma") from None
        index.set_ef(EF_SEARCH)
        indexes.append(index)
    return indexes


def nearest(indexes: list[hnswlib.Index], queries: np.ndarray, pool: Executor | None = None,
            k: int = 1) -> np.ndarray:
    """Rows of the (approximate) k nearest training vectors [T, B, k], nearest first, for queries [T, B, D].

    Tokens are spread over `pool` (the caller keeps one alive across calls), sequential without one.
    """

    def one(t: int) -> np.ndarray:
        labels, _ = indexes[t].knn_query(queries[t], k=k, num_threads=1)
        return labels

    rows = pool.map(one, range(len(indexes))) if pool is not None else map(one, range(len(indexes)))
    return np.stack(list(rows)).astype(np.int64)
