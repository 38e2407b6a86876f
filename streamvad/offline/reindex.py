"""Serve a fitted model by another search index without fitting it again (`streamvad reindex`).

The index is a serving choice (normality.index): a camera whose memory grew past what exact search serves in
time, or a fleet moving to per-camera models, switches by rebuilding the index on the memory it has. The
memory, thresholds, motion part and system of record are copied unchanged, so scores change only where the
new index finds another nearest row.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from streamvad.errors import InputError
from streamvad.layout import NORMALITY_DIR
from streamvad.model_store import ModelStore, Version
from streamvad.normality import projected_index
from streamvad.normality.model import NormalityModel
from streamvad.scoring.engine import ModelInfo
from streamvad.scoring.integrity import verify_files

log = logging.getLogger(__name__)


def reindex(source: Path, out: Path, index: str) -> NormalityModel:
    """A copy of the model in `source` at `out`, served by `index`; the source is checked and left as it is."""
    if out.exists():
        raise InputError(f"{out}: already exists; reindex writes a new model directory")
    info = ModelInfo.load(source)
    verify_files(source, info.files)
    if not (source / NORMALITY_DIR).is_dir():
        raise InputError(f"{source}: a {info.kind} detector has no search index; only k-NN models are reindexed")
    work = out.with_name(f".{out.name}.reindex-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    # the old index does not come along: save writes the new one only
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("hnsw", projected_index.FILE, "version.json"))
    try:
        model = NormalityModel.load(source / NORMALITY_DIR)
        model.config = model.config.model_copy(update={"index": index})
        model.rebuild_indexes()
        model.save(work / NORMALITY_DIR, write_chroma=False, memory=False)  # the memory files were copied as they are
        info.save(work)  # last: the checksums of the copy as it now is
        os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("%s: the model of %s, served by %s search", out, source, index)
    return model


def reindex_current(store: ModelStore, index: str, keep: int) -> Version:
    """The store's current version served by `index`, added as the next version and made current (a running
    worker swaps it in between batches); the store then keeps its newest `keep` versions."""
    with store.writing():
        current = store.current()
        if current is None:
            raise InputError(f"{store.root}: no current model version to reindex (the camera is still learning)")
        work = store.root / f".reindex-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        reindex(current.path, work, index)
        version = store.add(work, {**{k: current.record[k] for k in ("camera", "source") if k in current.record},
                                   "reindexed": index, "previous": current.name})
        store.activate(version.name)
        store.prune(keep)
        return version
