"""The memory's files, read and checked without the model's libraries.

A fitted model's memory (train.npy [T, M, D], frames.npy [T, M] when it is a coreset, sources.json) is what the
console's exemplars look rows up in and what its Chroma record is written from. Neither needs torch,
scikit-learn or Chroma's client to read it, so serve's supervisor, where the console runs, reads it here and
stays small; `NormalityModel.load` reads the same files with the same checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from streamvad.errors import InputError
from streamvad.normality.manifest import read_manifest
from streamvad.types import NormalMemory

TRAIN = "train.npy"
FRAMES = "frames.npy"
SOURCES = "sources.json"


def read_memory(directory: Path) -> NormalMemory:
    """The memory of the model in `directory`, its rows mapped from the file (an exemplar reads one token's)."""
    man = read_manifest(directory)
    shape = (man["n_patches"] + 1, man["n_train"])
    train = load_npy(directory / TRAIN, (*shape, man["dim"]), "f", mapped=True)
    frames = load_frames(directory, man, shape)
    return NormalMemory(train=train, frames=rows_are_frames(shape) if frames is None else frames,
                        sources=load_sources(directory / SOURCES, man.get("n_frames", man["n_train"])))


def rows_are_frames(shape: tuple[int, ...]) -> np.ndarray:
    """[T, M] frame of each row of a memory of every training frame: row r is frame r, for every token."""
    return np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape)


def load_frames(directory: Path, man: dict[str, Any], shape: tuple[int, int]) -> np.ndarray | None:
    """frames.npy, checked against the training frames; None for a memory of every frame (no coreset)."""
    if not man.get("coreset"):
        return None
    frames = load_npy(directory / FRAMES, shape, "iu")
    if frames.size and (frames.min() < 0 or frames.max() >= man["n_frames"]):
        raise InputError(f"{directory / FRAMES}: frame indices outside the {man['n_frames']} training frames; "
                         "the model is corrupt")
    return frames.astype(np.int32)


def load_npy(path: Path, shape: tuple[int, ...], kinds: str, *, mapped: bool = False) -> np.ndarray:
    """The array, checked for shape, dtype kind (numpy's "f", "iu") and finite values; `mapped`: mapped from the
    file copy-on-write instead of read (the check's pages are the page cache's, which the kernel can drop)."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="c" if mapped else None)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"{path}: cannot read ({err}); the model directory is incomplete or corrupt") from None
    if arr.shape != shape:
        raise InputError(f"{path}: shape {arr.shape}, the manifest expects {shape}; the model is corrupt")
    if arr.dtype.kind not in kinds:
        raise InputError(f"{path}: dtype {arr.dtype}, expected {'floats' if kinds == 'f' else 'integers'}; "
                         "the model is corrupt")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():  # a NaN memory would load and never flag anything
        raise InputError(f"{path}: holds NaN or infinite values; the model is corrupt")
    return arr


def load_sources(path: Path, n: int) -> list[str]:
    """sources.json: the names of the model's `n` training frames."""
    try:
        sources = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read ({err}); the model directory is incomplete or corrupt") from None
    if not isinstance(sources, list) or len(sources) != n:
        raise InputError(f"{path}: expected a list of {n} source names")
    return [str(s) for s in sources]
