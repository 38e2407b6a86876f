"""Frame verdicts from a normality model: every token of every frame of a batch in one call.

The study queried ChromaDB patch by patch (two queries each, ~1 h for 2,044 frames). Here the
nearest training vector of all N + 1 tokens of all B frames comes from one batched matmul on
[T, M, D] x [T, D, B] (or an index: hnswlib batch queries across a thread pool, or projected sketches and
exact distances of their candidates), and since local densities
were precomputed at fit time the k-NNN confidence is a gather and a division.

Score scales: `score` is in [0, 1] (aggregated capped confidences); `raw_score` aggregates the
uncapped ratios d / loc_dens instead and is what the decision threshold is compared with, so
calibrated thresholds may exceed 1. Because capping is monotone, for thresholds below 1 the two
give the same decision.

Methods (ScoringConfig.method): "knnn" (the study's d / local density), "distance" (d on a calibrated
scale), "hdbscan" (1 - membership strength) and "nnn" (the original k-NNN of Nizan & Tal, see
normality/nnn.py; it needs the k nearest rows, not just the nearest, and is computed only when asked for).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from streamvad.config import VOTING_RULES, ScoringConfig
from streamvad.errors import ConfigError, ModelMismatchError
from streamvad.normality import hdbscan_, hnsw_index
from streamvad.normality.knnn import density_floor, gather_dists, knnn_confidence
from streamvad.normality.model import NormalityModel
from streamvad.normality.nnn import NNNScorer
from streamvad.normality.tokens import chunk_size
from streamvad.types import EmbeddingBatch, Verdict

log = logging.getLogger(__name__)

RULES = ("majority", "topk", "global", "any_k")
METHODS = ("knnn", "distance", "hdbscan", "nnn")
SCALED = ("distance", "nnn")  # methods whose ratio is a raw score over a calibrated "<method>/scale"
# methods that depend only on the nearest training vector, so leaving a fold out of the search scores it as
# new footage; HDBSCAN's clusterer and the original k-NNN's neighbour tables were fitted on the fold itself
CROSS_FIT = ("knnn", "distance")


@dataclass
class TokenScores:
    """Per-frame, per-token confidences [B, T] in [0, 1] and uncapped ratios [B, T]; column 0 is global."""

    conf: np.ndarray
    ratio: np.ndarray


@dataclass
class Frames:
    """Frame-major embeddings of some frames: global_ [Q, D_global], patches [Q, N, D]."""

    global_: np.ndarray
    patches: np.ndarray


@dataclass
class Calibration:
    """Thresholds per "method/rule", and each rule's normal scores divided by its threshold, frame by frame:
    the hold-out's frames in order, then (for the CROSS_FIT methods) each fold's training rows in order. Fusion
    with motion calibrates its own threshold on the same frames (scoring/kinds.py)."""

    thresholds: dict[str, float]
    unit_scores: dict[str, np.ndarray]


@dataclass
class Search:
    """One batch's nearest-neighbour search, token-major: queries [T, B, D], distance to the nearest
    training vector [T, B], rows of the k nearest [T, B, k] (nearest first)."""

    q: torch.Tensor
    d: torch.Tensor
    rows: torch.Tensor


_workspace = threading.local()


def widened(block: torch.Tensor) -> torch.Tensor:
    """`block` in float32, converted into a buffer this thread keeps per device; the result is valid until the
    thread's next call. A fresh tensor per call would fault in its pages on every batch, once per camera model:
    38 ms against 5 ms for a Ped2-sized compact model on a 2-core CPU, which made per-camera models cost a
    worker 43% of its capacity (README, fleet mode)."""
    if block.dtype == torch.float32:
        return block
    buffers: dict[torch.device, torch.Tensor] = _workspace.__dict__.setdefault("buffers", {})
    buf = buffers.get(block.device)
    if buf is None or buf.numel() < block.numel():
        buf = buffers[block.device] = torch.empty(block.numel(), dtype=torch.float32, device=block.device)
    return buf[: block.numel()].view(block.shape).copy_(block)


class TokenScorer:
    """Nearest-neighbour state of a model, prepared once so each call is just the search.

    Training vectors, their squared norms and local densities live on `device` as tensors; with an
    hnsw model a thread pool is kept for the per-token queries. The original k-NNN's state is set up
    on first use only. A float16 memory stays float16 in memory; each block of tokens is widened to
    float32 for its distances into one reused buffer (`widened`), so the copy lasts one block.
    """

    def __init__(self, model: NormalityModel, device: str = "cpu") -> None:
        self.model = model
        self.device = torch.device(device)
        self._train = torch.from_numpy(model.train).to(self.device)  # [T, M, D], shares memory on CPU
        self._loc = torch.from_numpy(model.loc_dens).to(self.device)
        self._floor = torch.from_numpy(density_floor(model.loc_dens)).to(self.device).unsqueeze(1)
        self.scales = {method: method_scale(model, method) for method in SCALED}
        self._nnn: NNNScorer | None = None
        self._k = 1  # neighbours per search: the most any caller has asked for, so later batches search once
        self._pool = ThreadPoolExecutor(torch.get_num_threads()) if model.indexes is not None else None
        self._projected = model.projected.to(self.device) if model.projected is not None else None
        widened = model.dim if self._train.dtype != torch.float32 else 0
        self._step = chunk_size(4 * model.n_train * (64 + widened), 64 << 20)  # tokens per [t, M, B<=64] block
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray, Search] | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    @functools.cached_property
    def _sq(self) -> torch.Tensor:
        """The training vectors' squared norms [T, M, 1], for dense search: computed on first use, so an indexed
        model's memory is never read whole (its .npy is mapped, its index finds the rows, and only the found
        rows are read)."""
        return torch.cat([(b.float() ** 2).sum(-1, keepdim=True) for b in self._train.split(32)])

    def _nearest(self, q: torch.Tensor, k: int, sq: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of the k nearest training vectors [T, B, k], nearest first, for queries q [T, B, D], by dense
        search (an indexed model's index answers `_search` itself).

        `sq` replaces the training vectors' squared norms; rows set to +inf there are never picked (the
        out-of-fold search of calibration).
        """
        sq = self._sq if sq is None else sq
        step = max(1, self._step * 64 // q.shape[1])
        out = []
        for lo in range(0, q.shape[0], step):
            hi = lo + step
            # ||q||^2 is the same for every candidate, so ranking needs only ||t||^2 - 2 t.q
            d = torch.baddbmm(sq[lo:hi], widened(self._train[lo:hi]), q[lo:hi].transpose(1, 2), alpha=-2.0)
            out.append(d.argmin(1).unsqueeze(-1) if k == 1 else d.topk(k, dim=1, largest=False).indices.transpose(1, 2))
        return torch.cat(out)

    def _search(self, queries: np.ndarray, k: int, sq: torch.Tensor | None = None) -> Search:
        """The k nearest training vectors of frame-major queries [B, T, D]."""
        q = torch.from_numpy(np.ascontiguousarray(queries.transpose(1, 0, 2), dtype=np.float32)).to(self.device)
        if self.model.indexes is not None and sq is None:
            rows = torch.from_numpy(hnsw_index.nearest(self.model.indexes, q.cpu().numpy(), self._pool, k))
            rows = rows.to(self.device)
        elif self._projected is not None and sq is None:
            rows = self._projected.nearest(self._train, q, k)
        else:
            rows = self._nearest(q, k, sq)
        # distances from the memory itself, the found rows only: an indexed model scores exactly as a dense one
        # wherever its index found the nearest row
        return Search(q, gather_dists(self._train, rows[..., :1], q).squeeze(-1), rows)

    def out_of_fold(self, fold: np.ndarray, chunk: int = 64, train: Frames | None = None,
                    ) -> Iterator[dict[str, TokenScores]]:
        """Scores of the training frames `fold` against the memory without them, by each CROSS_FIT method,
        `chunk` frames at a time.

        A training frame's nearest normal vector is itself, so its own score says nothing about new
        footage; with its whole fold (a group of clips) left out of the search it is scored as a new
        clip would be by the served model (same memory, same local densities). `train` holds the training
        frames `fold` indexes; a memory of every frame can do without it, a coreset cannot (it lacks most).
        """
        sq = self._sq.clone()
        sq[torch.from_numpy(np.isin(self.model.frame_of(), fold)).to(self.device)] = math.inf
        if train is None and self.model.frames is not None:
            raise ConfigError("out-of-fold calibration of a coreset memory needs the training frames' embeddings")
        for lo in range(0, len(fold), chunk):
            rows = fold[lo : lo + chunk]
            queries = (self.model.train[:, rows].transpose(1, 0, 2) if train is None
                       else self.model.token_queries(train.global_[rows], train.patches[rows]))
            found = self._search(queries, 1, sq)
            yield {method: self._from_search(found, method) for method in CROSS_FIT}

    def _nnn_scorer(self) -> NNNScorer:
        if self._nnn is None:
            self._nnn = NNNScorer(self.model.nnn_state(), self._train.float(), self.device)
        return self._nnn

    def _from_search(self, found: Search, method: str) -> TokenScores:
        if method in SCALED:
            raw = found.d if method == "distance" else self._nnn_scorer().scores(found.q, found.rows)
            ratio = raw / self.scales[method]
            conf = ratio.clamp(max=1.0)
        else:
            conf, ratio = knnn_confidence(found.d, self._loc.gather(1, found.rows[..., 0]), self._floor)
        return TokenScores(conf.T.cpu().numpy(), ratio.T.cpu().numpy())

    def _search_frames(self, global_: np.ndarray, patches: np.ndarray, k: int) -> tuple[np.ndarray, Search]:
        """(queries, search) for a batch, searching once per batch.

        Scorers for several rules share this TokenScorer and score the same batch one after another
        (one embedding pass, several rules in `eval`): the last batch's search is kept and reused
        when the very same arrays come back with no more neighbours wanted. Once one caller asked for k
        neighbours (the original k-NNN), every search gets k, so mixed rules still search once per batch.
        Holding the arrays keeps their identity unique.
        """
        k = self._k = max(self._k, min(k, self.model.n_train))
        last = self._last
        if last is not None and last[0] is global_ and last[1] is patches and last[3].rows.shape[-1] >= k:
            return last[2], last[3]
        queries = self.model.token_queries(global_, patches)
        found = self._search(queries, k)
        self._last = (global_, patches, queries, found)
        return queries, found

    def scores(self, global_: np.ndarray, patches: np.ndarray, method: str = "knnn") -> TokenScores:
        """Confidences of all tokens of B frames: global_ [B, D_global], patches [B, N, D]."""
        return self.scores_all(global_, patches, (method,))[method]

    def scores_all(self, global_: np.ndarray, patches: np.ndarray, methods: Sequence[str]) -> dict[str, TokenScores]:
        """Confidences by each of `methods` from ONE nearest-neighbour search.

        "distance": ratio = d / `distance_scale` (one scale for every token, so the ranking is the
        raw distance's); "hdbscan": tokens with a clusterer get 1 - membership strength, the others
        keep their k-NNN confidence (a global-only HDBSCAN model still gets a heatmap).
        """
        b, n, d = patches.shape
        m = self.model
        if n != m.n_patches or d != m.dim or global_.shape != (b, m.global_dim):
            raise ModelMismatchError(
                f"embeddings have {n} patches of D {d} (global {global_.shape}) but model {m.path} was "
                f"fitted on {m.n_patches} patches of D {m.dim} (global D {m.global_dim})")
        queries, found = self._search_frames(global_, patches, self.model.config.nnn_k if "nnn" in methods else 1)
        out = {method: self._from_search(found, method) for method in methods}
        if "hdbscan" in out:
            for token, clusterer in self.model.hdbscan.items():
                out["hdbscan"].conf[:, token] = out["hdbscan"].ratio[:, token] = hdbscan_.confidence(
                    clusterer, queries[:, token])
        return out


def method_scale(model: NormalityModel, method: str) -> float:
    """The raw score that reads as confidence 1 for a SCALED method ("distance", "nnn").

    After calibration it is the calibration quantile of held-out normal patches' raw scores (model
    threshold "<method>/scale"), so a heatmap cell at 1 means "further from normal than 99% of normal
    patches". Before, a stand-in: for "distance" the mean local density (training frames of a video are
    near-duplicates, so it is small); for "nnn" 1, about one standard deviation per direction.
    """
    key = f"{method}/scale"
    if key in model.thresholds:
        return float(model.thresholds[key])
    positive = model.loc_dens[model.loc_dens > 0]
    return float(positive.mean()) if method == "distance" and positive.size else 1.0


def aggregate(ts: TokenScores, mask: np.ndarray, rule: str, cfg: ScoringConfig) -> tuple[np.ndarray, np.ndarray]:
    """(score [B], raw_score [B]) of a rule over the patches inside `mask` (or the global token).

    majority: the ceil(M/2)-th largest of the M patch values, i.e. the upper median, so that
    "#unsafe >= #safe at threshold t" is exactly "score > t". any_k: the any_k-th largest.
    topk: mean of the ceil(topk_ratio * M) largest. global: the global token.
    """
    if rule == "global":
        return ts.conf[:, 0].copy(), ts.ratio[:, 0].copy()
    m = int(mask.sum())
    ranked = -np.sort(np.where(mask, -ts.ratio[:, 1:], np.inf), axis=1)  # descending, masked last
    capped = np.minimum(ranked, 1.0)  # confidence = min(1, ratio) is monotone in the ratio
    if rule == "topk":
        top = math.ceil(cfg.topk_ratio * m)
        return capped[:, :top].mean(1), ranked[:, :top].mean(1)
    j = math.ceil(m / 2) - 1 if rule == "majority" else cfg.any_k - 1
    return capped[:, j].copy(), ranked[:, j].copy()


def _check_mask(mask: np.ndarray | None, n: int, cfg: ScoringConfig) -> np.ndarray:
    if mask is None:
        mask = np.ones(n, dtype=bool)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n,):
        raise ConfigError(f"camera mask: expected a bool array of the model's {n} patches, "
                          f"got {mask.dtype} {mask.shape}")
    if not mask.any():
        raise ConfigError("camera mask: it excludes every patch; nothing would be scored")
    if cfg.rule == "any_k" and cfg.any_k > int(mask.sum()):
        raise ConfigError(f"scoring.any_k: {cfg.any_k} exceeds the {int(mask.sum())} patches inside the mask")
    return mask


def _available_rules(model: NormalityModel, method: str) -> tuple[str, ...]:
    if method in ("knnn", *SCALED):
        return RULES
    if not model.hdbscan:
        return ()
    return RULES if len(model.hdbscan) == model.n_tokens else ("global",)


class Scorer:
    """Turns an EmbeddingBatch into one Verdict per frame (see the module docstring for scales).

    Decision threshold: cfg.frame_threshold, else the model's calibrated "<method>/<rule>"
    threshold, else cfg.patch_threshold for majority / any_k. For majority and any_k the same
    threshold decides each patch's vote, so `unsafe_patches` and `anomalous` always agree; for topk
    and global the votes are counted at cfg.patch_threshold for information only. Scorers for
    several cameras' masks should share one TokenScorer (`with_mask`): one copy of the tensors.
    """

    def __init__(
        self,
        model: NormalityModel,
        cfg: ScoringConfig,
        mask: np.ndarray | None = None,
        device: str = "cpu",
        *,
        tokens: TokenScorer | None = None,
    ) -> None:
        if cfg.rule not in _available_rules(model, cfg.method):
            raise ConfigError(
                f"scoring.method: {cfg.method} with rule {cfg.rule} needs HDBSCAN on "
                f"{'every token' if cfg.rule != 'global' else 'the global token'}, but model {model.path} "
                f"has it on {len(model.hdbscan)} token(s); set normality.hdbscan and refit, or use rule global")
        self.model = model
        self.cfg = cfg
        self.mask = _check_mask(mask, model.n_patches, cfg)
        self.tokens = tokens if tokens is not None else TokenScorer(model, device)
        self.threshold = self._threshold()
        self._vote_at = self.threshold if cfg.rule in VOTING_RULES else cfg.patch_threshold
        self.decided_by = f"{cfg.method}/{cfg.rule}@{self.threshold:.2f}"
        log.info("scorer ready: %s, %d of %d patches in the mask, %s search on %s", self.decided_by,
                 int(self.mask.sum()), model.n_patches, model.config.index, device)

    def _threshold(self) -> float:
        threshold = self.cfg.decision_threshold(self.model.thresholds)
        if threshold is None:
            raise ConfigError(f"scoring.frame_threshold: rule {self.cfg.rule} needs a frame threshold; set it, or "
                              f"calibrate the model (it has no '{self.cfg.method}/{self.cfg.rule}' threshold)")
        return threshold

    def score(self, batch: EmbeddingBatch) -> list[Verdict]:
        """Verdicts for every frame of the batch; masked-out patches report confidence 0 and never vote."""
        ts = self.tokens.scores(batch.global_, batch.patches, self.cfg.method)
        score, raw = aggregate(ts, self.mask, self.cfg.rule, self.cfg)
        # vote on the ratio: equal to voting on the confidence below 1, and still meaningful above it
        unsafe = ((ts.ratio[:, 1:] > self._vote_at) & self.mask).sum(1)
        heat = np.where(self.mask, ts.conf[:, 1:], 0.0).astype(np.float32)
        return [
            Verdict(key=key, score=float(score[i]), raw_score=float(raw[i]), anomalous=bool(raw[i] > self.threshold),
                    global_confidence=float(ts.conf[i, 0]), patch_confidences=heat[i], grid=batch.grid,
                    unsafe_patches=int(unsafe[i]), threshold=self.threshold, decided_by=self.decided_by)
            for i, key in enumerate(batch.keys)
        ]

    def with_mask(self, mask: np.ndarray | None) -> Scorer:
        """A scorer for another camera's mask sharing this one's search state (one copy on the GPU)."""
        return Scorer(self.model, self.cfg, mask, tokens=self.tokens)

    def close(self) -> None:
        self.tokens.close()


def calibrate(
    scorer_or_model: Scorer | NormalityModel,
    global_: np.ndarray,
    patches: np.ndarray,
    cfg: ScoringConfig,
    *,
    folds: Sequence[np.ndarray] = (),
    train: Frames | None = None,
    chunk: int = 64,
) -> Calibration:
    """Thresholds for every method/rule the model supports, from NORMAL frames it was not fitted on.

    Each is the cfg.calibration_quantile quantile of the frames' raw_score (see module docstring),
    so about (1 - quantile) of normal frames would be flagged and anomalies are never looked at.
    `global_` [B, D] and `patches` [B, N, D] are the hold-out embeddings; a Scorer's mask is used.
    `folds` (training rows per fold of whole clips) adds every training frame, scored out of fold, to
    the CROSS_FIT methods: a couple of held-out clips underestimate the tail of new footage's scores.
    `train` holds the training frames the folds index (see `TokenScorer.out_of_fold`).
    """
    if isinstance(scorer_or_model, Scorer):
        tokens, mask, own = scorer_or_model.tokens, scorer_or_model.mask, False
    else:
        tokens, own = TokenScorer(scorer_or_model), True
        mask = np.ones(scorer_or_model.n_patches, dtype=bool)
    if len(global_) == 0 and not folds:
        raise ConfigError("calibrate: the hold-out set is empty (normality.holdout_fraction is 0?)")
    raws: dict[str, list[np.ndarray]] = {}
    patch_ratios: dict[str, list[np.ndarray]] = {method: [] for method in SCALED}

    def add(by_method: dict[str, TokenScores]) -> None:
        for method, ts in by_method.items():
            if method in SCALED:
                patch_ratios[method].append(ts.ratio[:, 1:][:, mask])
            for rule in _available_rules(tokens.model, method):
                if rule == "any_k" and cfg.any_k > int(mask.sum()):
                    continue
                raws.setdefault(f"{method}/{rule}", []).append(aggregate(ts, mask, rule, cfg)[1])

    try:
        # the original k-NNN costs eigen-decompositions per patch: calibrated only for a model fitted for it
        methods = [m for m in METHODS if _available_rules(tokens.model, m) and (m != "nnn" or tokens.model.has_nnn())]
        for lo in range(0, len(global_), chunk):
            add(tokens.scores_all(global_[lo : lo + chunk], patches[lo : lo + chunk], methods))
        for fold in folds:
            for by_method in tokens.out_of_fold(fold, chunk, train):
                add(by_method)
    finally:
        if own:
            tokens.close()
    normal = {key: np.concatenate(v) for key, v in raws.items()}
    out = {key: float(np.quantile(v, cfg.calibration_quantile)) for key, v in normal.items()}
    unit = {key: v / out[key] for key, v in normal.items() if out[key] > 0}  # before rescaling: the ratio holds
    for method, ratios in patch_ratios.items():  # thresholds on the calibrated scale (aggregates are linear in it)
        if not ratios:
            continue
        old_scale = tokens.scales[method]
        new_scale = float(np.quantile(np.concatenate([r.ravel() for r in ratios]), cfg.calibration_quantile))
        new_scale = new_scale * old_scale if new_scale > 0 else old_scale
        for key in [k for k in out if k.startswith(f"{method}/")]:
            out[key] *= old_scale / new_scale
        out[f"{method}/scale"] = new_scale
    for key in [k for k in out if k.startswith("hdbscan/") and out[k] >= 1.0]:
        log.warning("calibration: %s threshold is 1.0, the most its confidence can be (over %.0f%% of held-out "
                    "normal frames are HDBSCAN noise), so it can never flag a frame; lower "
                    "scoring.calibration_quantile or use another method", key, 100 * (1 - cfg.calibration_quantile))
    return Calibration(out, unit)
