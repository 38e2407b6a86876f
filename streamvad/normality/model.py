"""The fitted normality model: what normal footage looks like, per token, and how to serve it.

On disk (one directory):
- manifest.json: format version, backbone manifest, grid, N, D, Q, k and silhouette per token,
  calibrated thresholds, library versions, creation time, the NormalityConfig used. Written last
  (atomically), so a directory with a manifest is a complete model.
- train.npy [T, M, D] float16 (older models: float32; distances are always computed in float32),
  clusters.npy [T, M] int32, loc_dens.npy [T, M] float32: the serving arrays (token 0 = global, token
  i = patch i - 1), M rows per token; sources.json: the Q training frames.
- frames.npy [T, M] int32: which training frame each row came from, when the memory is a per-token
  coreset (`normality.memory_budget_mb`; see `memory_rows`); without it row r of every token is frame r.
- global_proj.npz: mean and [D_global, D] projection of the global embedding, when the backbone's
  global width differs from its patch width (see `GlobalProjection`).
- hnsw/<token>.bin: one hnswlib index per token when fitted with `index: hnsw`.
- projected.npz: per-token PCA sketches of the memory when fitted with `index: projected` (see
  projected_index).
- hdbscan.npz: HDBSCAN clusterers as arrays (rebuilt at load; no pickle, see hdbscan_.save).
- nnn.npz: neighbours-of-neighbours table and feature blocks of the original k-NNN (see nnn.py); a
  model without it (fitted by an older StreamVAD) builds it in memory the first time it is needed.
- chroma/: the ChromaDB system of record; never read when serving, used by `from_chroma`. With
  `normality.chroma_url` the collections go to that Chroma server instead (prefixed per model, see
  chroma_store) and the manifest's `chroma_server` says where; the serving files stay here, so
  workers on other hosts only need this directory (a shared volume), never the server.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from tqdm import tqdm

from streamvad.config import NormalityConfig
from streamvad.errors import InputError
from streamvad.normality import chroma_store, hdbscan_, hnsw_index, kmeans, knnn, projected_index
from streamvad.normality.coreset import coreset_rows, token_coreset
from streamvad.normality.manifest import FORMAT_VERSION, MANIFEST, check_backbone, plain, read_manifest
from streamvad.normality.memory_files import (
    FRAMES,
    SOURCES,
    TRAIN,
    load_frames,
    load_npy,
    load_sources,
    rows_are_frames,
)
from streamvad.normality.nnn import NNN_FILE, NNNState
from streamvad.normality.tokens import chunk_size, memory_block, token_block

log = logging.getLogger(__name__)

PROJECTION = "global_proj.npz"
_LIBRARIES = ("streamvad", "torch", "numpy", "scikit-learn", "hdbscan", "hnswlib", "chromadb")


def _versions() -> dict[str, str]:
    out = {}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "unknown"
    return out


def _grid(backbone: dict[str, Any], n: int) -> tuple[int, int]:
    if "grid" in backbone:
        h, w = (int(v) for v in backbone["grid"])
        if h * w != n:
            raise InputError(f"backbone grid {h}x{w} does not hold the {n} patches of the embeddings")
        return h, w
    side = math.isqrt(n)
    return (side, side) if side * side == n else (1, n)


def _hdbscan_tokens(mode: str, n_tokens: int) -> list[int]:
    return {"none": [], "global": [0], "all": list(range(n_tokens))}[mode]


@dataclass
class GlobalProjection:
    """Maps global embeddings into the patch width D so every token shares one [T, Q, D] tensor.

    CNN backbones pool a wider head for the global embedding (EfficientNet-Lite0: 1280 vs 112 per
    patch). A wider global is reduced to its top-D principal components of the normal training
    set (distances between normal frames are kept as far as D dimensions can); a narrower one is
    zero-padded, which keeps Euclidean distances exactly. ViTs need neither (None).
    """

    mean: np.ndarray  # [D_global]
    basis: np.ndarray  # [D_global, D]

    @classmethod
    def fit(cls, global_: np.ndarray, dim: int) -> GlobalProjection:
        g = np.asarray(global_, dtype=np.float64)
        mean = g.mean(0)
        if g.shape[1] < dim:
            return cls(np.zeros_like(mean, dtype=np.float32), np.eye(g.shape[1], dim, dtype=np.float32))
        _, _, vt = np.linalg.svd(g - mean, full_matrices=False)
        basis = np.zeros((g.shape[1], dim), dtype=np.float32)
        basis[:, : min(dim, vt.shape[0])] = vt[:dim].T
        return cls(mean.astype(np.float32), basis)

    def __call__(self, global_: np.ndarray) -> np.ndarray:
        return ((np.asarray(global_, dtype=np.float32) - self.mean) @ self.basis).astype(np.float32)

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, basis=self.basis)

    @classmethod
    def load(cls, path: Path) -> GlobalProjection:
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["mean"], z["basis"])
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"{path}: cannot read the global projection ({err}); the model is corrupt") from None


@dataclass
class NormalityModel:
    """Per-token normal data and what serving needs from it. Token 0 is global, token i patch i - 1."""

    train: np.ndarray  # [T, M, D] float16 (float32 in older models)
    clusters: np.ndarray  # [T, M] int32 k-Means cluster of each training vector
    loc_dens: np.ndarray  # [T, M] float32 local density of each training vector
    k: np.ndarray  # [T] chosen k
    silhouette: np.ndarray  # [T] silhouette of the chosen k (NaN if not scored)
    grid: tuple[int, int]
    backbone: dict[str, Any]
    sources: list[str]
    config: NormalityConfig
    thresholds: dict[str, float] = field(default_factory=dict)
    hdbscan: Mapping[int, Any] = field(default_factory=dict)  # token -> fitted hdbscan.HDBSCAN
    indexes: list[Any] | None = None  # hnswlib indexes per token when config.index == "hnsw"
    projected: projected_index.ProjectedIndex | None = None  # when config.index == "projected"
    projection: GlobalProjection | None = None  # when the global width differs from the patch width
    nnn: NNNState | None = None  # original k-NNN state; see `nnn_state`
    path: Path | None = None
    chroma_server: dict[str, str] | None = None  # {"url", "prefix"} when the collections live on a server
    created_at: str = ""
    versions: dict[str, str] = field(default_factory=_versions)
    frames: np.ndarray | None = None  # [T, M] training frame of each row (a coreset); None: row r is frame r
    serving_bytes: int = 0  # what serving holds in memory (recorded at save)

    @property
    def n_tokens(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_patches(self) -> int:
        return self.n_tokens - 1

    @property
    def n_train(self) -> int:
        """Memory rows per token (the training frames, or each token's coreset of them)."""
        return int(self.train.shape[1])

    @property
    def n_frames(self) -> int:
        return len(self.sources)

    def frame_of(self) -> np.ndarray:
        """[T, M]: the training frame (index into `sources`) each memory row came from."""
        return self.frames if self.frames is not None else rows_are_frames(self.train.shape[:2])

    @property
    def dim(self) -> int:
        return int(self.train.shape[2])

    @property
    def global_dim(self) -> int:
        """Width of the global embedding the backbone produces (before any projection)."""
        return self.dim if self.projection is None else int(self.projection.basis.shape[0])

    def token_queries(self, global_: np.ndarray, patches: np.ndarray) -> np.ndarray:
        """Frame-major queries [B, T, D] (global first), projecting the global embedding if needed."""
        g = global_ if self.projection is None else self.projection(global_)
        return np.concatenate([np.asarray(g, dtype=np.float32)[:, None, :], patches], axis=1)

    @classmethod
    def fit(
        cls,
        global_: np.ndarray,
        patches: np.ndarray,
        cfg: NormalityConfig,
        *,
        sources: list[str],
        backbone: dict[str, Any],
        device: str = "cpu",
        progress: bool | None = None,
        max_bytes: int | None = None,
        nnn: bool = False,
        density: bool = True,
    ) -> NormalityModel:
        """Fit k-Means (k by silhouette), local densities, optional HDBSCAN and hnsw indexes.

        `global_` is [Q, D] and `patches` [Q, N, D] (may be an np.memmap; it is read once, in
        chunks). `progress` None shows tqdm bars only on a terminal. `max_bytes`: serving memory the
        appearance model may use; when every frame does not fit, each token keeps the k-center coreset
        of its vectors that does (training frames of a video are near-duplicates, so a tenth of them
        covers what all of them do). `nnn`: build the original k-NNN's neighbourhoods now (a scorer
        that needs them builds them on first use otherwise). `density` False: HDBSCAN is left to a later
        `fit_density` (a fit that writes Chroma meanwhile, which does not record it).
        """
        q, n, d = patches.shape
        if global_.ndim != 2 or global_.shape[0] != q or len(sources) != q:
            raise InputError(f"fit: global {global_.shape}, patches {patches.shape} and {len(sources)} sources "
                             "disagree (expected global [Q, D_global], patches [Q, N, D], Q sources)")
        global_dim = global_.shape[1]
        projection = GlobalProjection.fit(global_, d) if global_dim != d else None
        if projection is not None:
            global_ = projection(global_)
        grid = _grid(backbone, n)
        n_tokens = n + 1
        rows = q if max_bytes is None else min(q, memory_rows(max_bytes, n_tokens, d, cfg, global_dim, q))
        frames = None
        if rows < q:  # chosen from the embeddings as they are: the full token-major memory is never built
            t0 = time.perf_counter()
            frames = token_coreset(global_, patches, rows, cfg.seed).astype(np.int32)
            train = coreset_rows(global_, patches, frames)
            log.info("memory: %d of %d training vectors per token (k-center coreset within %.0f MB), chosen in "
                     "%.1f s", rows, q, max_bytes / 2**20, time.perf_counter() - t0)
        else:
            train = np.empty((n_tokens, q, d), dtype=np.float32)
            step = chunk_size(4 * q * d, 256 << 20)
            for lo in range(0, n_tokens, step):
                train[lo : lo + step] = token_block(global_, patches, lo, min(n_tokens, lo + step))
        train = serving_memory(train)
        q = rows
        block = partial(memory_block, train)
        candidates = kmeans.k_candidates(cfg.k_min, cfg.k_max, cfg.k_candidates, q)
        log.info("fitting %d tokens x %d vectors (D=%d), k in %s", n_tokens, q, d, candidates)
        with tqdm(total=n_tokens, desc="k-means", unit="token", disable=_quiet(progress)) as bar:
            km = kmeans.fit_tokens(block, n_tokens, q, d, candidates, iters=cfg.kmeans_iters,
                                   sample=cfg.silhouette_sample, seed=cfg.seed, device=device,
                                   progress=bar.update)
        loc = knnn.local_density(block, km.labels, cfg.density_m, device)
        indexes, projected = _serving_index(cfg.index, train, cfg.seed)
        model = cls(train=train, clusters=km.labels, loc_dens=loc, k=km.k, silhouette=km.silhouette,
                    grid=grid, backbone=dict(backbone), sources=list(sources), config=cfg,
                    indexes=indexes, projected=projected, projection=projection, frames=frames,
                    created_at=datetime.now(UTC).isoformat())
        if nnn:
            model.nnn_state()
        if density:
            model.fit_density(global_, patches, projected=True)
        return model

    def fit_density(self, global_: np.ndarray, patches: np.ndarray, *, projected: bool = False) -> None:
        """HDBSCAN on the configured tokens, from every training frame (global_ [Q, D_global], projected already
        when `projected`, and patches [Q, N, D]): density clustering needs the density, which a coreset spread
        to cover the vectors does not keep."""
        tokens = _hdbscan_tokens(self.config.hdbscan, self.n_tokens)
        if not tokens:
            return
        if self.projection is not None and not projected:
            global_ = self.projection(global_)
        self.hdbscan = hdbscan_.fit_tokens(partial(token_block, global_, patches), tokens,
                                           self.config.hdbscan_min_cluster_size, self.config.hdbscan_min_samples)

    def rebuild_indexes(self) -> None:
        """The serving index of the memory as it is now (rows added or replaced since the fit), of the kind
        `config.index` names; a dense model keeps none."""
        self.indexes, self.projected = _serving_index(self.config.index, self.train, self.config.seed)

    def has_nnn(self) -> bool:
        """Whether the original k-NNN's neighbourhoods exist (in memory or in the model directory)."""
        return self.nnn is not None or (self.path is not None and (self.path / NNN_FILE).is_file())

    def nnn_state(self) -> NNNState:
        """The original k-NNN's neighbourhoods: read from the model directory on first use (serving holds them
        only for an `nnn` scorer), or built now (and kept) for a model saved without them."""
        nnn_file = None if self.path is None else self.path / NNN_FILE
        if self.nnn is None and nnn_file is not None and nnn_file.is_file():
            self.nnn = NNNState.load(nnn_file, self.n_tokens, self.n_train, self.dim)
        if self.nnn is None:
            log.info("model %s has no k-NNN neighbourhoods (scoring.method was not nnn at fit time); building them",
                     self.path or "(unsaved)")
            cfg = self.config
            self.nnn = NNNState.fit(self.train.astype(np.float32), cfg.nnn_neighbours, cfg.nnn_block, seed=cfg.seed)
        return self.nnn

    def save_memory(self, directory: Path) -> None:
        """The memory and what each row carries (what Chroma records): fixed once the model is fitted."""
        directory.mkdir(parents=True, exist_ok=True)
        # a new file renamed over the old: an hnsw model maps its train.npy, and writing into the mapped file
        # (a model saved where it was loaded from) would change or truncate the pages under the map
        tmp = directory / "train.npy.tmp"
        with tmp.open("wb") as f:
            np.save(f, self.train)
        tmp.replace(directory / TRAIN)
        np.save(directory / "clusters.npy", self.clusters)
        np.save(directory / "loc_dens.npy", self.loc_dens)
        if self.frames is not None:
            np.save(directory / FRAMES, self.frames)
        (directory / SOURCES).write_text(json.dumps(self.sources), encoding="utf-8")

    def save(self, directory: str | Path, *, write_chroma: bool = True, progress: bool | None = None,
             memory: bool = True) -> None:
        """Write the model to `directory`; Chroma too when config.chroma and `write_chroma`. `memory` False: the
        memory was saved already (`save_memory`, which a Chroma writer may be reading)."""
        directory = Path(directory)
        if memory:
            self.save_memory(directory)
        if self.indexes is not None:
            hnsw_index.save_all(self.indexes, directory / "hnsw")
        if self.projected is not None:
            self.projected.save(directory / projected_index.FILE)
        if self.hdbscan:
            hdbscan_.save(directory / hdbscan_.FILE, self.hdbscan)
        if self.projection is not None:
            self.projection.save(directory / PROJECTION)
        if self.nnn is not None:
            self.nnn.save(directory)
        if self.config.chroma and write_chroma:
            self.write_chroma(self.chroma_location(directory), progress)
        self.path = directory
        self.serving_bytes = _serving_bytes(directory, self.n_tokens * self.n_train)
        self.save_manifest()

    def chroma_location(self, directory: Path) -> chroma_store.ChromaLocation:
        """Where this model's collections go: embedded in `directory`, or on the configured server (recorded for
        the manifest, so call it before `save`'s manifest is written)."""
        if self.config.chroma_url is not None:
            prefix = self.config.chroma_prefix or chroma_store.default_prefix(directory)
            self.chroma_server = {"url": self.config.chroma_url, "prefix": prefix}
        return self.recorded_chroma(directory)

    def recorded_chroma(self, directory: Path) -> chroma_store.ChromaLocation:
        """Where the manifest says this model's collections are (a server's, else `directory`'s own store)."""
        return _chroma_location(directory, self.chroma_server)

    def write_chroma(self, location: chroma_store.ChromaLocation, progress: bool | None = None) -> None:
        """The system of record: every memory row with its metadata."""
        chroma_store.write(location, partial(memory_block, self.train), self.clusters, self.loc_dens, self.sources,
                           self.frame_of(), progress=progress)

    def chroma_writer(self, directory: Path) -> BaseProcess:
        """Chroma written by a process of its own from the saved memory, started now.

        What Chroma records never changes once the model is clustered (thresholds are not in it), and its
        client holds the GIL while it writes (a third of a millisecond a vector), so a fit saves the memory
        (`save_memory`), starts this, and calibrates on its other core; `save(..., memory=False)` afterwards.
        """
        location = self.chroma_location(directory)
        self.save_memory(directory)
        return chroma_store.chroma_process(directory, location, with_parent=True)

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "backbone": plain(self.backbone),
            "grid": list(self.grid),
            "n_patches": self.n_patches,
            "dim": self.dim,
            "global_dim": self.global_dim,
            "n_train": self.n_train,
            "n_frames": self.n_frames,
            "coreset": self.frames is not None,
            "serving_bytes": self.serving_bytes,
            "index": self.config.index,
            "hdbscan_tokens": sorted(int(t) for t in self.hdbscan),
            "k": [int(v) for v in self.k],
            "silhouette": [None if np.isnan(v) else round(float(v), 6) for v in self.silhouette],
            "thresholds": dict(self.thresholds),
            "versions": self.versions,
            "created_at": self.created_at,
            "config": self.config.model_dump(mode="json"),
            "chroma_server": self.chroma_server,
        }

    def set_thresholds(self, thresholds: dict[str, float], *, replace: bool = False) -> None:
        """Record calibrated decision thresholds ("knnn/majority": 0.93, ...); call save_manifest()."""
        if replace:
            self.thresholds = {}
        self.thresholds.update({k: float(v) for k, v in thresholds.items()})

    def save_manifest(self) -> None:
        """Rewrite manifest.json only (after set_thresholds); atomic, so readers never see half of it."""
        if self.path is None:
            raise InputError("save_manifest: the model has no directory yet; call save(dir) first")
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.manifest(), indent=1), encoding="utf-8")
        tmp.replace(self.path / MANIFEST)

    @classmethod
    def load(cls, directory: str | Path, backbone: dict[str, Any] | None = None) -> NormalityModel:
        """Load the serving files (never Chroma); check the backbone identity when one is given."""
        directory = Path(directory)
        man = read_manifest(directory)
        if backbone is not None:
            check_backbone(directory, man["backbone"], backbone)
        t, q, d = man["n_patches"] + 1, man["n_train"], man["dim"]
        arrays = {
            # an index answers every search and the memory is read only where a row is looked up (exemplars,
            # feedback, a projected index's candidates): it is mapped, so a worker holds no second copy of it
            "train": load_npy(directory / TRAIN, (t, q, d), "f", mapped=man["index"] != "dense"),
            "clusters": load_npy(directory / "clusters.npy", (t, q), "iu"),
            "loc_dens": load_npy(directory / "loc_dens.npy", (t, q), "f"),
            "sources": load_sources(directory / SOURCES, man.get("n_frames", q)),
            "frames": load_frames(directory, man, (t, q)),
        }
        indexes = hnsw_index.load_all(directory / "hnsw", t, d, q) if man["index"] == "hnsw" else None
        projected = projected_index.ProjectedIndex.load(directory / projected_index.FILE, t, q, d) \
            if man["index"] == "projected" else None
        return cls._from_parts(directory, man, arrays, (indexes, projected))

    @classmethod
    def from_chroma(cls, directory: str | Path, *, url: str | None = None) -> NormalityModel:
        """Rebuild the serving arrays (and index) from the Chroma system of record.

        The manifest is still needed for the shapes, identity and where the collections are (the
        model directory, or the server it names; `url` overrides that server's address, for a host
        that reaches it under another name). `save(directory, write_chroma=False)` then rewrites
        the serving files.
        """
        directory = Path(directory)
        man = read_manifest(directory)
        t, q, d = man["n_patches"] + 1, man["n_train"], man["dim"]
        server = man.get("chroma_server")
        if server is not None and url is not None:
            server = {**server, "url": url}
        arrays = chroma_store.read(_chroma_location(directory, server), t, q, d, man.get("n_frames", q))
        arrays["frames"] = arrays["frames"] if man.get("coreset") else None
        arrays["train"] = serving_memory(arrays["train"])  # Chroma keeps float32 copies of the float16 rows: exact
        search = _serving_index(man["index"], arrays["train"], man["config"].get("seed", 0))
        return cls._from_parts(directory, man, arrays, search)

    @classmethod
    def _from_parts(
        cls, directory: Path, man: dict[str, Any], arrays: dict[str, Any],
        search: tuple[list[Any] | None, projected_index.ProjectedIndex | None],
    ) -> NormalityModel:
        proj = directory / PROJECTION
        try:
            config = NormalityConfig.model_validate(man["config"])
        except ValidationError as err:
            raise InputError(f"{directory / MANIFEST}: invalid config section ({err.errors()[0]['msg']})") from None
        sil = np.array([np.nan if v is None else v for v in man["silhouette"]], dtype=np.float32)
        return cls(
            train=arrays["train"], clusters=arrays["clusters"], loc_dens=arrays["loc_dens"],
            k=np.asarray(man["k"], dtype=np.int32), silhouette=sil, grid=tuple(man["grid"]),
            backbone=man["backbone"], sources=arrays["sources"], config=config,
            thresholds={k: float(v) for k, v in man["thresholds"].items()},
            hdbscan=hdbscan_.load(directory) if man["hdbscan_tokens"] else {}, indexes=search[0], projected=search[1],
            projection=GlobalProjection.load(proj) if man.get("global_dim", man["dim"]) != man["dim"] else None,
            nnn=None,
            path=directory, chroma_server=man.get("chroma_server"), created_at=man["created_at"],
            versions=man["versions"], frames=arrays["frames"], serving_bytes=int(man.get("serving_bytes", 0)),
        )


def _quiet(progress: bool | None) -> bool | None:
    """tqdm's `disable` for a progress flag: None means "only on a terminal"."""
    return None if progress is None else not progress


def _chroma_location(directory: Path, server: dict[str, str] | None) -> chroma_store.ChromaLocation:
    """The model's collections: on the server the manifest names, else embedded in the model directory."""
    if server is None:
        return chroma_store.ChromaLocation(directory=directory / "chroma")
    return chroma_store.ChromaLocation(url=server["url"], prefix=server["prefix"])


def _serving_index(index: str, train: np.ndarray, seed: int
                   ) -> tuple[list[Any] | None, projected_index.ProjectedIndex | None]:
    """The hnsw indexes or the projected index of the memory `train`, as `index` (the config's) asks."""
    block = partial(memory_block, train)
    if index == "hnsw":
        return hnsw_index.build_all(block, train.shape[0], seed), None
    if index == "projected":
        return None, projected_index.ProjectedIndex.build(block, *train.shape, seed=seed)
    return None, None


def serving_memory(train: np.ndarray) -> np.ndarray:
    """The memory as served: float16 (half the bytes; distances stay float32), unless a value overflows it."""
    half = train.astype(np.float16)
    if np.isfinite(half).all():
        return half
    log.warning("memory: embeddings exceed float16's range; serving it in float32 (twice the memory)")
    return train


def memory_rows(max_bytes: int, n_tokens: int, dim: int, cfg: NormalityConfig, global_dim: int,
                n_frames: int) -> int:
    """How many vectors per token fit in `max_bytes` of serving memory (at least 2).

    Per row and token: the float16 vector, its float32 squared norm (computed at load), local density, cluster
    and source frame; an hnsw index adds a float32 copy and its links, a projected index a float32 sketch and its
    norm. Fixed: the global projection, and each
    HDBSCAN token's clusterer (float64 points of every training frame, and its tree).
    """
    per_row = n_tokens * (2 * dim + 16)
    if cfg.index == "hnsw":
        per_row += n_tokens * (4 * dim + 8 * hnsw_index.LINKS + 16)
    if cfg.index == "projected":
        per_row += n_tokens * (4 * projected_index.DIMS + 4)
    fixed = 4 * (global_dim + 1) * dim if global_dim != dim else 0
    fixed += len(_hdbscan_tokens(cfg.hdbscan, n_tokens)) * n_frames * (8 * dim + 64)
    rows = (max_bytes - fixed) // per_row
    if rows < 2:
        log.warning("normality.memory_budget_mb: %.1f MiB leaves no room for the memory (the global projection "
                    "and HDBSCAN take %.1f MiB); keeping 2 vectors per token, over budget",
                    max_bytes / 2**20, fixed / 2**20)
    return max(2, rows)


def _serving_bytes(directory: Path, n_rows: int) -> int:
    """Bytes serving holds: the files a load reads (arrays, indexes, clusterers) plus the squared norms it derives."""
    files = [TRAIN, "clusters.npy", "loc_dens.npy", FRAMES, hdbscan_.FILE, PROJECTION, projected_index.FILE]
    size = sum((directory / f).stat().st_size for f in files if (directory / f).is_file())
    hnsw = directory / "hnsw"
    if hnsw.is_dir():
        size += sum(p.stat().st_size for p in hnsw.iterdir())
    return size + 4 * n_rows
