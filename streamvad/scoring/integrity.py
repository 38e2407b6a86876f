"""Model files as they were written by `fit`: a SHA-256 of each, recorded in model.json, checked at load.

A model directory travels (shared volumes, copies between hosts, backups) and is read by every worker, so a
truncated copy, a flipped bit or a swapped file must be refused, naming the file, before any of it is used.
The Chroma system of record (`chroma/`) is excluded: Chroma rewrites its own files, and serving never reads
them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from streamvad.errors import ModelMismatchError

_EXCLUDED = ("chroma",)  # top-level folders of a part (normality/chroma) that change after the fit
_CHUNK = 1 << 20


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            sha.update(block)
    return sha.hexdigest()


def model_files(model_dir: Path, description: str) -> list[Path]:
    """The files whose content the model is: everything but `description` (model.json) and Chroma's folders."""
    return sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name != description
                  and not any(part in _EXCLUDED for part in p.relative_to(model_dir).parts))


def digest_files(model_dir: Path, description: str) -> dict[str, str]:
    """Relative path -> SHA-256 of every model file."""
    return {p.relative_to(model_dir).as_posix(): _digest(p) for p in model_files(model_dir, description)}


def verify_files(model_dir: Path, recorded: dict[str, str]) -> None:
    """ModelMismatchError naming the first file that is missing or differs from what the fit wrote."""
    for name, expected in sorted(recorded.items()):
        path = model_dir / name
        if not path.is_file():
            raise ModelMismatchError(f"{path}: missing; the fit wrote it (copy the whole model directory, or refit)")
        if _digest(path) != expected:
            raise ModelMismatchError(f"{path}: SHA-256 differs from the one recorded when the model was fitted "
                                     "(modified, truncated or corrupt); restore the file or refit the model")
