"""Live throughput: K cameras as real reader processes over real ZeroMQ into one worker.

For each backbone a small normality model is fitted on synthetic normal footage, then K readers
play looped synthetic clips at 4 fps in real time (as cameras would) into one worker, and the
verdicts are collected on a SUB socket. Reported per (model, K): frames/s scored, p50/p99
frame->verdict latency (reader wall time to verdict received) and frames dropped under the live
"drop" policy. The worker's capacity comes from an unpaced run (readers push as fast as they can,
policy "block"); capacity / 4 fps is the number of cameras one worker sustains.

"vit-s", "vit-b" and "vit-l" are DINOv2 ViT/14-sized networks (hidden 384/768/1024, 12/12/24 layers,
6/12/16 heads, 224x224 -> 16x16 patches) with random weights, saved to a temp dir and loaded through
the real Hugging Face backbone code: the compute is the real network's, only the weights (unreachable
offline) differ. On a GPU, `dtype` bfloat16 runs the backbone in bf16 and the scorer's all-patch
nearest-neighbour matmuls run on the same device; `train_seconds` sets how much normal footage the
model holds (600 s at 4 fps is about the study's 2,500 training frames, so the scoring cost is real).
`make bench-gpu` is the GPU configuration: ViT-L, bf16, up to 250 cameras.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamvad import security
from streamvad.bench import environment
from streamvad.config import (
    BackboneConfig,
    CameraConfig,
    CurveConfig,
    NormalityConfig,
    StreamVADConfig,
    TransportConfig,
    WorkerConfig,
)
from streamvad.datasets.synthetic import make_scene
from streamvad.errors import ConfigError
from streamvad.security import ALLOWED, generate_keys
from streamvad.transport import FramePuller, VerdictInbox

log = logging.getLogger(__name__)

CAMERA_FPS = 4.0
_CLIP_FPS = 10.0
_CLIP_SIZE = (120, 160)
PLACE = 0  # synthetic clips of one camera share this background seed


def free_tcp_endpoint() -> str:
    """A tcp://127.0.0.1:PORT endpoint on a port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def save_random_dinov2(out: Path, *, hidden: int = 384, layers: int = 12, heads: int = 6, patch: int = 14,
                       image: int = 224, seed: int = 0) -> Path:
    """A DINOv2 of the given shape with random weights, saved where `BackboneConfig.model` can load it."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=4 * hidden, patch_size=patch, image_size=image)
    Dinov2Model(cfg).eval().save_pretrained(out)
    return out


VIT_SHAPES = {"vit-s": (384, 12, 6), "vit-b": (768, 12, 12), "vit-l": (1024, 24, 16)}  # hidden, layers, heads
MODELS = ("efficientnet-lite0", "efficientnet-lite0-ms", *VIT_SHAPES)
# runtime name -> (backbone.runtime, backbone.precision)
RUNTIMES = {"torch": ("torch", "fp32"), "openvino": ("openvino", "fp32"), "openvino-int8": ("openvino", "int8")}
CURVE_PAIRS = 3  # plain/CURVE capacity pairs; the ratio is of the medians (one run varies by ~10% on 2 cores)


def backbone_for(name: str, workdir: Path, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
                 image_size: tuple[int, int] = (224, 224), runtime: str = "torch",
                 calibration: Path | None = None) -> BackboneConfig:
    """The benchmark's backbones by name: EfficientNet-Lite0 (real weights; "-ms" the multi-scale features of
    configs/ped2.yaml) or a DINOv2 size (random), on a runtime of RUNTIMES (INT8 calibrated on `calibration`)."""
    ran, precision = RUNTIMES[runtime]
    common: dict[str, Any] = {"image_size": image_size, "device": device, "dtype": dtype, "batch_size": batch_size,
                              "runtime": ran, "precision": precision, "cache_dir": workdir / "openvino",
                              "calibration": calibration if precision == "int8" else None}
    if name.startswith("efficientnet-lite0"):
        return BackboneConfig(name=name, **common)
    if name in VIT_SHAPES:
        hidden, layers, heads = VIT_SHAPES[name]
        model = save_random_dinov2(workdir / name, hidden=hidden, layers=layers, heads=heads)
        return BackboneConfig(name="dinov2", model=str(model), **common)
    raise ValueError(f"unknown benchmark model {name!r}; expected one of {', '.join(MODELS)}")


def fit_small_model(backbone: BackboneConfig, workdir: Path, *, seconds: float = 20.0, seed: int = 1,
                    size: tuple[int, int] = _CLIP_SIZE, holdout: float = 0.25, place_seed: int = PLACE,
                    tag: str = "") -> Path:
    """A model fitted on one synthetic normal clip of the scene laid out by `place_seed` (the clip's tail
    calibrates thresholds), small k range, no HDBSCAN."""
    from streamvad.offline.pipeline import clips_from_paths, fit

    clip = make_scene(workdir / "normal", seconds=seconds, fps=_CLIP_FPS, size=size, seed=seed,
                      place_seed=place_seed, name="normal")
    cfg = StreamVADConfig(backbone=backbone, normality=NormalityConfig(
        k_min=2, k_max=4, k_candidates=2, silhouette_sample=100, hdbscan="none", chroma=False,
        holdout_fraction=holdout))
    out = workdir / f"model-{backbone.name}{tag}"
    fit(cfg, clips_from_paths([clip.path]), out, sample_fps=CAMERA_FPS, progress=False)
    return out


def frames_of(clip: Path, out: Path) -> Path:
    """The clip's frames as JPEGs in `out` (INT8 calibration reads a folder of normal frames)."""
    from PIL import Image

    from streamvad.sources.video import iter_video

    out.mkdir(parents=True, exist_ok=True)
    for frame in iter_video(clip, "calibration", sample_fps=CAMERA_FPS):
        Image.fromarray(frame.image).save(out / f"{frame.index:06d}.jpg", quality=90)
    return out


def decode_ms(clip: Path, image_size: tuple[int, int], repeat: int = 5) -> float:
    """A worker's JPEG decode of one frame at the backbone's input size (the wire's quality), in ms."""
    import cv2

    from streamvad.sources.video import iter_video
    from streamvad.transport import decode_frame, encode_frame
    from streamvad.types import Frame

    frames = [encode_frame(Frame("bench", f.index, f.pts, 0.0, cv2.resize(f.image, image_size[::-1])))
              for f in iter_video(clip, "bench", sample_fps=CAMERA_FPS)]
    start = time.perf_counter()
    for _ in range(repeat):
        for parts in frames:
            decode_frame(parts)
    return 1000 * (time.perf_counter() - start) / (repeat * len(frames))


def _run_worker(cfg: StreamVADConfig, endpoint: str, stop: Any, ready: Any) -> None:
    from streamvad.live.worker import build_worker

    security.configure(cfg.transport)
    worker = build_worker(cfg, 0, endpoint)
    stop_flag = threading.Event()
    threading.Thread(target=lambda: (stop.wait(), stop_flag.set()), daemon=True).start()
    threading.Thread(target=lambda: (worker.ready.wait(), ready.set()), daemon=True).start()
    worker.run(stop_flag)


def _run_reader(camera: CameraConfig, transport: TransportConfig, status: str, stop: Any) -> None:
    from streamvad.live.reader import run_reader

    security.configure(transport)
    stop_flag = threading.Event()
    threading.Thread(target=lambda: (stop.wait(), stop_flag.set()), daemon=True).start()
    run_reader(camera, transport, status_endpoint=status, stop=stop_flag)


def _dropped(status: FramePuller) -> int:
    """Frames the readers dropped, from their last status reports."""
    last: dict[str, int] = {}
    while (msg := status.recv(300)) is not None:
        last[msg.camera] = int(msg.header.get("frames_dropped") or 0)
    return sum(last.values())


def measure(models: Sequence[Path], backbone: BackboneConfig, clip: Path, cameras: int, seconds: float, *,
            paced: bool, max_batch: int = 16, curve: Path | None = None) -> dict[str, Any]:
    """One run: `cameras` reader processes over one worker process for `seconds` of verdicts; camera i is
    served against models[i % len(models)] (one model: every camera shares it). With `curve` (a keys
    directory), every tcp:// hop is on CURVE, as a site's is."""
    ctx = mp.get_context("spawn")
    transport = TransportConfig(frames=free_tcp_endpoint(), verdicts=free_tcp_endpoint(),
                                policy="drop" if paced else "block", hwm=8,
                                curve=None if curve is None else CurveConfig(keys=curve), insecure=curve is None)
    security.configure(transport)
    cams = [CameraConfig(id=f"cam{i}", url=str(clip), fps=CAMERA_FPS, loop=True, realtime=paced,
                         model=models[i % len(models)]) for i in range(cameras)]
    cfg = StreamVADConfig(cameras=cams, backbone=backbone, transport=transport,
                          worker=WorkerConfig(max_batch=max_batch))
    sub = VerdictInbox(transport.verdicts, hwm=100_000, auto_ack=True)
    status = FramePuller(free_tcp_endpoint(), hwm=10_000, bind=True)
    stop, ready = ctx.Event(), ctx.Event()
    worker = ctx.Process(target=_run_worker, args=(cfg, transport.frames, stop, ready), daemon=True)
    worker.start()
    if not ready.wait(600):
        raise RuntimeError("benchmark worker did not start")
    readers = [ctx.Process(target=_run_reader, args=(c, transport, status.endpoint, stop), daemon=True) for c in cams]
    for r in readers:
        r.start()
    latencies: list[float] = []
    started: set[str] = set()
    start_deadline = time.monotonic() + 300
    while len(started) < cameras and time.monotonic() < start_deadline:  # reader processes take a while
        msg = sub.recv_message(200)
        if msg is not None and msg.type == "verdict":
            started.add(msg.camera)
    measure_until = time.monotonic() + 1.0 + seconds  # 1 s more for the last reader's first batches
    while time.monotonic() < measure_until:
        msg = sub.recv_message(200)
        if msg is not None and msg.type == "verdict" and measure_until - time.monotonic() <= seconds:
            latencies.append(time.time() - float(msg.header["wall_time"]))
    stop.set()
    deadline = time.monotonic() + 15
    while any(p.is_alive() for p in [*readers, worker]) and time.monotonic() < deadline:
        sub.recv_message(50)  # acknowledges what the stopping worker still sends, so it need not wait for acks
    for p in [*readers, worker]:
        if p.is_alive():
            p.kill()
    sub.close()
    dropped = _dropped(status)
    status.close()
    security.configure(None)
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    return {"cameras": cameras, "paced": paced, "seconds": seconds, "frames": len(latencies),
            "frames_per_s": round(len(latencies) / seconds, 2),
            "offered_fps": cameras * CAMERA_FPS if paced else None, "dropped": dropped,
            "latency_p50_s": round(float(np.percentile(lat, 50)), 4),
            "latency_p99_s": round(float(np.percentile(lat, 99)), 4)}


def run_throughput_bench(cameras: list[int], seconds: float, models: list[str], *, device: str = "auto",
                         dtype: str = "auto", max_batch: int = 16, capacity_readers: int | None = None,
                         train_seconds: float = 20.0, with_curve: bool = False, runtimes: Sequence[str] = ("torch",),
                         image_size: tuple[int, int] = (224, 224)) -> dict[str, Any]:
    """Figures per model and runtime: an unpaced capacity run, then one paced run per camera count.

    The capacity run uses `capacity_readers` unpaced readers (default: the smallest camera count); on a
    GPU one reader cannot feed the worker, so give several. `with_curve` adds CURVE_PAIRS capacity runs without
    and with every tcp:// hop on CURVE (security.py), alternated, and the ratio of their medians. Each runtime
    after the first (RUNTIMES: torch, openvino, openvino-int8) gets its own model, fitted on that runtime, and its
    capacity relative to the first runtime's, measured in the same run.
    """
    unknown = [m for m in models if m not in MODELS] + [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise ConfigError(f"bench throughput: unknown {', '.join(unknown)}; models are {', '.join(MODELS)}, runtimes "
                          f"{', '.join(RUNTIMES)}")
    settings = {"device": device, "dtype": dtype, "max_batch": max_batch, "train_seconds": train_seconds,
                "capacity_readers": capacity_readers or max(1, min(cameras)), "image_size": list(image_size),
                "runtimes": list(runtimes)}
    result: dict[str, Any] = {"environment": environment(), "camera_fps": CAMERA_FPS, "settings": settings,
                              "models": {}}
    with tempfile.TemporaryDirectory(prefix="streamvad-bench-") as tmp:
        work = Path(tmp)
        clip = make_scene(work / "clips", seconds=10, fps=_CLIP_FPS, size=_CLIP_SIZE, seed=7, place_seed=PLACE,
                          name="live").path
        result["jpeg_decode_ms_per_frame"] = round(decode_ms(clip, image_size), 3)
        calibration = frames_of(make_scene(work / "clips", seconds=train_seconds, fps=_CLIP_FPS, size=_CLIP_SIZE,
                                           seed=1, place_seed=PLACE, name="calibration").path, work / "calibration")
        for name in models:
            first: float | None = None
            for runtime in runtimes:
                key = name if runtime == "torch" else f"{name}/{runtime}"
                backbone = backbone_for(name, work, device, dtype, max_batch, image_size, runtime, calibration)
                result["models"][key] = entry = _measure_model(backbone, work, clip, cameras, seconds, settings,
                                                               with_curve, tag=f"-{runtime}")
                first = entry["capacity_frames_per_s"] if first is None else first
                entry["capacity_relative_to_" + runtimes[0]] = round(entry["capacity_frames_per_s"] / max(first, 1e-9),
                                                                     3)
    return result


def _measure_model(backbone: BackboneConfig, work: Path, clip: Path, cameras: list[int], seconds: float,
                   settings: dict[str, Any], with_curve: bool, tag: str) -> dict[str, Any]:
    max_batch = settings["max_batch"]
    log.info("bench %s%s: fitting a model on %.0f s of normal footage", backbone.name, tag, settings["train_seconds"])
    model_dir = fit_small_model(backbone, work, seconds=settings["train_seconds"], tag=tag)
    capacity = measure([model_dir], backbone, clip, settings["capacity_readers"], seconds, paced=False,
                       max_batch=max_batch)
    runs = [measure([model_dir], backbone, clip, k, seconds, paced=True, max_batch=max_batch) for k in cameras]
    entry: dict[str, Any] = {
        "backbone": backbone.model_dump(mode="json"),
        "capacity_frames_per_s": capacity["frames_per_s"],
        "max_cameras_at_4fps": int(capacity["frames_per_s"] // CAMERA_FPS),
        "capacity_run": capacity, "runs": runs,
    }
    if with_curve:  # capacity with every hop on CURVE and without, alternated so drift hits both alike
        keys = generate_keys(work / "keys")[ALLOWED].parent
        pairs = [[measure([model_dir], backbone, clip, settings["capacity_readers"], seconds, paced=False,
                          max_batch=max_batch, curve=k) for k in (None, keys)] for _ in range(CURVE_PAIRS)]
        plain = [p[0]["frames_per_s"] for p in pairs]
        secure = [p[1]["frames_per_s"] for p in pairs]
        entry["curve"] = {"plain_frames_per_s": plain, "curve_frames_per_s": secure,
                          "capacity_ratio": round(float(np.median(secure)) / max(float(np.median(plain)), 1e-9), 3)}
    return entry
