"""The worker: frames from any number of cameras in, batched across cameras, verdicts out.

Dynamic batching: a batch closes when it holds `max_batch` frames or `max_wait_ms` after its first
frame arrived, whichever comes first, so one quiet camera costs at most `max_wait_ms` of latency
and many busy cameras share one forward pass. Each camera may have its own mask polygon: the
backbone runs once per batch and each camera's frames are scored by a scorer with that camera's
patch mask. On SIGTERM the worker stops taking new work only once its queue is empty (the
supervisor stops the readers first), so no frame already handed to it is lost.

Verdict channel: the worker connects a PUB socket to the events process. An anomalous verdict is
preceded by a `frame` message with the same key (the wire format's frame type, JPEG), so a remote
events process can save snapshots without the frame store a single host would have.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streamvad import security
from streamvad.compute import leave_cores_to_torch
from streamvad.config import (
    CameraConfig,
    DriftConfig,
    EventsConfig,
    StreamVADConfig,
    TamperConfig,
    TransportConfig,
    WorkerConfig,
)
from streamvad.errors import ConfigError
from streamvad.live.drift import DriftMonitor
from streamvad.live.fleet import Fleet, ModelWatcher, load_fleet, owned
from streamvad.live.health import BATCH_BUCKETS, LATENCY_BUCKETS, Buckets
from streamvad.live.pictures import PicturePolicy
from streamvad.live.supervisor import StatusReporter, setup_child
from streamvad.live.tamper import TamperMonitor
from streamvad.scoring.engine import Engine, FrameScorer
from streamvad.sources.shrink import limit_size
from streamvad.transport import FramePuller, Message, VerdictLink, encode_frame, encode_verdict, relay
from streamvad.types import Frame, Polygon, Verdict

log = logging.getLogger(__name__)

_IDLE_POLL_MS = 100  # how often an idle worker looks at its stop flag


def patch_mask(polygon: Polygon, grid: tuple[int, int]) -> np.ndarray:
    """Row-major bool [h*w]: True where the patch centre lies inside `polygon` ((x, y) in [0, 1] of the
    image width/height), by the even-odd rule."""
    h, w = grid
    ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    x, y = xs.ravel(), ys.ravel()
    inside = np.zeros(h * w, dtype=bool)
    pts = [(float(px), float(py)) for px, py in polygon]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def camera_scorers(fleet: Fleet, masks: Mapping[str, Polygon]) -> dict[str, FrameScorer]:
    """One scorer per masked camera, sharing its model with the camera's unmasked scorer."""
    from streamvad.motion.fusion import MaskableScorer

    out: dict[str, FrameScorer] = {}
    for camera, polygon in masks.items():
        engine = fleet.engine(camera)
        if engine is None:  # learning: nothing to mask yet
            continue
        if not isinstance(engine.scorer, MaskableScorer):
            raise ConfigError(f"cameras.{camera}.mask: camera masks need a k-NNN model, but {engine.info.kind!r} "
                              "detector models score whole frames; remove the mask or give the camera a k-NNN model")
        mask = patch_mask(polygon, engine.backbone.grid)
        if not mask.any():
            raise ConfigError(f"cameras.{camera}.mask: the polygon covers no patch centre of the "
                              f"{engine.backbone.grid[0]}x{engine.backbone.grid[1]} grid; nothing would be scored")
        out[camera] = engine.scorer.with_mask(mask)
    return out


class VerdictSender:
    """The worker's verdicts and relayed EOSs, over the acknowledged link to the events process (which binds,
    so any number of workers can join); see `VerdictLink`."""

    def __init__(self, transport: TransportConfig, pictures: PicturePolicy) -> None:
        self.link = VerdictLink(transport.verdicts, capacity=transport.unacked_max,
                                max_bytes=int(transport.unacked_max_mb * 2**20),
                                resend_after_s=transport.resend_after_s)
        self.quality = transport.jpeg_quality
        self.pictures = pictures

    def send(self, verdict: Verdict, frame: Frame) -> None:
        """A verdict travels with its frame (JPEG, shrunk and privacy-blurred) when the policy says so: always
        when anomalous (snapshots), and for clips and the console's live tiles."""
        parts = encode_verdict(verdict, frame.wall_time)
        picture = self.pictures.picture(verdict, frame)
        self.link.send(parts if picture is None else [*encode_frame(picture, "jpeg", self.quality), *parts])

    def send_preview(self, frame: Frame) -> None:
        """A learning camera's frame when its live tile is due: the console shows what it sees while it learns."""
        picture = self.pictures.preview(frame)
        if picture is not None:
            self.link.send(encode_frame(picture, "jpeg", self.quality, preview=True))

    def send_eos(self, eos: Message) -> None:
        """Forwards the reader's EOS header unchanged: only the events process, which sees every worker's
        verdicts, can tell when the camera's last frame has been scored."""
        self.link.send(relay(eos))

    def close(self) -> None:
        self.link.close()


class Worker:
    """Pulls frames, batches them across cameras, scores them and publishes the verdicts.

    Sockets are created inside `run`, on the thread that uses them. `stats()` may be read from any
    thread (the status reporter's).
    """

    def __init__(self, fleet: Fleet | Engine, transport: TransportConfig, cfg: WorkerConfig, *,
                 frames_endpoint: str | None = None,
                 masks: Mapping[str, Polygon] | None = None, name: str = "worker-0",
                 drain_timeout_s: float = 10.0, tamper: TamperConfig | None = None,
                 watcher: ModelWatcher | None = None, drift: DriftConfig | None = None,
                 pictures: PicturePolicy | None = None) -> None:
        self.fleet = fleet if isinstance(fleet, Fleet) else Fleet.single(fleet)
        self.pictures = pictures or PicturePolicy(EventsConfig(), {})
        self.transport = transport
        self.cfg = cfg
        self.frames_endpoint = frames_endpoint or transport.frames
        self.name = name
        self.drain_timeout_s = drain_timeout_s
        self.masks = dict(masks or {})
        self.fleet.scorers = camera_scorers(self.fleet, self.masks)
        self.watcher = watcher  # new model versions, swapped in between batches
        self.tamper = TamperMonitor(tamper or TamperConfig())
        self.drift = DriftMonitor(drift or DriftConfig())  # live scores against each model's hold-out
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._in: Counter[str] = Counter()
        self._out: Counter[str] = Counter()
        self._anomalous: Counter[str] = Counter()
        self._stale: Counter[str] = Counter()
        self._learning: Counter[str] = Counter()  # frames of cameras with no model yet (not scored)
        self._foreign: Counter[str] = Counter()  # frames of cameras another worker owns (misrouted; dropped)
        # frames a camera's reader numbered but this worker never received (a jump in Frame.index; a restarted
        # stream numbering from 0 again is not one)
        self._missing: Counter[str] = Counter()
        self._last_index: dict[str, int] = {}
        self._model_bytes = self.fleet.model_bytes()
        self._max_age_s = cfg.max_age_s if transport.policy == "drop" else None  # replay never sheds
        self._pending = 0
        self._scored_at = time.monotonic()  # the last batch scored (or start): /healthz tells a hung worker by it
        self._malformed = 0
        self.batch_sizes = Buckets(BATCH_BUCKETS)
        self.embed_s = Buckets(LATENCY_BUCKETS)
        self.score_s = Buckets(LATENCY_BUCKETS)
        self.latency_s = Buckets(LATENCY_BUCKETS)
        self.batches: list[list[str]] = []  # camera of each frame, per batch (recent ones, for tests/logs)
        self.sender: VerdictSender | None = None  # while running

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": "ready" if self.ready.is_set() else "loading",
                "frames_in": dict(self._in), "frames_out": dict(self._out), "anomalous": dict(self._anomalous),
                "stale": dict(self._stale), "learning": dict(self._learning), "foreign": dict(self._foreign),
                "missing": dict(self._missing),
                "cameras": {c: self.fleet.state(c) for c in self.fleet.cameras}, "models": self._model_bytes,
                "versions": self.fleet.versions(),
                "drift": self.drift.distances(), "reenrol": self.drift.suggested(),
                "pending": self._pending, "idle_s": time.monotonic() - self._scored_at,
                "malformed": self._malformed, "auth_denied": security.denied(),
                **self._link_stats(),
                "batch_size": self.batch_sizes.as_dict(), "embed_s": self.embed_s.as_dict(),
                "score_s": self.score_s.as_dict(), "latency_s": self.latency_s.as_dict(),
            }

    def _link_stats(self) -> dict[str, int]:
        if self.sender is None:
            return {}
        link = self.sender.link
        return {"unacked": link.unacked, "unacked_bytes": link.bytes, "resent": link.resent, "lost": link.lost}

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set, then drain what is queued (bounded by `drain_timeout_s`)."""
        puller = FramePuller(self.frames_endpoint, hwm=self.transport.hwm, bind=True)
        sender = self.sender = VerdictSender(self.transport, self.pictures)
        if self.watcher is not None:
            self.watcher.start()
        self.ready.set()
        log.info("%s: pulling frames on %s, verdicts to %s (batch <= %d, wait <= %.0f ms)", self.name,
                 puller.endpoint, self.transport.verdicts, self.cfg.max_batch, self.cfg.max_wait_ms)
        drain_until: float | None = None
        try:
            while True:
                if stop.is_set() and drain_until is None:
                    drain_until = time.monotonic() + self.drain_timeout_s
                    log.info("%s: stopping; draining queued frames", self.name)
                self._swap_models()
                frames, eos = self._collect(puller)
                with self._lock:
                    self._malformed = puller.malformed
                self._process(frames, sender)
                for msg in eos:
                    sender.send_eos(msg)
                sender.link.service()
                if drain_until is not None and ((not frames and not eos) or time.monotonic() > drain_until):
                    break
            assert drain_until is not None  # the loop ends only while draining
            if not sender.link.flush(max(2.0, drain_until - time.monotonic())):
                log.warning("%s: %d verdict(s) not acknowledged by the events process before stopping; they are lost",
                            self.name, sender.link.unacked)
        finally:
            if self.watcher is not None:
                self.watcher.close()
            puller.close()
            sender.close()
        log.info("%s: stopped after %d frames", self.name, sum(self._out.values()))

    def _swap_models(self) -> None:
        """Put the model versions the watcher loaded in service: between batches, so no frame is scored twice
        or by a half-switched camera, and other cameras are untouched."""
        for camera, path, engine in self.watcher.take() if self.watcher is not None else []:
            try:
                with self._lock:
                    self.fleet.swap(camera, path, engine)
                    self.fleet.scorers.update(camera_scorers(self.fleet, {camera: self.masks[camera]})
                                              if camera in self.masks else {})
                    self._model_bytes = self.fleet.model_bytes()
            except (ValueError, ConfigError) as err:
                log.error("%s: cannot serve model %s on this worker (%s); restart it to change its layers", camera,
                          path, err)
                continue
            log.info("%s: camera %s now scored by model %s%s", self.name, camera, path,
                     f" (version {engine.version})" if engine.version else "")

    def _collect(self, puller: FramePuller) -> tuple[list[Frame], list[Message]]:
        """One batch: up to max_batch frames, closed max_wait_ms after its first frame or at an EOS
        (so the verdicts of this worker's share of a camera go out before its EOS is forwarded)."""
        frames: list[Frame] = []
        eos: list[Message] = []
        deadline: float | None = None
        while len(frames) < self.cfg.max_batch:
            wait_ms = _IDLE_POLL_MS if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            msg = puller.recv(wait_ms)
            if msg is None:
                break
            if msg.type == "frame" and msg.frame is not None:
                with self._lock:
                    self._in[msg.frame.camera] += 1
                    self._count_missing(msg.frame)
                    if not self.fleet.serves(msg.frame.camera):
                        self._misrouted(msg.frame.camera)
                        continue
                    if self._is_stale(msg.frame):
                        self._stale[msg.frame.camera] += 1
                        continue
                    self._pending += 1
                frames.append(limit_size(msg.frame, self.transport.frame_max_side))  # whatever a sender claims
                if deadline is None:
                    deadline = time.monotonic() + self.cfg.max_wait_ms / 1000
            elif msg.type == "eos":
                eos.append(msg)
                break
            else:
                log.debug("%s: ignoring %s message from %s on the frame queue", self.name, msg.type, msg.camera)
        return frames, eos

    def _count_missing(self, frame: Frame) -> None:
        last = self._last_index.get(frame.camera)
        self._missing[frame.camera] += 0 if last is None or frame.index <= last else frame.index - last - 1
        self._last_index[frame.camera] = frame.index

    def _misrouted(self, camera: str) -> None:
        if not self._foreign[camera]:
            log.warning("%s: frames of camera %s, which this worker does not serve, arrive; dropping them (a reader "
                        "with another config's worker list?)", self.name, camera)
        self._foreign[camera] += 1

    def _is_stale(self, frame: Frame) -> bool:
        if self._max_age_s is None or time.time() - frame.wall_time <= self._max_age_s:
            return False
        if not self._stale[frame.camera]:
            log.warning("%s: camera %s frames arrive older than %.1f s; shedding them (the worker is saturated)",
                        self.name, frame.camera, self._max_age_s)
        return True

    def score(self, frames: Sequence[Frame]) -> list[Verdict | None]:
        """One forward pass for the batch, each camera's frames scored against its own model (None: the
        camera is learning)."""
        verdicts = self.fleet.score(frames)
        if any(v is not None for v in verdicts):
            self.embed_s.observe(self.fleet.timings.embed_s)
            self.score_s.observe(self.fleet.timings.score_s)
        return verdicts

    def _process(self, frames: list[Frame], sender: VerdictSender) -> None:
        if not frames:
            return
        verdicts = self.score(frames)
        scored = [i for i, v in enumerate(verdicts) if v is not None]
        annotated = self.tamper.annotate([frames[i] for i in scored], [verdicts[i] for i in scored])
        for i, verdict in zip(scored, annotated, strict=True):
            sender.send(verdict, frames[i])
        for frame, verdict in zip(frames, verdicts, strict=True):
            if verdict is None:
                sender.send_preview(frame)
        now = time.time()
        with self._lock:
            for frame, verdict in zip(frames, verdicts, strict=True):
                self._pending -= 1
                if verdict is None:
                    self._learning[frame.camera] += 1
                    continue
                self._out[frame.camera] += 1
                self._anomalous[frame.camera] += int(verdict.anomalous)
                self.drift.observe(frame.camera, self.fleet.engine(frame.camera), verdict.raw_score,
                                   verdict.decided_by)
                self.latency_s.observe(now - frame.wall_time)
            self.batch_sizes.observe(len(frames))
            self._scored_at = time.monotonic()
            self.batches = [*self.batches[-99:], [f.camera for f in frames]]


def _wire_form(max_side: int | None, quality: int | None) -> str:
    size = "full-size frames" if max_side is None else f"frames of at most {max_side} px"
    return f"{size}, {'as read' if quality is None else f'through JPEG q{quality}'}"


def build_worker(cfg: StreamVADConfig, index: int = 0, frames_endpoint: str | None = None) -> Worker:
    """Load the models of worker `index`'s cameras (runtime backbone settings from `cfg.backbone`); the process
    is a serving one from here on (`leave_cores_to_torch`)."""
    leave_cores_to_torch()
    cameras = owned(cfg, index)
    if not cfg.cameras and cfg.model_dir is None:
        raise ConfigError("model_dir: serve needs a fitted model directory (run `streamvad fit`)")
    scoring = cfg.served_scoring
    fleet = load_fleet(cfg, cameras, scoring)
    live = cfg.transport.frame_max_side, cfg.transport.jpeg_quality
    for path, engine in fleet.engines.items():
        fitted = engine.info.frame_max_side, engine.info.jpeg_quality
        if live != fitted:
            log.warning("transport: readers send %s but model %s was fitted on %s; its scores will drift from the "
                        "calibration (set transport.frame_max_side and jpeg_quality as at fit time, or refit)",
                        _wire_form(*live), path, _wire_form(*fitted))
    _check_motion_rate(cameras, fleet)
    log.info("worker-%d: %d camera(s), %d model(s) loaded (%.0f MB)", index, len(cameras), len(fleet.engines),
             sum(fleet.model_bytes().values()) / 2**20)
    masks = {c.id: c.mask for c in cameras if c.mask}
    watcher = ModelWatcher(cfg, cameras, fleet, scoring, cfg.worker.model_poll_s)
    return Worker(fleet, cfg.transport, cfg.worker, frames_endpoint=frames_endpoint, masks=masks,
                  name=f"worker-{index}", drain_timeout_s=cfg.serve.drain_timeout_s, tamper=cfg.tamper,
                  watcher=watcher, drift=cfg.drift,
                  pictures=PicturePolicy(cfg.events, {c.id: c.privacy for c in cameras}))


def _check_motion_rate(cameras: Sequence[CameraConfig], fleet: Fleet) -> None:
    """Motion is measured between consecutive sampled frames: speeds are per second, but how far things
    move between two frames (and so what frame differencing and flow see) depends on the rate. A camera
    sampled at another rate than its model's footage is refused rather than scored on a drifted scale."""
    for camera in cameras:
        engine = fleet.engine(camera.id)
        if engine is None or engine.tracker is None or engine.info.sample_fps is None:
            continue
        fitted = engine.info.sample_fps
        if abs(camera.fps - fitted) > 1e-6:
            raise ConfigError(f"cameras.{camera.id}.fps: {camera.fps:g}, but model {fleet.cameras[camera.id]} learnt "
                              f"motion at {fitted:g} fps; sample the camera at {fitted:g} fps, refit at "
                              f"{camera.fps:g}, or set scoring.motion: appearance")


def worker_main(cfg: StreamVADConfig, index: int, frames_endpoint: str, log_level: int) -> None:
    """Process entry point: load the model, serve until SIGTERM, drain, exit 0."""
    stop = threading.Event()
    setup_child(stop, log_level)
    security.configure(cfg.transport)
    name = f"worker-{index}"
    holder: dict[str, Worker] = {}

    def snapshot() -> dict[str, Any]:
        return holder["w"].stats() if "w" in holder else {"state": "loading"}

    reporter = StatusReporter(cfg.transport.status, name, "worker", snapshot, cfg.serve.status_interval_s).start()
    try:
        holder["w"] = build_worker(cfg, index, frames_endpoint)
        holder["w"].run(stop)
    finally:
        reporter.close()
