"""ChromaDB as the system of record of a fitted model.

One collection per token ("global", "patch_000", ...), one record per memory row (every training vector,
or the token's coreset of them) with id "<token>-<row>" and metadata {cluster, loc_dens, source, frame}.
Serving never reads Chroma (the .npy and hnsw files are faster to load and query); Chroma keeps the
vectors queryable by other tools and lets
the serving files be rebuilt (`NormalityModel.from_chroma`).

Two places to keep them (`ChromaLocation`): an embedded store in the model directory, or a Chroma
server shared by several hosts and models (`normality.chroma_url`), where every collection name
carries the model's prefix ("lobby-global", "lobby-patch_000", ...) so models do not collide.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
from tqdm import tqdm

from streamvad.errors import InputError
from streamvad.layout import NORMALITY_DIR
from streamvad.normality.memory_files import FRAMES, SOURCES, TRAIN, rows_are_frames
from streamvad.normality.tokens import memory_block, token_name
from streamvad.parent_watch import exit_with_parent

if TYPE_CHECKING:
    import chromadb

log = logging.getLogger(__name__)

_DEFAULT_PORT = 8000  # `chroma run` and the chromadb/chroma image


def open_client(directory: Path) -> chromadb.ClientAPI:
    """An embedded client on `directory` (created if missing), with telemetry off. Chroma's client is imported
    here, where one opens: a second of CPU and tens of MB that a worker, which never reads the record, is spared."""
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(directory), settings=Settings(anonymized_telemetry=False))


def open_server(url: str) -> chromadb.ClientAPI:
    """A client of the Chroma server at `url` (http[s]://host[:port]), checked with a heartbeat so an
    unreachable server fails here with one line instead of deep inside a write."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"normality.chroma_url: expected http(s)://HOST[:PORT], got {url!r}")
    import chromadb  # as in open_client
    from chromadb.config import Settings

    try:
        client = chromadb.HttpClient(host=parts.hostname, port=parts.port or _DEFAULT_PORT,
                                     ssl=parts.scheme == "https", settings=Settings(anonymized_telemetry=False))
        client.heartbeat()
    except Exception as err:  # httpx and chromadb raise several types for a down or wrong server
        raise InputError(f"normality.chroma_url: cannot reach the Chroma server at {url} ({err})") from None
    return client


def default_prefix(model_dir: Path) -> str:
    """A collection-name prefix from the model directory's name (the `fit --out` directory, not the
    `normality` folder inside it), reduced to the characters Chroma accepts in names."""
    path = model_dir.resolve()
    return prefix_of(path.parent.name if path.name == NORMALITY_DIR else path.name)


def prefix_of(name: str, limit: int = 63) -> str:
    """`name` as a collection-name prefix: the characters Chroma accepts, at most `limit` of them, and no "--"
    (which separates a version marked normal from its base prefix, feedback.version_prefix)."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9_-]+", "-", name)).strip("_-")[:limit].rstrip("_-") or "model"


@dataclass(frozen=True)
class ChromaLocation:
    """Where a model's collections live: an embedded store (`directory`) or a server (`url` + `prefix`)."""

    directory: Path | None = None
    url: str | None = None
    prefix: str = ""

    def client(self) -> chromadb.ClientAPI:
        if self.url is not None:
            return open_server(self.url)
        assert self.directory is not None
        return open_client(self.directory)

    def name(self, token: int) -> str:
        return f"{self.prefix}-{token_name(token)}" if self.prefix else token_name(token)

    def __str__(self) -> str:
        return f"{self.url} (prefix {self.prefix})" if self.url is not None else str(self.directory)


def collection(client: chromadb.ClientAPI, token: int, create: bool = False, prefix: str = "") -> Any:
    name = ChromaLocation(prefix=prefix).name(token)
    if create:
        metadata = {"hnsw:space": "l2", "streamvad_token": token_name(token)}
        if prefix:
            metadata["streamvad_model"] = prefix
        return client.create_collection(name, metadata=metadata, embedding_function=None)
    return client.get_collection(name, embedding_function=None)


def delete(location: ChromaLocation, n_tokens: int) -> int:
    """Delete a model's collections on its server (those that exist); how many were deleted."""
    client = location.client()
    existing = {c.name for c in client.list_collections()}
    names = [name for name in map(location.name, range(n_tokens)) if name in existing]
    for name in names:
        client.delete_collection(name)
    return len(names)


def write(
    location: ChromaLocation,
    block: Callable[[int, int], np.ndarray],
    clusters: np.ndarray,
    loc_dens: np.ndarray,
    sources: list[str],
    frames: np.ndarray,
    tokens: Iterable[int] | None = None,
    progress: bool | None = None,
) -> None:
    """(Re)create the collections of `tokens` (default all) from memory rows and metadata; `frames` [T, M]
    is the training frame (index into `sources`) of each row.

    Existing collections of the same name are replaced, so saving twice never duplicates records.
    Adds go in batches of the client's maximum batch size. `progress` None: a bar only on a terminal.
    """
    client = location.client()
    existing = {c.name for c in client.list_collections()}
    batch = client.get_max_batch_size()
    n_tokens, q = clusters.shape
    todo = list(range(n_tokens) if tokens is None else tokens)
    for t in tqdm(todo, desc="chroma", unit="collection", disable=None if progress is None else not progress):
        name = location.name(t)
        if name in existing:
            client.delete_collection(name)
        coll = collection(client, t, create=True, prefix=location.prefix)
        x = block(t, t + 1)[0]
        for lo in range(0, q, batch):
            rows = range(lo, min(q, lo + batch))
            coll.add(
                ids=[f"{token_name(t)}-{r}" for r in rows],
                embeddings=x[lo : rows.stop],
                metadatas=[
                    {"cluster": int(clusters[t, r]), "loc_dens": float(loc_dens[t, r]),
                     "source": sources[frames[t, r]], "frame": int(frames[t, r])}
                    for r in rows
                ],
            )
    log.info("wrote %d Chroma collections of %d vectors to %s", len(todo), q, location)


def chroma_process(directory: Path, location: ChromaLocation, *, with_parent: bool = False) -> BaseProcess:
    """Chroma written at `location` from the memory files saved in `directory`, by a process of its own, started
    now (its client holds the GIL while it writes). `with_parent`: it exits when the process that started it
    is gone, for a fit's record, which nobody uses if the fit dies; a committed version's record is finished."""
    proc = mp.get_context("spawn").Process(target=_write_saved, args=(directory, location, with_parent),
                                           name="streamvad-chroma")
    proc.start()
    return proc


def _write_saved(directory: Path, location: ChromaLocation, with_parent: bool) -> None:
    """Process entry (`chroma_process`): Chroma from the memory files in `directory`."""
    if with_parent:
        exit_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    train = np.load(directory / TRAIN, mmap_mode="r")
    frames = np.load(directory / FRAMES) if (directory / FRAMES).is_file() else rows_are_frames(train.shape[:2])
    sources = json.loads((directory / SOURCES).read_text(encoding="utf-8"))
    write(location, partial(memory_block, train), np.load(directory / "clusters.npy"),
          np.load(directory / "loc_dens.npy"), sources, frames, progress=False)

def read(location: ChromaLocation, n_tokens: int, n_train: int, dim: int, n_frames: int) -> dict[str, Any]:
    """Every token's vectors [T, M, D], clusters, local densities and source frames [T, M], and the names of
    the `n_frames` training frames (those no token kept are "").

    Records are put back in row order from their ids; a missing collection or record is an
    InputError naming it.
    """
    if location.directory is not None and not location.directory.is_dir():
        raise InputError(f"{location}: no Chroma store here (the model was saved with normality.chroma off)")
    client = location.client()
    batch = client.get_max_batch_size()
    train = np.zeros((n_tokens, n_train, dim), dtype=np.float32)
    clusters = np.zeros((n_tokens, n_train), dtype=np.int32)
    loc_dens = np.zeros((n_tokens, n_train), dtype=np.float32)
    frames = np.zeros((n_tokens, n_train), dtype=np.int32)
    sources = [""] * n_frames
    for t in range(n_tokens):
        try:
            coll = collection(client, t, prefix=location.prefix)
        except Exception as err:  # chromadb raises different types across versions for a missing name
            raise InputError(f"{location}: Chroma collection {location.name(t)} missing ({err})") from None
        if coll.count() != n_train:
            raise InputError(f"{location}: Chroma collection {location.name(t)} holds {coll.count()} "
                             f"vectors, the manifest says {n_train}")
        for offset in range(0, n_train, batch):
            got = coll.get(limit=batch, offset=offset, include=["embeddings", "metadatas"])
            rows = [int(i.rsplit("-", 1)[1]) for i in got["ids"]]
            train[t, rows] = np.asarray(got["embeddings"], dtype=np.float32)
            clusters[t, rows] = [m["cluster"] for m in got["metadatas"]]
            loc_dens[t, rows] = [m["loc_dens"] for m in got["metadatas"]]
            for r, m in zip(rows, got["metadatas"], strict=True):
                frames[t, r] = frame = int(m.get("frame", r))  # records written before coresets: row r is frame r
                if 0 <= frame < n_frames:
                    sources[frame] = str(m.get("source", ""))
    return {"train": train, "clusters": clusters, "loc_dens": loc_dens, "frames": frames, "sources": sources}
