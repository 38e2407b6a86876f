"""Quality benchmark: every k-NNN rule and every image detector on the same cached embeddings.

Embedding dominates the cost on a CPU (a few frames/s), so frames are embedded once with the union
of what every method needs (global, last patches, the detectors' layers) and cached as .npy; each
method is then fitted, calibrated and scored on exactly the same numbers. Two measures:

- frame level, on the labelled test clips: AUROC and AP of the raw score, and balanced accuracy /
  F1 / FPR at the threshold calibrated on held-out NORMAL training clips (`holdout_mask`, the
  product's hold-out; no test label is ever used to pick a threshold);
- pixel level, on APMask-style cut-paste anomalies pasted into normal test frames: AUROC of each
  method's map drawn at frame size (the k-NNN map is the uncapped per-patch ratio, since capped
  confidences tie at 1 and AUROC needs their order).

Causal smoothing (the mean of a frame's score and its previous w - 1 frames of the same clip, what a
live system can compute) is evaluated as its own variant of every method, calibrated alike.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from streamvad.backbones.base import Backbone
from streamvad.bench import environment
from streamvad.config import NormalityConfig, ScoringConfig, TransportConfig
from streamvad.datasets.base import Clip, iter_clip
from streamvad.detectors.base import BaseDetector, upsample_map
from streamvad.detectors.config import DetectorConfig
from streamvad.detectors.cutpaste import attention_cutpaste
from streamvad.errors import InputError
from streamvad.offline.evaluation import auroc, average_precision, binary_metrics, threshold_from_normal
from streamvad.offline.pipeline import embed_batches
from streamvad.scoring.folds import holdout_mask
from streamvad.transport import as_transported
from streamvad.types import EmbeddingBatch, FeatureRequest, FrameKey

log = logging.getLogger(__name__)

# name -> ScoringConfig overrides; "topk@r" is the top-k-ratio mean at ratio r.
KNNN_VARIANTS: dict[str, dict[str, Any]] = {
    "knnn/global": {"method": "knnn", "rule": "global"},
    "knnn/majority": {"method": "knnn", "rule": "majority"},
    "knnn/topk@0.01": {"method": "knnn", "rule": "topk", "topk_ratio": 0.01},
    "knnn/topk@0.02": {"method": "knnn", "rule": "topk", "topk_ratio": 0.02},
    "knnn/topk@0.05": {"method": "knnn", "rule": "topk", "topk_ratio": 0.05},
    "knnn/topk@0.10": {"method": "knnn", "rule": "topk", "topk_ratio": 0.10},
    "knnn/any_k": {"method": "knnn", "rule": "any_k"},
    "distance/topk@0.05": {"method": "distance", "rule": "topk", "topk_ratio": 0.05},
    "distance/global": {"method": "distance", "rule": "global"},
    "nnn/topk@0.05": {"method": "nnn", "rule": "topk", "topk_ratio": 0.05},
    "nnn/global": {"method": "nnn", "rule": "global"},
    "hdbscan/global": {"method": "hdbscan", "rule": "global"},
}
# Fixed before looking at test results: scene context (global) with local evidence (top-k patches),
# and the product's rule with every image detector. Members missing from a run are left out.
ENSEMBLES: dict[str, tuple[str, ...]] = {
    "ens(knnn/global,knnn/topk@0.02)": ("knnn/global", "knnn/topk@0.02"),
    "ens(knnn/topk@0.02,detectors)": ("knnn/topk@0.02", "uniformaly", "generalad", "s2vad"),
}
KNNN_MAP_SIGMA = 4.0  # pixels at KNNN_MAP_REFERENCE, UniFormaly's blur for a patch-distance map
KNNN_MAP_REFERENCE = 224
CACHE_FORMAT = 1


@dataclass
class Features:
    """Cached embeddings of a set of frames, one row per frame in clip order: the batch the backbone gave,
    and each row's clip and label."""

    batch: EmbeddingBatch
    clip_ids: np.ndarray  # [Q] clip index
    labels: np.ndarray  # [Q] 0/1 (normal training frames are 0)

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def grid(self) -> tuple[int, int]:
        return self.batch.grid

    def rows(self, idx: np.ndarray) -> Features:
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx
        return Features(self.batch.select(idx), self.clip_ids[idx], self.labels[idx])

    def batches(self, size: int = 64) -> Iterator[EmbeddingBatch]:
        """The rows in batches of `size`, the currency every detector consumes; selecting copies, so rows
        of a read-only memory map do not make torch warn on every batch."""
        for lo in range(0, len(self), size):
            yield self.batch.select(range(lo, min(lo + size, len(self))))

    @classmethod
    def concat(cls, parts: Sequence[EmbeddingBatch], clip_ids: Sequence[int], labels: Sequence[int]) -> Features:
        if not parts:
            raise InputError("quality benchmark: no frames were embedded")
        return cls(EmbeddingBatch.concat(parts), np.asarray(clip_ids, dtype=np.int64),
                   np.asarray(labels, dtype=np.int64))

    def save(self, folder: Path, meta: dict[str, Any]) -> None:
        """Arrays as .npy and `meta` (what produced them) as meta.json, written last: it marks completeness."""
        folder.mkdir(parents=True, exist_ok=True)
        b = self.batch
        arrays = {"global": b.global_, "patches": b.patches, "clip_ids": self.clip_ids,
                  "labels": self.labels, **{f"layer{k:02d}": v for k, v in b.layers.items()}}
        for name, arr in arrays.items():
            np.save(folder / f"{name}.npy", arr)
        full = {**meta, "format": CACHE_FORMAT, "grid": list(self.grid), "layers": sorted(b.layers)}
        (folder / "meta.json").write_text(json.dumps(full, indent=1, default=str), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any]) -> Features | None:
        """The cached features when they were produced with the same `meta`, else None (recompute)."""
        path = folder / "meta.json"
        if not path.is_file():
            return None
        saved = json.loads(path.read_text(encoding="utf-8"))
        expected = json.loads(json.dumps({**meta, "format": CACHE_FORMAT}, default=str))
        if any(saved.get(k) != v for k, v in expected.items()):
            log.info("cache %s was made with other settings; embedding again", folder)
            return None

        def arr(name: str) -> np.ndarray:
            return np.load(folder / f"{name}.npy", mmap_mode="r")

        clip_ids = np.asarray(arr("clip_ids"))
        keys = [FrameKey(f"clip{int(c)}", i, float(i)) for i, c in enumerate(clip_ids)]
        batch = EmbeddingBatch(keys=keys, global_=arr("global"), patches=arr("patches"), grid=tuple(saved["grid"]),
                               layers={int(k): arr(f"layer{int(k):02d}") for k in saved["layers"]})
        return cls(batch, clip_ids, np.asarray(arr("labels")))


@dataclass
class CutPaste:
    """Embeddings of cut-paste frames, their pixel masks [P, H, W], and the test rows they came from."""

    features: Features
    masks: np.ndarray
    source_rows: np.ndarray


@dataclass
class Scored:
    """One method's raw frame scores on the hold-out, test and cut-paste frames, maps and timings."""

    hold: np.ndarray
    test: np.ndarray
    cutpaste: np.ndarray
    maps: list[np.ndarray] | None  # full-size maps of the cut-paste frames, None without a map
    fit_s: float
    score_s: float


@dataclass
class BenchSettings:
    """What the benchmark runs; detector sections are complete configs (their CPU scaling included)."""

    normality: NormalityConfig
    scoring: ScoringConfig
    detectors: dict[str, BaseModel] = field(default_factory=dict)
    smoothing: tuple[int, ...] = (5, 9)
    knnn_variants: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(KNNN_VARIANTS))
    ensembles: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(ENSEMBLES))


def causal_mean(scores: np.ndarray, clip_ids: np.ndarray, window: int) -> np.ndarray:
    """Mean of each frame's score and the previous `window - 1` of its clip (fewer at a clip's start)."""
    out = np.empty(len(scores), dtype=np.float64)
    for cid in np.unique(clip_ids):
        idx = np.flatnonzero(clip_ids == cid)
        c = np.cumsum(np.r_[0.0, np.asarray(scores, dtype=np.float64)[idx]])
        n = np.arange(1, len(idx) + 1)
        lo = np.maximum(0, n - window)
        out[idx] = (c[n] - c[lo]) / (n - lo)
    return out


def ensemble(members: Sequence[Scored], quantile: float) -> Scored:
    """Mean of the members' scores, each put on one scale by its own hold-out normal frames.

    (score - median) / (quantile - median) of the hold-out: a typical normal frame reads 0 and a
    frame at the member's own threshold reads 1, whatever its units (distances, logits, cosines).
    """
    def scaled(s: Scored, part: str) -> np.ndarray:
        mid = float(np.median(s.hold))
        return (getattr(s, part) - mid) / max(float(np.quantile(s.hold, quantile)) - mid, 1e-12)

    parts = {p: np.mean([scaled(s, p) for s in members], axis=0) for p in ("hold", "test", "cutpaste")}
    return Scored(**parts, maps=None, fit_s=sum(s.fit_s for s in members),
                  score_s=sum(s.score_s for s in members))


def embed_clips(
    backbone: Backbone, clips: Sequence[Clip], layers: Sequence[int], progress: bool, desc: str = "embedding",
    transport: TransportConfig | None = None,
) -> Features:
    """Every frame of `clips` (sample_fps None: the datasets' protocol) with the extra `layers`; with
    `transport`, as a live worker would receive it (`as_transported`), like `make ped2`."""
    parts, clip_ids, labels = [], [], []
    request = FeatureRequest(layers=tuple(layers))
    for ci, frames, batch in embed_batches(backbone, clips, None, request=request, transport=transport,
                                           progress=progress, desc=desc):
        parts.append(batch)
        clip_ids += [ci] * len(frames)
        labels += [int(f.label or 0) for f in frames]
    return Features.concat(parts, clip_ids, labels)


def normal_rows(labels: np.ndarray, count: int) -> np.ndarray:
    """`count` normal rows spread evenly over the set (neighbouring frames are near duplicates)."""
    normal = np.flatnonzero(labels == 0)
    if len(normal) == 0:
        raise InputError("quality benchmark: the test set has no normal frame to paste anomalies into")
    return normal[np.unique(np.linspace(0, len(normal) - 1, min(count, len(normal))).round().astype(int))]


def make_cutpaste(
    backbone: Backbone, clips: Sequence[Clip], rows: np.ndarray, layers: Sequence[int], seed: int,
    transport: TransportConfig | None = None,
) -> CutPaste:
    """Paste an APMask-style anomaly into each of the test frames `rows` and embed the results (with
    `transport`, the pasted frame as a live worker would receive it).

    A CNN gives no CLS attention, so locations are uniform (what `attention_cutpaste` does for None).
    """
    wanted = set(int(r) for r in rows)
    frames = [f for i, f in enumerate(f for c in clips for f in iter_clip(c, None)) if i in wanted]
    rng = np.random.default_rng(seed)
    pasted = [attention_cutpaste(f.image, None, rng) for f in frames]
    if transport is not None:  # the anomaly is in the scene, so it travels through the wire like the rest
        wire = transport.frame_max_side, transport.jpeg_quality
        pasted = [(as_transported(dataclasses.replace(f, image=img), *wire).image, mask)
                  for f, (img, mask) in zip(frames, pasted, strict=True)]
    parts = [backbone.embed([p[0] for p in pasted[lo:lo + 16]], layers=layers) for lo in range(0, len(pasted), 16)]
    feats = Features.concat(parts, np.arange(len(pasted)), np.ones(len(pasted), dtype=np.int64))
    return CutPaste(feats, np.stack([p[1] for p in pasted]), np.asarray(rows, dtype=np.int64))


def pixel_auroc_of(maps: Sequence[np.ndarray], masks: np.ndarray) -> float:
    """AUROC over every pixel of every cut-paste frame: the mask labels it, the map scores it."""
    return auroc(np.concatenate([m.ravel() for m in masks]).astype(np.int64),
                 np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps]))


def _finite(value: float) -> float | None:
    """NaN (an undefined metric) becomes None, so results.json stays valid JSON."""
    return value if math.isfinite(value) else None


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def score_knnn(
    train: Features, hold: Features, test: Features, cutpaste: CutPaste, settings: BenchSettings,
    backbone: dict[str, Any], progress: bool,
) -> dict[str, Scored]:
    """Fit the product's normality model once, search every token once, then aggregate by every rule."""
    from streamvad.normality import hdbscan_
    from streamvad.normality.model import NormalityModel
    from streamvad.scoring.knn import TokenScorer, TokenScores, aggregate

    sources = [str(c) for c in train.clip_ids]
    model, fit_s = _timed(lambda: NormalityModel.fit(
        np.asarray(train.batch.global_), train.batch.patches, settings.normality, sources=sources,
        backbone={**backbone, "grid": list(train.grid)}, progress=progress))
    tokens = TokenScorer(model)
    variants = {name: ScoringConfig.model_validate({**settings.scoring.model_dump(), **update, "frame_threshold": None})
                for name, update in settings.knnn_variants.items()}
    # hdbscan variants replace the global token of the k-NNN scores, so those are always computed
    methods = sorted({cfg.method for cfg in variants.values()} - {"hdbscan"} | {"knnn"})

    def token_scores(f: Features) -> tuple[dict[str, TokenScores], np.ndarray | None]:
        parts: dict[str, list[TokenScores]] = {m: [] for m in methods}
        gconf = []
        for lo in range(0, len(f), 64):
            g, p = np.asarray(f.batch.global_[lo:lo + 64]), np.asarray(f.batch.patches[lo:lo + 64])
            for method, ts in tokens.scores_all(g, p, methods).items():
                parts[method].append(ts)
            if 0 in model.hdbscan:
                gq = g if model.projection is None else model.projection(g)
                gconf.append(hdbscan_.confidence(model.hdbscan[0], gq))
        joined = {m: TokenScores(np.concatenate([t.conf for t in ts]), np.concatenate([t.ratio for t in ts]))
                  for m, ts in parts.items()}
        return joined, np.concatenate(gconf) if gconf else None

    try:
        (hold_ts, hold_h), _ = _timed(lambda: token_scores(hold))
        (test_ts, test_h), score_s = _timed(lambda: token_scores(test))
        (cut_ts, cut_h), _ = _timed(lambda: token_scores(cutpaste.features))
    finally:
        tokens.close()
    mask = np.ones(model.n_patches, dtype=bool)
    size = cutpaste.masks.shape[1:]
    sigma = KNNN_MAP_SIGMA * min(size) / KNNN_MAP_REFERENCE
    maps = {m: [upsample_map(r.reshape(train.grid), size, sigma) for r in cut_ts[m].ratio[:, 1:]] for m in methods}
    out: dict[str, Scored] = {}
    for name, cfg in variants.items():
        if cfg.method == "hdbscan" and hold_h is None:
            log.warning("%s skipped: the normality config fits no HDBSCAN on the global token", name)
            continue
        base = "knnn" if cfg.method == "hdbscan" else cfg.method

        def raw(by_method: dict[str, TokenScores], h: np.ndarray | None, cfg: ScoringConfig = cfg,
                base: str = base) -> np.ndarray:
            ts = by_method[base]
            if cfg.method == "hdbscan":  # only the global token has a clusterer (normality.hdbscan: global)
                ts = TokenScores(ts.conf.copy(), ts.ratio.copy())
                ts.conf[:, 0] = ts.ratio[:, 0] = h
            return aggregate(ts, mask, cfg.rule, cfg)[1]

        out[name] = Scored(raw(hold_ts, hold_h), raw(test_ts, test_h), raw(cut_ts, cut_h),
                           maps[base] if cfg.rule != "global" else None, fit_s, score_s)
    return out


def score_detector(
    name: str, section: BaseModel, num_layers: int, train: Features, hold: Features, test: Features,
    cutpaste: CutPaste, backbone: dict[str, Any], progress: bool,
) -> Scored:
    """Fit on the training clips, calibrate on the hold-out clips, score test and cut-paste frames."""
    det = build_detector_for(name, section, num_layers, backbone)
    _, fit_s = _timed(lambda: det.fit(list(train.batches()), progress=progress))

    def scores(f: Features) -> tuple[np.ndarray, np.ndarray]:
        parts = [det.score_maps(b) for b in f.batches()]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    hold_s, _ = scores(hold)
    (test_s, _), score_s = _timed(lambda: scores(test))
    cut_s, cut_maps = scores(cutpaste.features)
    size = cutpaste.masks.shape[1:]
    maps = [det.anomaly_map(m, cutpaste.features.grid, size) for m in cut_maps]
    return Scored(hold_s, test_s, cut_s, maps, fit_s, score_s)


def build_detector_for(name: str, section: BaseModel, num_layers: int, backbone: dict[str, Any]) -> BaseDetector:
    from streamvad.detectors import build_detector

    cfg = DetectorConfig.model_validate({"name": name, "device": "cpu", name: section.model_dump()})
    return build_detector(name, cfg, num_layers=num_layers, device="cpu", backbone_manifest=backbone)


def required_layers(settings: BenchSettings, num_layers: int) -> tuple[int, ...]:
    """The union of the blocks the configured detectors ask the backbone for."""
    layers: set[int] = set()
    for name, section in settings.detectors.items():
        layers.update(build_detector_for(name, section, num_layers, {}).requirements().layers)
    return tuple(sorted(layers))


def method_row(name: str, s: Scored, test: Features, hold: Features, cutpaste: CutPaste, quantile: float,
               window: int) -> dict[str, Any]:
    """Figures of one method (with causal smoothing over `window` frames when > 1)."""
    hold_s = causal_mean(s.hold, hold.clip_ids, window) if window > 1 else s.hold
    test_s = causal_mean(s.test, test.clip_ids, window) if window > 1 else s.test
    threshold = threshold_from_normal(hold_s, quantile)
    m = binary_metrics(test.labels, test_s, threshold)
    originals = s.test[cutpaste.source_rows]
    cut_y = np.r_[np.zeros(len(originals)), np.ones(len(s.cutpaste))].astype(np.int64)
    return {
        "method": name if window == 1 else f"{name}+ma{window}",
        "base": name,
        "smoothing": window,
        "auroc": _finite(auroc(test.labels, test_s)),
        "ap": _finite(average_precision(test.labels, test_s)),
        "balanced_accuracy": m["balanced_accuracy"],
        "f1": m["f1"],
        "recall": m["recall"],
        "fpr": m["fpr"],
        "threshold": threshold,
        "pixel_auroc": pixel_auroc_of(s.maps, cutpaste.masks) if s.maps is not None and window == 1 else None,
        "cutpaste_image_auroc": auroc(cut_y, np.r_[originals, s.cutpaste]) if window == 1 else None,
        "fit_s": s.fit_s,
        "score_ms_per_frame": 1000.0 * s.score_s / max(len(test), 1),
    }


def run_benchmark(
    train_all: Features,
    n_train_clips: int,
    test: Features,
    cutpaste: CutPaste,
    settings: BenchSettings,
    *,
    num_layers: int,
    backbone: dict[str, Any] | None = None,
    progress: bool = True,
    scores_out: Path | None = None,
) -> dict[str, Any]:
    """Every method on the same features; returns the JSON-ready result (see `markdown_table`).

    With `scores_out`, every method's raw frame scores (hold-out, test, cut-paste) and the test
    labels and clips go to that .npz, so other aggregations can be studied without refitting.
    """
    backbone = dict(backbone or {})
    hold_mask = holdout_mask(train_all.clip_ids, n_train_clips, settings.normality.holdout_fraction)
    if not hold_mask.any() or hold_mask.all():
        raise InputError(f"quality benchmark: the hold-out of {n_train_clips} training clips leaves "
                         f"{int((~hold_mask).sum())} frames to fit and {int(hold_mask.sum())} to calibrate")
    train, hold = train_all.rows(~hold_mask), train_all.rows(hold_mask)
    log.info("fitting on %d frames, calibrating on %d held-out normal frames, testing on %d",
             len(train), len(hold), len(test))
    scored = score_knnn(train, hold, test, cutpaste, settings, backbone, progress)
    for name, section in settings.detectors.items():
        log.info("detector %s: fitting", name)
        scored[name] = score_detector(name, section, num_layers, train, hold, test, cutpaste, backbone, progress)
    q = settings.scoring.calibration_quantile
    for name, members in settings.ensembles.items():
        present = [scored[m] for m in members if m in scored]
        if len(present) >= 2:
            scored[name] = ensemble(present, q)
    if scores_out is not None:
        arrays = {f"{name}|{part}": getattr(s, part) for name, s in scored.items()
                  for part in ("hold", "test", "cutpaste")}
        np.savez_compressed(scores_out, test_labels=test.labels, test_clips=test.clip_ids,
                            hold_clips=hold.clip_ids, **arrays)
    rows = [method_row(name, s, test, hold, cutpaste, q, w)
            for w in (1, *settings.smoothing) for name, s in scored.items()]
    ranked = [r for r in rows if r["auroc"] is not None]
    best = max(ranked, key=lambda r: r["auroc"])["method"] if ranked else None
    return {
        "environment": environment(),
        "frames": {"train": len(train), "holdout": len(hold), "test": len(test),
                   "test_anomalous": int(test.labels.sum()), "cutpaste": len(cutpaste.source_rows)},
        "settings": {
            "normality": settings.normality.model_dump(mode="json"),
            "scoring": settings.scoring.model_dump(mode="json"),
            "detectors": {k: v.model_dump(mode="json") for k, v in settings.detectors.items()},
            "knnn_variants": settings.knnn_variants,
            "smoothing_windows": list(settings.smoothing),
            "ensembles": {k: list(v) for k, v in settings.ensembles.items()},
            "threshold": f"{q} quantile of held-out normal training clips (streamvad.offline.pipeline.holdout_mask)",
        },
        "methods": rows,
        "best_by_test_auroc": best,
    }


TABLE_COLUMNS = (("method", "method"), ("auroc", "frame AUROC"), ("ap", "AP"),
                 ("balanced_accuracy", "bal-acc@thr"), ("f1", "F1@thr"), ("fpr", "FPR@thr"),
                 ("pixel_auroc", "pixel AUROC (cut-paste)"), ("cutpaste_image_auroc", "img AUROC (cut-paste)"),
                 ("fit_s", "fit s"), ("score_ms_per_frame", "score ms/frame"))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def markdown_table(result: dict[str, Any]) -> str:
    """The methods as a markdown table, one row each, in the order they were run."""
    head = "| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(row.get(key)) for key, _ in TABLE_COLUMNS) + " |" for row in result["methods"]]
    return "\n".join([head, rule, *body])
