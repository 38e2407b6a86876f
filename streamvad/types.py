"""The shared vocabulary: every value that crosses a module boundary is one of these dataclasses.

Sources produce `Frame`s, backbones turn them into an `EmbeddingBatch`, scorers and detectors turn
that into `Verdict`s, and the event tracker folds verdicts into `Event`s for the sinks. Nothing else
is passed between packages, which keeps sources ignorant of models and scorers ignorant of sinks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Polygon = Sequence[tuple[float, float]]  # (x, y) in [0, 1] of the image's width and height (masks, privacy)
TAMPER_TYPES = ("covered", "frozen", "moved")  # camera faults, each its own event type (see live/tamper.py)


@dataclass(frozen=True, order=True)
class FrameKey:
    """Identifies one sampled frame of one camera; hashable so it can key dicts and dedupe sets."""

    camera: str
    index: int
    pts: float


@dataclass
class Frame:
    """One sampled frame.

    `index` counts sampled frames per camera from 0; `pts` is the presentation time in seconds from
    the start of the stream (what sampling is based on); `wall_time` is when the reader produced it
    (what latency is measured from). `label` is the ground truth when a dataset is replayed
    (0 normal, 1 anomalous) and None for live cameras. `restart` marks the first frame of a looped file's
    next pass, or of a live stream after a reconnect: pts runs on, but the picture jumps (back, or over what the
    outage lost), so nothing before it is its past (no motion).
    """

    camera: str
    index: int
    pts: float
    wall_time: float
    image: np.ndarray  # [H, W, 3] uint8 RGB
    label: int | None = None
    source: str = ""
    restart: bool = False

    @property
    def key(self) -> FrameKey:
        return FrameKey(self.camera, self.index, self.pts)


@dataclass
class MotionField:
    """What moved in each frame of a batch since that camera's previous frame, on the patch grid.

    `fraction` [B, N] is the share of each cell's pixels that changed; `velocity` [B, N, 2] the mean
    optical flow (x, y) of those pixels in frame heights per second of stream time; `valid` [B] is
    False for a camera's first frame and the first after a gap, which are scored on appearance alone.
    """

    fraction: np.ndarray
    velocity: np.ndarray
    valid: np.ndarray

    def select(self, rows: Sequence[int]) -> MotionField:
        idx = list(rows)
        return MotionField(self.fraction[idx], self.velocity[idx], self.valid[idx])

    @classmethod
    def concat(cls, fields: Sequence[MotionField]) -> MotionField:
        """The rows of several fields (batches of one stream, clips of one fit) as one."""
        return cls(*(np.concatenate([getattr(f, k) for f in fields]) for k in ("fraction", "velocity", "valid")))


@dataclass(frozen=True)
class FeatureRequest:
    """What a scorer needs from the backbone beyond the global embedding and last-layer patches."""

    layers: tuple[int, ...] = ()  # 1-based hidden_states indices
    attention: bool = False
    attention_layer: int | None = None  # 1-based block; None: the last one

    def embed_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `Backbone.embed`, so callers need not spell them out."""
        return {"layers": self.layers, "attention": self.attention, "attention_layer": self.attention_layer}

    def union(self, other: FeatureRequest) -> FeatureRequest:
        """One request that serves both (one forward pass for models of several cameras); attention from
        two different blocks cannot be one output, so that is refused."""
        if self.attention and other.attention and self.attention_layer != other.attention_layer:
            raise ValueError(f"attention from block {self.attention_layer} and block {other.attention_layer}")
        return FeatureRequest(tuple(sorted({*self.layers, *other.layers})), self.attention or other.attention,
                              self.attention_layer if self.attention else other.attention_layer)


@dataclass
class EmbeddingBatch:
    """What a backbone computes for a batch of frames, as float32 numpy arrays.

    `patches` are laid out row-major on `grid` (h, w), so `patches[b].reshape(h, w, D)` is the map.
    `attention` is the CLS-to-patch attention averaged over heads, when the backbone has one and it
    was asked for. `layers` holds intermediate patch features keyed by block index (1-based, as in
    Hugging Face `hidden_states`), only for the layers a detector asked for.
    """

    keys: list[FrameKey]
    global_: np.ndarray  # [B, D]
    patches: np.ndarray  # [B, N, D]
    grid: tuple[int, int]
    attention: np.ndarray | None = None  # [B, N]
    layers: dict[int, np.ndarray] = field(default_factory=dict)  # block -> [B, N, D_l]
    motion: MotionField | None = None  # set by the engine when the model has a motion part

    def __post_init__(self) -> None:
        b, n, _ = self.patches.shape
        if len(self.keys) != b or self.global_.shape[0] != b:
            raise ValueError(f"EmbeddingBatch: {len(self.keys)} keys, global {self.global_.shape}, "
                             f"patches {self.patches.shape} disagree on batch size")
        if self.grid[0] * self.grid[1] != n:
            raise ValueError(f"EmbeddingBatch: grid {self.grid} does not hold {n} patches")

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def concat(cls, parts: Sequence[EmbeddingBatch]) -> EmbeddingBatch:
        """The rows of several batches (of one backbone) as one, every optional output joined alike."""
        first = parts[0]
        motion = [p.motion for p in parts]
        return cls(
            keys=[k for p in parts for k in p.keys], global_=np.concatenate([p.global_ for p in parts]),
            patches=np.concatenate([p.patches for p in parts]), grid=first.grid,
            attention=None if first.attention is None else np.concatenate([p.attention for p in parts]),
            layers={k: np.concatenate([p.layers[k] for p in parts]) for k in first.layers},
            motion=None if any(m is None for m in motion) else MotionField.concat(motion))

    def select(self, rows: Sequence[int]) -> EmbeddingBatch:
        """The batch's rows `rows`, in that order, with every optional output sliced alike."""
        idx = list(rows)
        return EmbeddingBatch(
            keys=[self.keys[i] for i in idx], global_=self.global_[idx], patches=self.patches[idx], grid=self.grid,
            attention=None if self.attention is None else self.attention[idx],
            layers={k: v[idx] for k, v in self.layers.items()},
            motion=None if self.motion is None else self.motion.select(idx))


@dataclass
class Evidence:
    """What an anomalous frame looked like where it was anomalous, kept so the operator can act on it later
    without the frame: the embeddings of its most anomalous patches and, where motion was measured there, their
    velocities. "Mark as normal" adds them to the camera's memory; the console finds the nearest normal
    exemplar of the peak patch with them.

    `patches` [K] are patch indices (row-major on the grid), most anomalous first; `vectors` [K, D] float16;
    `velocities` [K, 2] float32 in frame heights per second, NaN where the cell did not count as moving (or
    None when the model has no motion part).
    """

    patches: np.ndarray
    vectors: np.ndarray
    velocities: np.ndarray | None = None


@dataclass
class NormalMemory:
    """A fitted model's memory as the console reads it, without the model's libraries (normality/memory_files.py):
    `train` [T, M, D] mapped from its file (token 0 the global embedding, token i patch i - 1), `frames` [T, M] the
    training frame each row came from, `sources` the training frames' names."""

    train: np.ndarray
    frames: np.ndarray
    sources: list[str]


@dataclass
class Verdict:
    """The decision for one frame.

    `patch_confidences` are the per-patch confidences in [0, 1] (the heatmap, row-major on `grid`).
    `score` is the frame score the decision thresholds; `raw_score` is the same aggregate before
    any capping, kept because capped confidences tie at 1 and ranking metrics (AUROC) need the order.
    `decided_by` names the model, rule and threshold, e.g. "knnn/majority@0.80", or
    "distance/topk@0.41+motion@1.52" when appearance and motion are fused (threshold 1, see motion/fusion.py).
    """

    key: FrameKey
    score: float
    raw_score: float
    anomalous: bool
    global_confidence: float
    patch_confidences: np.ndarray  # [N] float32
    grid: tuple[int, int]
    unsafe_patches: int
    threshold: float
    decided_by: str
    motion_score: float | None = None  # the motion part on its calibrated scale (1 = its threshold), if any
    tamper: str | None = None  # "covered" | "frozen" | "moved" when the camera itself is at fault (live/tamper.py)
    model_version: str | None = None  # the camera's model version that scored it (streamvad/model_store.py)
    evidence: Evidence | None = None  # of an anomalous frame scored live (see Evidence)

    @property
    def n_patches(self) -> int:
        return int(self.patch_confidences.shape[0])

    @property
    def heatmap(self) -> np.ndarray:
        """Per-patch confidences as an [h, w] map."""
        return self.patch_confidences.reshape(self.grid)


@dataclass
class Event:
    """A run of anomalous frames on one camera, as sinks see it.

    `id` is stable for the life of the event and doubles as the idempotency key of webhook
    deliveries, so a receiver can drop the duplicates that at-least-once delivery may produce.
    `end_pts` is None while the event is still open.
    """

    id: str
    camera: str
    start_pts: float
    end_pts: float | None
    start_wall_time: float
    peak_score: float
    peak_key: FrameKey
    frame_count: int
    snapshot_paths: list[str] = field(default_factory=list)
    state: str = "open"  # "open" | "closed"
    type: str = "anomaly"  # "anomaly", or the camera fault: "covered" | "frozen" | "moved"
    end_wall_time: float | None = None  # capture time of the last anomalous frame, once closed
    model_version: str | None = None  # the camera's model version that scored the peak frame
    # the console's pictures (events.media): the peak frame, the heatmap drawn on it, and the event's MP4
    snapshot: str | None = None
    heatmap: str | None = None
    clip: str | None = None
