"""ChromaDB as the system of record of a fitted model.

One collection per token ("global", "patch_000", ...), one record per training vector with id
"<token>-<row>" and metadata {cluster, loc_dens, source}. Serving never reads Chroma (the .npy and
hnsw files are faster to load and query); Chroma keeps the vectors queryable by other tools and lets
the serving files be rebuilt (`NormalityModel.from_chroma`). The same layout works against a Chroma
server for multi-host deployments.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
from chromadb.config import Settings
from tqdm import tqdm

from streamvad.errors import InputError
from streamvad.normality.tokens import token_name

log = logging.getLogger(__name__)


def open_client(directory: Path) -> chromadb.ClientAPI:
    """An embedded client on `directory` (created if missing), with telemetry off."""
    return chromadb.PersistentClient(path=str(directory), settings=Settings(anonymized_telemetry=False))


def collection(client: chromadb.ClientAPI, token: int, create: bool = False) -> Any:
    name = token_name(token)
    if create:
        return client.create_collection(name, metadata={"hnsw:space": "l2"}, embedding_function=None)
    return client.get_collection(name, embedding_function=None)


def write(
    directory: Path,
    block: Callable[[int, int], np.ndarray],
    clusters: np.ndarray,
    loc_dens: np.ndarray,
    sources: list[str],
    tokens: Iterable[int] | None = None,
    progress: bool | None = None,
) -> None:
    """(Re)create the collections of `tokens` (default all) from training vectors and metadata.

    Existing collections of the same name are replaced, so saving twice never duplicates records.
    Adds go in batches of the client's maximum batch size. `progress` None: a bar only on a terminal.
    """
    client = open_client(directory)
    existing = {c.name for c in client.list_collections()}
    batch = client.get_max_batch_size()
    n_tokens, q = clusters.shape
    todo = list(range(n_tokens) if tokens is None else tokens)
    for t in tqdm(todo, desc="chroma", unit="collection", disable=None if progress is None else not progress):
        name = token_name(t)
        if name in existing:
            client.delete_collection(name)
        coll = collection(client, t, create=True)
        x = block(t, t + 1)[0]
        for lo in range(0, q, batch):
            rows = range(lo, min(q, lo + batch))
            coll.add(
                ids=[f"{name}-{r}" for r in rows],
                embeddings=x[lo : rows.stop],
                metadatas=[
                    {"cluster": int(clusters[t, r]), "loc_dens": float(loc_dens[t, r]), "source": sources[r]}
                    for r in rows
                ],
            )
    log.info("wrote %d Chroma collections of %d vectors to %s", len(todo), q, directory)


def read(directory: Path, n_tokens: int, n_train: int, dim: int) -> dict[str, Any]:
    """Every token's vectors [T, Q, D], clusters [T, Q], local densities [T, Q] and sources [Q].

    Records are put back in row order from their ids; a missing collection or record is an
    InputError naming it.
    """
    if not directory.is_dir():
        raise InputError(f"{directory}: no Chroma store here (the model was saved with normality.chroma off)")
    client = open_client(directory)
    batch = client.get_max_batch_size()
    train = np.zeros((n_tokens, n_train, dim), dtype=np.float32)
    clusters = np.zeros((n_tokens, n_train), dtype=np.int32)
    loc_dens = np.zeros((n_tokens, n_train), dtype=np.float32)
    sources = [""] * n_train
    for t in range(n_tokens):
        try:
            coll = collection(client, t)
        except Exception as err:  # chromadb raises different types across versions for a missing name
            raise InputError(f"{directory}: Chroma collection {token_name(t)} missing ({err})") from None
        if coll.count() != n_train:
            raise InputError(f"{directory}: Chroma collection {token_name(t)} holds {coll.count()} "
                             f"vectors, the manifest says {n_train}")
        for offset in range(0, n_train, batch):
            got = coll.get(limit=batch, offset=offset, include=["embeddings", "metadatas"])
            rows = [int(i.rsplit("-", 1)[1]) for i in got["ids"]]
            train[t, rows] = np.asarray(got["embeddings"], dtype=np.float32)
            clusters[t, rows] = [m["cluster"] for m in got["metadatas"]]
            loc_dens[t, rows] = [m["loc_dens"] for m in got["metadatas"]]
            if t == 0:
                for r, m in zip(rows, got["metadatas"], strict=True):
                    sources[r] = str(m.get("source", ""))
    return {"train": train, "clusters": clusters, "loc_dens": loc_dens, "sources": sources}
