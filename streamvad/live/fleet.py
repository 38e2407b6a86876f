"""A site of cameras: which worker scores each camera, and each camera against its own model.

Every fixed camera sees its own scene, and a normality model remembers what is normal at each patch
position of one scene, so every camera has its own model (`cameras[].model`, default `model_dir`).
One worker serves many cameras on ONE backbone forward pass per batch: the batch's rows are then
grouped by model and each group is scored in one vectorised call against that model.

With several workers each camera belongs to exactly one of them (`cameras[].worker`, or a stable hash
of its id), its reader sends to that worker only, and a worker loads only its own cameras' models: a
worker's memory grows with its cameras, not with the site. Pinning is also what keeps a camera's
frames in order on one worker, which motion needs (it compares consecutive frames).

A camera whose model directory is empty (a model store with no version yet) or that has no model at
all is `learning`: its frames are not scored and it raises no alerts until a model is fitted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

from streamvad.backbones.base import Backbone
from streamvad.config import CameraConfig, EventsConfig, ScoringConfig, StreamVADConfig
from streamvad.errors import ConfigError, StreamVADError
from streamvad.model_store import ModelStore, version_name
from streamvad.normality.manifest import BACKBONE_KEYS, backbone_differences
from streamvad.scoring.budget import Budget, budget_for
from streamvad.scoring.engine import (
    MODEL_FILE,
    Engine,
    FrameScorer,
    Timings,
    embed_frames,
    fitted_backbone,
    load_engine,
)
from streamvad.scoring.evidence import evidence_of
from streamvad.types import FeatureRequest, Frame, Verdict

log = logging.getLogger(__name__)

LEARNING, SCORING = "learning", "scoring"


def owner(camera: CameraConfig, workers: int) -> int:
    """The worker that scores `camera`: as configured, or a hash of its id that every process (and every
    restart, on any host) computes alike; Python's own hash() is salted per process, so not that."""
    if camera.worker is not None:
        return camera.worker
    return int.from_bytes(hashlib.sha256(camera.id.encode()).digest()[:8], "big") % workers


def owned(cfg: StreamVADConfig, index: int) -> list[CameraConfig]:
    """The cameras worker `index` of `serve.workers` scores."""
    return [c for c in cfg.cameras if owner(c, cfg.serve.workers) == index]


def worker_endpoints(endpoint: str, n: int, field: str = "transport.frames") -> list[str]:
    """Each of `n` workers' endpoint, from the one configured (`field`: the frames readers send, or serve's control
    socket): `{worker}` replaced by the index (one host name per worker, e.g.
    tcp://streamvad-worker-{worker}.streamvad-worker:5555 in Kubernetes), else tcp port + i or ipc path + "-i";
    one worker uses `endpoint` as it is."""
    if "{worker}" in endpoint:
        if not endpoint.startswith("tcp://") or not endpoint.rpartition(":")[2].isdigit():
            raise ConfigError(f"{field}: {endpoint!r} with {{worker}} must be tcp://HOST:PORT")
        return [endpoint.replace("{worker}", str(i)) for i in range(n)]
    if n == 1:
        return [endpoint]
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"{field}: {endpoint!r} needs an explicit port for {n} workers")
        return [f"tcp://{host}:{int(port) + i}" for i in range(n)]
    if endpoint.startswith("ipc://"):
        return [f"{endpoint}-{i}" for i in range(n)]
    raise ConfigError(f"{field}: {endpoint!r} must be tcp:// or ipc:// to run {n} workers")


def bind_endpoint(frames: str, endpoint: str) -> str:
    """What a worker binds for its `endpoint`: with a per-worker host ({worker}) that is a name, the port on
    every interface, since ZeroMQ binds interfaces, not names; an address (127.0.{worker}.1) or an endpoint
    without {worker} is bound as it is."""
    if "{worker}" not in frames:
        return endpoint
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"tcp://*:{port}"
    return endpoint


def camera_endpoint(cfg: StreamVADConfig, camera: CameraConfig, which: Literal["frames", "control"] = "frames") -> str:
    """The camera's owner's endpoint in `transport.<which>`, and no other worker's: where its reader sends frames,
    and where `enroll --serve` asks for it (each `serve --role worker` binds its own control socket; on one host,
    two would otherwise bind one ipc:// file)."""
    endpoints = worker_endpoints(getattr(cfg.transport, which), cfg.serve.workers, f"transport.{which}")
    return endpoints[owner(camera, cfg.serve.workers)]


def model_path(cfg: StreamVADConfig, camera: CameraConfig) -> Path | None:
    """The camera's model directory, or None while it is learning (no model, or a model store with no current
    version yet). The path is one model directory, or a store (streamvad/model_store.py) whose `current`
    version is served.

    A path that does not exist, or a non-empty directory that is neither a model nor a store, is a
    ConfigError naming the camera: a typo must not silently leave a camera unwatched.
    """
    path = camera.model or cfg.model_dir
    field = f"cameras.{camera.id}.model" if camera.model else "model_dir"
    if path is None:
        return None
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{field}: {path} does not exist (camera {camera.id}); fit a model there with "
                          "`streamvad fit --out` or `streamvad enroll`, or create an empty directory to let the "
                          "camera learn")
    store = ModelStore(path)
    try:
        resolved = store.resolve()
    except StreamVADError as err:
        raise ConfigError(f"{field}: {err} (camera {camera.id})") from None
    if resolved is None and not store.is_store():
        raise ConfigError(f"{field}: {path} is neither a StreamVAD model directory (no {MODEL_FILE}) nor a model "
                          f"store (camera {camera.id})")
    return None if resolved is None else resolved[0]


def _describe(identity: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={identity[k]}" for k in BACKBONE_KEYS if k in identity)


def check_models(cfg: StreamVADConfig, cameras: Sequence[CameraConfig]) -> dict[str, Path | None]:
    """Camera id -> model path (None: learning), after checking every model can be served by one worker.

    Reads manifests only (no backbone, no arrays), so `serve` refuses a bad site before it starts any
    process: a missing or corrupt model, or models from different backbones, each one line naming the
    camera, its path and (for a mismatch) both backbones.
    """
    paths: dict[str, Path | None] = {}
    first: tuple[str, Path, dict[str, Any]] | None = None
    for camera in cameras:
        path = paths[camera.id] = model_path(cfg, camera)
        if path is None:
            continue
        try:
            identity = fitted_backbone(path)
        except StreamVADError as err:
            raise type(err)(f"cameras.{camera.id}.model: {err}") from None
        if first is None:
            first = camera.id, path, identity
            continue
        if backbone_differences(identity, first[2]):
            raise ConfigError(
                f"cameras.{camera.id}.model: {path} was fitted on backbone {_describe(identity)}, but camera "
                f"{first[0]}'s model {first[1]} on {_describe(first[2])}; one worker runs one backbone, so refit "
                "one of them (or serve them from separate configs)")
    return paths


class Fleet:
    """The models of one worker's cameras on one shared backbone.

    `engines` maps model directory -> Engine (all built on `backbone`); `cameras` maps camera id -> its
    model directory or None (learning). A camera that is not listed uses `default` (the single-model
    layout of replay and tests); a mask turns a camera's scorer into a masked copy sharing the model.
    """

    def __init__(self, backbone: Backbone | None, engines: Mapping[Path, Engine],
                 cameras: Mapping[str, Path | None], scorers: Mapping[str, FrameScorer] | None = None,
                 default: Path | None = None) -> None:
        self.backbone = backbone
        self.engines = dict(engines)
        self.cameras = dict(cameras)
        self.scorers = dict(scorers or {})
        self.default = default
        self.budgets: dict[str, Budget] = {}  # cameras with an alert budget: its threshold on their current model
        self._budget_of: dict[str, Callable[[Engine], Budget | None]] = {}
        self.request = FeatureRequest()
        for path, engine in self.engines.items():
            try:
                self.request = self.request.union(engine.request)
            except ValueError as err:
                raise ConfigError(f"{path}: its detector needs {err}, which another camera's model also asks "
                                  "for; one forward pass cannot give both") from None
        self.timings = Timings()

    @classmethod
    def single(cls, engine: Engine, scorers: Mapping[str, FrameScorer] | None = None) -> Fleet:
        """Every camera on one engine (replay, benchmarks, the tests' single-model worker)."""
        path = Path(f"<{engine.info.kind}>")
        return cls(engine.backbone, {path: engine}, {}, scorers, default=path)

    def serves(self, camera: str) -> bool:
        """Whether frames of `camera` belong here (a sharded worker drops other workers' cameras)."""
        return camera in self.cameras or self.default is not None

    def engine(self, camera: str) -> Engine | None:
        path = self.cameras.get(camera, self.default)
        return None if path is None else self.engines[path]

    def state(self, camera: str) -> str:
        return LEARNING if self.engine(camera) is None else SCORING

    def score(self, frames: Sequence[Frame]) -> list[Verdict | None]:
        """Verdicts in frame order (None for a learning camera's frame): one forward pass for every scored
        frame, then one scoring call per (model, mask) group of the batch's rows."""
        out: list[Verdict | None] = [None] * len(frames)
        groups: dict[int, tuple[Engine, FrameScorer, list[int]]] = {}
        rows = []
        for i, frame in enumerate(frames):
            engine = self.engine(frame.camera)
            if engine is None:
                continue
            scorer = self.scorers.get(frame.camera, engine.scorer)
            groups.setdefault(id(scorer), (engine, scorer, []))[2].append(len(rows))
            rows.append(i)
        if not rows:
            self.timings = Timings()
            return out
        assert self.backbone is not None  # a fleet with an engine has its backbone
        t0 = time.perf_counter()
        batch = embed_frames(self.backbone, [frames[i] for i in rows], self.request)
        t1 = time.perf_counter()
        for engine, scorer, members in groups.values():
            sub = batch.select(members)
            if engine.tracker is not None:
                sub.motion = engine.tracker.observe([frames[rows[j]] for j in members])
            min_fraction = None if engine.tracker is None else engine.tracker.cfg.min_fraction
            for local, (j, verdict) in enumerate(zip(members, engine.smoother.apply(scorer.score(sub)), strict=True)):
                if (budget := self.budgets.get(frames[rows[j]].camera)) is not None:
                    verdict = budget.apply([verdict])[0]
                verdict.model_version = engine.version
                if verdict.anomalous:
                    verdict.evidence = evidence_of(sub, local, verdict, min_fraction)
                out[rows[j]] = verdict
        self.timings = Timings(t1 - t0, time.perf_counter() - t1, len(rows))
        return out

    def budget_by(self, camera: str, budget_of: Callable[[Engine], Budget | None]) -> None:
        """Give `camera` an alert budget: `budget_of` turns its model into the threshold (again at every swap)."""
        self._budget_of[camera] = budget_of
        self._set_budget(camera)

    def _set_budget(self, camera: str) -> None:
        engine = self.engine(camera)
        budget = None if engine is None or camera not in self._budget_of else self._budget_of[camera](engine)
        if budget is None:
            self.budgets.pop(camera, None)
            return
        self.budgets[camera] = budget
        log.info("%s: alert budget %g false events a day: threshold %.3f (the calibrated one is %.3f)", camera,
                 budget.per_day, budget.threshold, getattr(engine.scorer, "threshold", float("nan")))

    def model_bytes(self) -> dict[str, int]:
        """Bytes of each loaded model's serving arrays, for /metrics."""
        return {str(path): engine.nbytes() for path, engine in self.engines.items()}

    def versions(self) -> dict[str, str]:
        """Camera -> the model version it is scored with (cameras on a versioned store)."""
        return {c: e.version for c in self.cameras if (e := self.engine(c)) is not None and e.version is not None}

    def swap(self, camera: str, path: Path, engine: Engine) -> None:
        """Score `camera` with `engine` (model `path`) from the next batch on; a model no camera uses any more
        is released. The engine must be built on this fleet's backbone (`ModelWatcher` loads it so)."""
        request = self.request.union(engine.request)  # ValueError: the forward pass cannot give both
        if self.backbone is None:
            self.backbone = engine.backbone
        self.request = request
        old = self.cameras.get(camera)
        self.engines[path], self.cameras[camera] = engine, path
        self.scorers.pop(camera, None)
        self._set_budget(camera)
        if old is not None and old not in self.cameras.values():
            del self.engines[old]


class ModelWatcher:
    """Notices when a camera's model store points at another version and loads it off the scoring thread.

    A thread polls each camera's store every `poll_s` (a readlink); a changed model is loaded in that thread
    on the fleet's backbone, and `take()` hands the loaded ones to the worker, which swaps them in between
    batches: no frame of any camera waits for the load, and none is scored twice. A version that fails to
    load is logged once and the camera keeps its model.
    """

    def __init__(self, cfg: StreamVADConfig, cameras: Sequence[CameraConfig], fleet: Fleet,
                 scoring: ScoringConfig | None, poll_s: float) -> None:
        self.cfg, self.cameras, self.fleet, self.scoring, self.poll_s = cfg, list(cameras), fleet, scoring, poll_s
        self._ready: queue.SimpleQueue[tuple[str, Path, Engine]] = queue.SimpleQueue()
        self._wanted = {c.id: fleet.cameras.get(c.id) for c in self.cameras}  # what is loaded, or being swapped in
        self._failed: set[Path] = set()
        self._net = fleet.backbone  # every model on one backbone, the first loaded one's if all were learning
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamvad-models", daemon=True)

    def start(self) -> ModelWatcher:
        if self.cameras:
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            for camera in self.cameras:
                self.check(camera)

    def check(self, camera: CameraConfig) -> None:
        """Load the camera's current model if it is not the one served or being swapped in."""
        try:
            path = model_path(self.cfg, camera)
        except StreamVADError as err:
            log.warning("%s: model store unreadable, keeping the current model: %s", camera.id, err)
            return
        if path is None or path == self._wanted.get(camera.id) or path in self._failed:
            return
        try:
            engine = load_engine(path, scoring=self.scoring, backbone=self.cfg.backbone, net=self._net)
        except (StreamVADError, OSError, ValueError) as err:
            self._failed.add(path)
            log.error("%s: cannot load model %s, keeping the current one: %s", camera.id, path, err)
            return
        engine.version = version_name(path)
        self._net = engine.backbone
        self._wanted[camera.id] = path
        self._ready.put((camera.id, path, engine))

    def take(self) -> list[tuple[str, Path, Engine]]:
        """The models loaded since the last call, to swap in now."""
        out = []
        while not self._ready.empty():
            out.append(self._ready.get())
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30.0)


def load_fleet(cfg: StreamVADConfig, cameras: Sequence[CameraConfig],
               scoring: ScoringConfig | None = None) -> Fleet:
    """Load the models of `cameras` once each (cameras may share one), all on the first model's backbone.

    A config that lists no cameras (a worker fed by tools or tests) serves `model_dir` to any camera.
    """
    paths = check_models(cfg, cameras)
    default = Path(cfg.model_dir) if not cfg.cameras and cfg.model_dir is not None else None
    wanted = [(f"cameras.{c.id}.model", paths[c.id]) for c in cameras] + [("model_dir", default)]
    engines: dict[Path, Engine] = {}
    net: Backbone | None = None
    for field, path in wanted:
        if path is None or path in engines:
            continue
        try:
            engines[path] = load_engine(path, scoring=scoring, backbone=cfg.backbone, net=net)
        except StreamVADError as err:
            raise type(err)(f"{field}: {err}") from None
        engines[path].version = version_name(path)
        net = engines[path].backbone
    learning = sorted(c for c, p in paths.items() if p is None)
    if learning:
        log.info("learning (not scored until a model is fitted): %s", ", ".join(learning))
    fleet = Fleet(net, engines, paths, default=default)
    for camera in cameras:
        per_day = camera.false_alerts_per_day or cfg.events.false_alerts_per_day
        if per_day is not None:
            fleet.budget_by(camera.id, partial(_budget, per_day=per_day, fps=camera.fps, events=cfg.events,
                                               field=f"cameras.{camera.id}"))
    return fleet


def _budget(engine: Engine, *, per_day: float, fps: float, events: EventsConfig, field: str) -> Budget | None:
    try:
        return budget_for(engine.info.fit, per_day, fps, events)
    except ConfigError as err:
        raise ConfigError(f"{field}.{err}") from None
