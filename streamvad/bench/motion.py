"""`streamvad bench motion`: what the motion part adds per frame and to a fit, on one CPU thread.

Frames of the synthetic walkway at the Ped2 benchmark's input (240x352 on the 15x22 patch grid), as a
worker sees them: the tracker's grey conversion, differencing and optical flow, then the model's cell
scores and frame score. CPU time (process time) is reported besides wall time, since a box's camera
count is set by CPU per frame, not by how long one frame waited.
"""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np

from streamvad.bench import environment
from streamvad.config import MotionConfig
from streamvad.datasets.synthetic import Scene
from streamvad.motion import MotionModel, MotionTracker
from streamvad.motion.model import calibrate_motion
from streamvad.types import Frame, MotionField


def _frames(seconds: float, fps: float, seed: int) -> list[Frame]:
    scene = Scene(seconds=seconds, fps=10.0, size=(240, 360), anomalies=(), seed=seed, place_seed=0)
    step = max(1, round(10.0 / fps))
    return [Frame("bench", i, pts=k / 10.0, wall_time=0.0, image=scene.render(k)[0])
            for i, k in enumerate(range(0, scene.frames, step))]


def _timed(fn: Any) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def run_motion_bench(*, seconds: float = 60.0, fps: float = 4.0, grid: tuple[int, int] = (15, 22),
                     batch: int = 16) -> dict[str, Any]:
    cv2.setNumThreads(1)
    cfg = MotionConfig()
    train, test = _frames(seconds, fps, seed=1), _frames(seconds, fps, seed=2)
    tracker = MotionTracker(grid, cfg)
    fields = [tracker.observe(train[i:i + batch]) for i in range(0, len(train), batch)]
    field = MotionField.concat(fields)
    clips = np.arange(len(train)) * 8 // len(train)  # eight pseudo-clips for the out-of-fold calibration
    model, fit_wall, fit_cpu = _timed(lambda: MotionModel.fit(field, grid, cfg))
    pts = np.arange(len(train)) / fps
    (threshold, _, _), cal_wall, cal_cpu = _timed(lambda: calibrate_motion(field, clips, pts, grid, cfg, 0.99, 4))
    live = MotionTracker(grid, cfg)
    observed, obs_wall, obs_cpu = _timed(lambda: [live.observe(test[i:i + batch]) for i in range(0, len(test), batch)])
    _, score_wall, score_cpu = _timed(lambda: [model.score(f) for f in observed])
    n = len(test)
    return {
        "benchmark": "motion", "environment": environment(), "opencv": cv2.__version__, "opencv_threads": 1,
        "frames": n, "fps": fps, "grid": list(grid), "image": [240, 360], "batch": batch,
        "memory_velocities_per_cell": int(model.memory.shape[1]), "memory_bytes": int(model.memory.nbytes),
        "threshold": threshold,
        "measure_ms_per_frame": {"wall": 1000 * obs_wall / n, "cpu": 1000 * obs_cpu / n},
        "score_ms_per_frame": {"wall": 1000 * score_wall / n, "cpu": 1000 * score_cpu / n},
        "total_cpu_ms_per_frame": 1000 * (obs_cpu + score_cpu) / n,
        "fit_s": {"train_frames": len(train), "fit_wall": fit_wall, "fit_cpu": fit_cpu,
                  "calibrate_wall": cal_wall, "calibrate_cpu": cal_cpu},
    }
