"""Token naming and token-major views of embeddings.

A fitted model treats the global embedding and every patch position as independent "tokens":
token 0 is the global embedding, token i >= 1 is patch i - 1. Fitting and serving work token-major
([T, Q, D]) so that one batched tensor operation covers every token at once.
"""

from __future__ import annotations

import numpy as np

GLOBAL = "global"


def token_name(token: int) -> str:
    """Collection / file name of a token: "global", "patch_000", "patch_001", ..."""
    return GLOBAL if token == 0 else f"patch_{token - 1:03d}"


def token_block(global_: np.ndarray, patches: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Tokens [start, stop) as a float32 [t, Q, D] array.

    `patches` is frame-major [Q, N, D] (possibly an np.memmap); only the requested slice is read, so
    fitting a data set larger than memory streams through it chunk by chunk.
    """
    parts = []
    if start == 0:
        parts.append(np.asarray(global_, dtype=np.float32)[None])
    lo, hi = max(start, 1) - 1, stop - 1
    if hi > lo:
        parts.append(np.ascontiguousarray(np.asarray(patches[:, lo:hi, :], dtype=np.float32).transpose(1, 0, 2)))
    return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


def memory_block(train: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Tokens [start, stop) of a token-major memory [T, M, D] (float16 or a mapped file) as float32, what every
    fitting step and the Chroma record compute in."""
    return np.asarray(train[start:stop], dtype=np.float32)


def chunk_size(bytes_per_token: int, budget_bytes: int = 512 << 20) -> int:
    """How many tokens one batched step may hold so its temporaries stay within `budget_bytes`."""
    return max(1, budget_bytes // max(1, bytes_per_token))
