"""Configuration: one pydantic model per YAML section, validated at start-up.

Unknown keys are errors (a typo must not silently fall back to a default), `${VAR}` and
`${VAR:-default}` are replaced from the environment before parsing, and every failure becomes one
`ConfigError` line naming the file, the dotted field and what was expected.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streamvad.detectors.config import DetectorConfig
from streamvad.errors import ConfigError

VOTING_RULES = ("majority", "any_k")  # rules whose frame threshold is also the per-patch vote threshold


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneConfig(_Section):
    """Which frozen network embeds frames, and how it runs."""

    name: str = "efficientnet-lite0"  # registry name: dinov2 | vit | ijepa | hf | efficientnet-lite0
    model: str | None = None  # hub id or local directory for Hugging Face backbones
    image_size: tuple[int, int] = (224, 336)  # (height, width) fed to the network
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = Field(16, ge=1)
    # torch, or the same network exported to OpenVINO for CPU sites (backbones/openvino_runtime.py); runtime and
    # precision are part of the backbone's identity, so a model is served as it was fitted
    runtime: Literal["torch", "openvino"] = "torch"
    precision: Literal["fp32", "int8"] = "fp32"  # int8: NNCF post-training quantisation (openvino only)
    calibration: Path | None = None  # int8: a folder of normal frames (searched recursively) to calibrate on
    cache_dir: Path | None = None  # OpenVINO exports (default ~/.cache/streamvad/openvino)

    @model_validator(mode="after")
    def _int8_on_openvino(self) -> BackboneConfig:
        if self.precision == "int8" and self.runtime != "openvino":
            raise ValueError("precision int8 needs runtime: openvino")
        return self


Window = Literal["mean", "exponential"]  # how a score is windowed over stream time (scoring/smoothing.py)


class MotionConfig(_Section):
    """Normal motion per place, fitted beside the appearance memory (see streamvad/motion/).

    Appearance at a patch cannot tell a cyclist from a walker; how fast and which way things move
    there can. Speeds are in frame heights per second of stream time, so shed frames, other sampling
    rates and other resolutions do not change them.
    """

    enabled: bool = True
    cell_px: int = Field(16, ge=4, le=64)  # flow runs on the backbone grid scaled to this many pixels per cell
    diff_threshold: int = Field(12, ge=1, le=255)  # grey-level change (after a 5x5 blur) that marks a moving pixel
    min_fraction: float = Field(0.3, gt=0.0, le=1.0)  # share of a cell's pixels that must move for it to count
    memory_per_cell: int = Field(256, ge=1)  # greedy k-center cap on each cell's normal velocities
    min_samples: int = Field(20, ge=1)  # normal velocities a cell needs for its own speed scale
    # what a velocity seen one cell away costs, in units of the cell's normal speed: nearby motion is normal
    # evidence, but two lanes side by side keep their own directions
    neighbour_cost: float = Field(1.0, ge=0.0)
    top_cells: int = Field(2, ge=1)  # frame motion score: mean of the most anomalous cells (crowds do not dilute it)
    max_gap_s: float = Field(1.0, gt=0.0)  # a frame further than this from the previous one is scored on appearance
    # a frame's motion score is the mean of its camera's over this much stream time (its own included): an object
    # that moves wrong does so frame after frame, while a flow vector's jitter does not (thresholds are cut from
    # the same windowed score of normal footage; 0: every frame alone)
    smooth_s: float = Field(0.5, ge=0.0)
    # "mean" over smooth_s, or "exponential" with smooth_s as its time constant (scoring/smoothing.py)
    window: Window = "mean"
    # the least a motion threshold can be: within half a cell's normal speed of a normal velocity is never
    # anomalous, even where normal footage moved so little that the calibration quantile is ~0
    min_threshold: float = Field(0.5, gt=0.0)


class NormalityConfig(_Section):
    """How normal footage is clustered and indexed (see ARCHITECTURE.md, 'Fitting')."""

    k_min: int = Field(2, ge=2)
    k_max: int = Field(50, ge=2)
    k_candidates: int = Field(10, ge=1)  # silhouette is evaluated on this many k in [k_min, k_max]
    silhouette_sample: int = Field(1000, ge=10)
    kmeans_iters: int = Field(30, ge=1)
    hdbscan: Literal["none", "global", "all"] = "global"
    hdbscan_min_cluster_size: int = Field(40, ge=2)
    hdbscan_min_samples: int = Field(40, ge=1)
    density_m: int = Field(5, ge=1)
    # Original k-NNN (scoring.method nnn): nearest normal vectors per query, the neighbourhood size of each
    # training vector and the feature block size (Nizan & Tal: 3, 25, 5)
    nnn_k: int = Field(3, ge=1)
    nnn_neighbours: int = Field(25, ge=2)
    nnn_block: int = Field(5, ge=1)
    # Serving search: "dense" reads every row (exact); "hnsw" walks hnswlib graphs (2x the memory); "projected"
    # ranks per-token PCA sketches, then exact distances of the best 16 rows (+30% memory; the index for large
    # memories on many per-camera models, README "Multi-camera sites")
    index: Literal["dense", "hnsw", "projected"] = "dense"
    chroma: bool = True  # write the ChromaDB system of record next to the serving index
    # A Chroma server (http://chroma:8000) instead of the embedded store in <model>/chroma: several hosts and
    # models share one system of record; workers still serve from the model directory's files.
    chroma_url: str | None = Field(None, pattern=r"^https?://[^/:]+(:\d+)?/?$")
    # Collection names on the server are "<prefix>-global", "<prefix>-patch_000", ...; None: derived from the
    # model directory's name (the `fit --out` directory), so give each model its own name or prefix.
    chroma_prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{1,62}$")
    holdout_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # normal frames kept aside for thresholds
    # At most this many training frames in the appearance memory, chosen by greedy k-center over whole patch
    # maps (normality/coreset.py): a worker streams each camera's memory once per batch. None: every frame.
    max_train_frames: int | None = Field(None, ge=2)
    # Serving memory of one camera's model (appearance and motion), in MiB: each token keeps the greedy
    # k-center coreset of its training vectors that fits (stored float16). None: every vector of every frame.
    # 48: a Ped2 model keeps 134 vectors per token, and fit, Chroma record and search pay per kept vector
    memory_budget_mb: float | None = Field(48.0, gt=0.0)
    # Clip folds for calibration: every training clip is also scored by the memory without its fold, so
    # thresholds see thousands of normal frames as new footage, not only the held-out clips
    folds: int = Field(4, ge=2)
    seed: int = 0
    motion: MotionConfig = MotionConfig()

    @model_validator(mode="before")
    @classmethod
    def _moved_folds(cls, data: Any) -> Any:
        """`motion.folds` (older configs and models) is now `folds`, shared by appearance and motion."""
        motion = data.get("motion") if isinstance(data, dict) else None
        if isinstance(motion, dict) and "folds" in motion:
            data = {**data, "motion": {k: v for k, v in motion.items() if k != "folds"}}
            data.setdefault("folds", motion["folds"])
        return data

    @model_validator(mode="after")
    def _k_range(self) -> NormalityConfig:
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be >= k_min ({self.k_min})")
        return self


class ScoringConfig(_Section):
    """How token confidences become a frame decision."""

    # knnn: the study's d / local density of the nearest normal neighbour; distance: the nearest-neighbour
    # distance itself (better on video, whose near-duplicate training frames make local densities tiny);
    # hdbscan: 1 - membership strength; nnn: the original k-NNN (Nizan & Tal), the query's offset from its
    # nearest normal vectors measured along their neighbourhoods' principal directions.
    method: Literal["knnn", "distance", "hdbscan", "nnn"] = "distance"
    rule: Literal["majority", "topk", "global", "any_k"] = "topk"  # majority is the study's vote
    patch_threshold: float = Field(0.8, gt=0.0)
    topk_ratio: float = Field(0.05, gt=0.0, le=1.0)
    any_k: int = Field(1, ge=1)
    # None: calibrated on held-out normal frames at fit time. It decides appearance alone (motion: appearance);
    # fused scoring compares the crowd-corrected appearance with the threshold the fit cut for it (motion/fusion.py)
    frame_threshold: float | None = None
    calibration_quantile: float = Field(0.99, gt=0.0, lt=1.0)
    # fused: appearance and motion joined as `fusion` says, against a threshold of 1;
    # appearance / motion: one of the two alone (motion needs a model fitted with normality.motion).
    motion: Literal["fused", "appearance", "motion"] = "fused"
    # how `fused` joins the two parts, each on its fusion scale (normal median 0, threshold 1: motion/fusion.py):
    # sum (both parts add evidence, against the sum's own threshold, calibrated at fit on the same normal frames)
    # or max (the larger decides: either part alone flags a frame); tools/fusion_validation.py compares them on
    # training clips
    fusion: Literal["max", "sum"] = "sum"
    # a frame's score is the mean over this many seconds of its camera's stream; 0 (the default): each frame
    # alone. Opt-in: it helps long anomalies and costs short ones (scoring/smoothing.py)
    smooth_s: float = Field(0.0, ge=0.0, le=10.0)

    def decision_threshold(self, calibrated: Mapping[str, float]) -> float | None:
        """The frame threshold the k-NN rule decides at, given the model's `calibrated` thresholds: one set here,
        else the model's for this method/rule, else a voting rule's `patch_threshold`; None when there is none.
        One order, for the worker's scorer and for the console that shows an operator what decided."""
        if self.frame_threshold is not None:
            return float(self.frame_threshold)
        key = f"{self.method}/{self.rule}"
        if key in calibrated:
            return float(calibrated[key])
        return float(self.patch_threshold) if self.rule in VOTING_RULES else None


class SamplingConfig(_Section):
    fps: float = Field(4.0, gt=0.0)


class CameraConfig(_Section):
    """One camera (or recorded source) the server reads."""

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")  # as the wire accepts them
    url: str  # rtsp://..., a video file, /dev/videoN, or an image folder
    fps: float = Field(4.0, gt=0.0)
    loop: bool = False  # loop a video file (demo and soak runs)
    realtime: bool = True  # pace files at their own frame rate, like a camera
    mask: list[tuple[float, float]] | None = None  # polygon in [0,1] image coords; patches outside ignored
    # This camera's normality model directory (default: the top-level model_dir). An empty directory is a
    # model store with no version yet: the camera is `learning` (not scored, no alerts) until one is fitted.
    model: Path | None = None
    # The worker that scores this camera (0 .. serve.workers - 1); None: a stable hash of the id picks it
    worker: int | None = Field(None, ge=0)
    false_alerts_per_day: float | None = Field(None, gt=0.0)  # this camera's alert budget (events.*)
    # Privacy: polygons in [0,1] image coords blurred in every picture that leaves the worker (snapshots, clips,
    # console tiles, webhook payloads); scoring still sees them, unless `mask` leaves them out too
    privacy: list[list[tuple[float, float]]] = Field(default_factory=list)

    @field_validator("mask")
    @classmethod
    def _polygon(cls, v: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if v is not None and len(v) < 3:
            raise ValueError("a mask polygon needs at least 3 points")
        return v

    @field_validator("privacy")
    @classmethod
    def _polygons(cls, v: list[list[tuple[float, float]]]) -> list[list[tuple[float, float]]]:
        for polygon in v:
            if len(polygon) < 3:
                raise ValueError("a privacy polygon needs at least 3 points")
            if not all(0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 for x, y in polygon):
                raise ValueError("privacy polygon points are (x, y) fractions of the image, in [0, 1]")
        return v


# The largest frame side the wire carries (transport.py): receivers refuse larger frames before decoding them.
WIRE_MAX_SIDE = 4096


def runtime_dir() -> str:
    """This user's directory for ipc:// sockets: $XDG_RUNTIME_DIR/streamvad, else /tmp/streamvad-<uid>. Whoever
    binds first creates it with mode 0700, and a bind into a directory others can enter is refused
    (transport.private_socket_dir)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return f"{base}/streamvad" if base else f"/tmp/streamvad-{os.getuid()}"


class CurveConfig(_Section):
    """ZeroMQ CURVE for tcp:// sockets (see security.py)."""

    # a directory from `streamvad keys generate`: server.key_secret (sockets that bind), client.key_secret and
    # server.key (sockets that connect), allowed/ (client public keys a binding socket accepts)
    keys: Path


class TransportConfig(_Section):
    """ZeroMQ endpoints (tcp:// or ipc://) and the backpressure policy of the frame queue."""

    # ipc:// defaults live in this user's private socket directory (runtime_dir), never at names in /tmp that
    # another local user could take first or connect to
    frames: str = Field(default_factory=lambda: f"ipc://{runtime_dir()}/frames")
    verdicts: str = Field(default_factory=lambda: f"ipc://{runtime_dir()}/verdicts")
    hwm: int = Field(64, ge=1)
    policy: Literal["block", "drop"] = "drop"  # block for replay, drop (keep freshest) for live
    jpeg_quality: int = Field(90, ge=10, le=100)
    # Readers shrink frames (aspect kept) so the longer side is at most this before queueing them: the
    # worker decodes every frame of every camera on one thread, and a 1080p JPEG costs ~10x a 640 one.
    # The network sees 224-ish pixels anyway; snapshots are drawn at this size. None: send as decoded, up to
    # WIRE_MAX_SIDE (the most any receiver decodes; larger frames are shrunk to it).
    frame_max_side: int | None = Field(640, ge=32, le=WIRE_MAX_SIDE)
    status: str = Field(default_factory=lambda: f"ipc://{runtime_dir()}/status")  # every child reports here
    # serve's control socket (REQ/REP): `streamvad enroll --serve` asks the running serve to enrol a camera
    control: str = Field(default_factory=lambda: f"ipc://{runtime_dir()}/control")
    # verdicts a worker keeps until the events process has committed them (acknowledged), and how long it
    # waits for an acknowledgement before sending everything unacknowledged again
    unacked_max: int = Field(10_000, ge=1)
    unacked_max_mb: float = Field(256.0, gt=0.0)  # and their bytes: a verdict may carry its frame's JPEG
    resend_after_s: float = Field(5.0, gt=0.0)
    curve: CurveConfig | None = None  # authentication of tcp:// sockets; required for tcp:// unless insecure
    insecure: bool = False  # allow unauthenticated tcp:// (logged as a warning at start-up)


class WorkerConfig(_Section):
    max_batch: int = Field(16, ge=1)
    max_wait_ms: float = Field(50.0, ge=0.0)
    # Under the drop policy, frames older than this when the worker pulls them are shed (and counted):
    # a saturated worker then keeps alerts seconds-fresh instead of working through a backlog.
    max_age_s: float | None = Field(2.0, gt=0.0)
    # how often each camera's model store is checked for a new current version (swapped in without a restart)
    model_poll_s: float = Field(2.0, gt=0.0)


class DriftConfig(_Section):
    """When a camera's live scores part from its model's hold-out for good: re-enrolment is suggested
    (streamvad/live/drift.py)."""

    enabled: bool = True
    window: int = Field(2400, ge=10)  # the camera's last scores compared (2400: 10 min at 4 fps)
    min_frames: int = Field(240, ge=10)  # scores needed before a verdict on drift
    ks: float = Field(0.5, gt=0.0, le=1.0)  # Kolmogorov-Smirnov distance from the hold-out that suggests re-enrolling
    every: int = Field(20, ge=1)  # frames between two comparisons


class TamperConfig(_Section):
    """Camera faults raised as their own event types (see streamvad/live/tamper.py)."""

    enabled: bool = True
    dark_level: float = Field(16.0, ge=0.0, le=255.0)  # mean grey level below which the camera is covered/black
    flat_std: float = Field(4.0, ge=0.0)  # grey standard deviation below which the picture is featureless
    moved_fraction: float = Field(0.5, gt=0.0, le=1.0)  # share of the picture changing at once: camera moved
    hold_s: float = Field(2.0, ge=0.0)  # stream seconds a condition must last before frames are marked
    # identical frames for this long: some encoders repeat a static scene's frames exactly for a while
    frozen_s: float = Field(10.0, ge=0.0)


class AuthConfig(_Section):
    """Who may use the console and the API (/healthz and /metrics stay open). With neither a token nor a user,
    serve makes a random token at start and logs the console's address with it, as Jupyter does."""

    token: str | None = Field(None, min_length=16)  # an API token (Authorization: Bearer ...), e.g. ${STREAMVAD_TOKEN}
    # user name -> password hash from `streamvad hash-password` (scrypt), for the console's login form
    users: dict[str, str] = Field(default_factory=dict)
    session_hours: float = Field(12.0, gt=0.0)  # a console login lasts this long

    @field_validator("users")
    @classmethod
    def _hashes(cls, v: dict[str, str]) -> dict[str, str]:
        for user, hashed in v.items():
            if not hashed.startswith("scrypt$"):
                raise ValueError(f"user {user!r}: expected a hash from `streamvad hash-password` (scrypt$...), "
                                 "never a plain password")
        return v


class ServeConfig(_Section):
    """The `serve` process: the console, API, health/metrics HTTP, how many workers, how crashed children come
    back."""

    http_host: str = "127.0.0.1"  # the console and API: loopback unless you put it behind a proxy or open it
    http_port: int = Field(9108, ge=0, le=65535)  # console, /api, /healthz and /metrics; 0 picks a free port (logged)
    auth: AuthConfig = AuthConfig()
    # >1: worker i binds transport.frames with port + i (tcp), suffix -i (ipc) or {worker} replaced by i, and
    # scores only its own cameras (cameras[].worker, or a stable hash of the camera id)
    workers: int = Field(1, ge=1)
    status_interval_s: float = Field(1.0, gt=0.0)
    stale_after_s: float = Field(5.0, gt=0.0)  # a child silent this long counts as down in /healthz
    restart_backoff_s: float = Field(1.0, gt=0.0)
    restart_backoff_max_s: float = Field(30.0, gt=0.0)
    ready_timeout_s: float = Field(300.0, gt=0.0)  # worker model loading before readers start
    drain_timeout_s: float = Field(10.0, gt=0.0)


class EventsConfig(_Section):
    """Hysteresis: open after `open_n` anomalous of the last `open_m` frames, close after quiet.

    `eos_wait_s`: at a camera's end of stream its events close once the verdict of its last frame has
    arrived (another worker may still be scoring it), or after this many wall-clock seconds, since that
    frame may have been dropped or shed and never get a verdict.

    `restart_after_s`: a verdict more than this many seconds of pts behind the camera's last one means
    its reader restarted and numbers frames from pts 0 again: the camera's event is closed and the new
    stream tracked from scratch. Reordering between workers is well under a second, a restarted stream
    jumps back by its whole run time; smaller backward steps are late verdicts (see `EventTracker`).
    """

    open_n: int = Field(2, ge=1)
    open_m: int = Field(4, ge=1)
    close_quiet_s: float = Field(2.0, ge=0.0)  # of pts: a slow worker's late verdicts cannot close an event
    # wall-clock seconds with no verdict from a camera at all (its reader or worker died mid-event) before its
    # open event is closed; counted from when verdicts arrive, so latency does not count as silence
    silence_s: float = Field(10.0, gt=0.0)
    cooldown_s: float = Field(10.0, ge=0.0)
    eos_wait_s: float = Field(5.0, ge=0.0)
    restart_after_s: float = Field(10.0, ge=0.0)
    # the events database (SQLite, WAL): events, each camera's tracking state, and the verdict link's progress
    database: Path = Path("runs/events.db")
    # what the console shows: each event's peak frame, heatmap and clip, and each camera's latest frame
    media: Path = Path("runs/media")
    media_max_side: int = Field(640, ge=64, le=4096)  # pictures leave the worker at most this large
    preview_s: float = Field(1.0, gt=0.0)  # the console's live tile of a camera is refreshed this often
    clips: bool = True  # keep an MP4 of each event: every sampled frame goes to the events process for it
    clip_pre_s: float = Field(5.0, ge=0.0)  # the clip starts this long before the event opened
    clip_post_s: float = Field(5.0, ge=0.0)  # and ends this long after it closed
    retention_days: float | None = Field(30.0, gt=0.0)  # events and their media older than this are deleted
    # below this much free space on the media disk, the oldest closed events and their media are deleted first,
    # whatever their age, so that a full disk never stops new events being recorded; None: never
    min_free_mb: float | None = Field(1024.0, gt=0.0)
    # at most this many events a day on normal footage, per camera (cameras[].false_alerts_per_day overrides): the
    # threshold is extrapolated from the model's hold-out (scoring/budget.py); None: the calibrated quantile
    false_alerts_per_day: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _window(self) -> EventsConfig:
        if self.open_n > self.open_m:
            raise ValueError(f"open_n ({self.open_n}) must be <= open_m ({self.open_m})")
        return self


class WebhookConfig(_Section):
    url: str = Field(pattern=r"^https?://")
    # streamvad: the X-StreamVAD-Signature header (secret: any string); standard: Standard Webhooks
    # (webhook-id / webhook-timestamp / webhook-signature, secret: "whsec_" + base64 key), which receivers can
    # verify with the standardwebhooks libraries of any language
    format: Literal["streamvad", "standard"] = "streamvad"
    secret: str | None = None  # the HMAC-SHA256 key
    timeout_s: float = Field(5.0, gt=0.0)
    max_attempts: int = Field(0, ge=0)  # 0: retry until delivered
    backoff_s: float = Field(0.5, gt=0.0)
    backoff_max_s: float = Field(30.0, gt=0.0)

    @model_validator(mode="after")
    def _standard_secret(self) -> WebhookConfig:
        if self.format == "standard" and not _is_whsec(self.secret):
            raise ValueError("format standard needs a secret 'whsec_' + the base64 of a key of at least 16 bytes "
                             "(e.g. whsec_$(openssl rand -base64 32))")
        return self


def _is_whsec(secret: str | None) -> bool:
    """Whether `secret` is a Standard Webhooks secret: "whsec_" + base64 of a key of at least 16 bytes."""
    if secret is None or not secret.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 16
    except ValueError:
        return False


class MqttConfig(_Section):
    """An MQTT broker that gets every event update (sinks/mqtt.py: topics in the Frigate / Home Assistant style)."""

    host: str = Field(min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = Field("streamvad", pattern=r"^[^+#\s]+$")  # MQTT wildcards cannot be in a topic
    client_id: str | None = None  # None: streamvad-<pid>
    username: str | None = None
    password: str | None = None
    qos: int = Field(1, ge=0, le=2)
    keepalive_s: int = Field(30, ge=5)
    max_queued: int = Field(10_000, ge=1)  # messages kept while the broker is unreachable; more are dropped


class SinksConfig(_Section):
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    mqtt: MqttConfig | None = None
    jsonl: Path | None = None
    snapshots: Path | None = None
    spool: Path = Path("runs/spool")  # disk-backed webhook queue


class StoreConfig(_Section):
    """A camera's versioned model store (model_store.py): every enrolment and every "mark as normal" adds a
    whole model (tens of MB at the default memory budget, about 1 GB for a full-size Ped2 memory)."""

    # versions kept; older ones are deleted when one is added, except the current one and the one it replaced
    keep_versions: int = Field(10, ge=2)
    # the longest a "mark as normal" may take to build its version (seconds, usually a few): past it the process
    # building it is stopped and the store, whose one writer it is meanwhile, stays as it was and is free again
    mark_timeout_s: float = Field(600.0, gt=0)


class StreamVADConfig(_Section):
    """The whole configuration tree; every section has working defaults."""

    model_dir: Path | None = None
    backbone: BackboneConfig = BackboneConfig()
    normality: NormalityConfig = NormalityConfig()
    scoring: ScoringConfig = ScoringConfig()
    sampling: SamplingConfig = SamplingConfig()
    cameras: list[CameraConfig] = Field(default_factory=list)
    transport: TransportConfig = TransportConfig()
    worker: WorkerConfig = WorkerConfig()
    tamper: TamperConfig = TamperConfig()
    drift: DriftConfig = DriftConfig()
    events: EventsConfig = EventsConfig()
    sinks: SinksConfig = SinksConfig()
    serve: ServeConfig = ServeConfig()
    store: StoreConfig = StoreConfig()
    detector: DetectorConfig | None = None  # an image detector hosted next to the k-NNN scorer

    @model_validator(mode="after")
    def _unique_cameras(self) -> StreamVADConfig:
        ids = [c.id for c in self.cameras]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"camera ids must be unique, repeated: {', '.join(dupes)}")
        for camera in self.cameras:
            if camera.worker is not None and camera.worker >= self.serve.workers:
                raise ValueError(f"cameras.{camera.id}.worker: {camera.worker}, but serve.workers is "
                                 f"{self.serve.workers} (workers are numbered from 0)")
        return self

    def camera(self, camera_id: str) -> CameraConfig:
        """The camera with this id, or one line naming the configured ones (`--camera` on the command line)."""
        found = next((c for c in self.cameras if c.id == camera_id), None)
        if found is None:
            known = ", ".join(c.id for c in self.cameras) or "none"
            raise ConfigError(f"--camera: no camera {camera_id!r} in cameras (configured: {known})")
        return found

    @property
    def served_scoring(self) -> ScoringConfig | None:
        """The scoring every camera is served with when this config sets a `scoring` section, else None: each
        model keeps the scoring it was fitted with."""
        return self.scoring if "scoring" in self.model_fields_set else None


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, source: str = "<config>") -> str:
    """Replace ${VAR} / ${VAR:-default}; an unset variable without default is an error."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{source}: environment variable ${{{name}}} is not set and has no default")

    return _ENV.sub(sub, text)


def expand_env_values(data: Any, source: str = "<config>") -> Any:
    """`expand_env` on the string values of parsed YAML, so comments (and keys) are never expanded.

    A value that is one placeholder and nothing else (`frame_threshold: ${T:-null}`) becomes the YAML
    scalar its text spells (null, false, 0.5), as if it had been written there; a placeholder inside a
    longer string is plain text. An environment value that would parse as a mapping or list stays text.
    """
    if isinstance(data, dict):
        return {key: expand_env_values(value, source) for key, value in data.items()}
    if isinstance(data, list):
        return [expand_env_values(value, source) for value in data]
    if not isinstance(data, str):
        return data
    text = expand_env(data, source)
    if text != data and _ENV.fullmatch(data.strip()):
        try:
            typed = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        return text if isinstance(typed, dict | list) else typed
    return text


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line: the first failing field, what was expected, and how many more failed."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    got = first.get("input")
    shown = "" if first["type"] == "extra_forbidden" or isinstance(got, dict) else f" (got {got!r})"
    more = f" [+{err.error_count() - 1} more]" if err.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{shown}{more}"


def parse_config(data: dict[str, Any] | None, source: str = "<config>") -> StreamVADConfig:
    try:
        return StreamVADConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path | None) -> StreamVADConfig:
    """Load and validate a YAML config; None gives the defaults."""
    if path is None:
        return StreamVADConfig()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = expand_env_values(yaml.safe_load(p.read_text(encoding="utf-8")), str(p))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not UTF-8 text (byte {err.start}); save the config as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"{p}: a YAML anchor refers to itself (an alias inside its own anchor)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{where} not valid YAML: {getattr(err, 'problem', err)}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return parse_config(data, str(p))
