"""Cell motion between consecutive sampled frames: what share of each cell moved, and how fast which way.

A pixel counts as moving where the blurred grey level changed by more than `diff_threshold`; frame
differencing is crisp and cheap, while dense optical flow (OpenCV's DIS, the fastest dense method it
has) gives the direction and speed, averaged over the moving pixels of the cell only, so a walker that
covers a third of a cell moves the cell at its own speed, not a third of it. Flow runs on the frame
resized to the backbone's patch grid (`cell_px` pixels per cell), so cells are patches and the motion
heatmap lies on the appearance heatmap's grid. Speeds are divided by the frame height and by the pts
step: frame heights per second, the same at any resolution and any sampling rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from streamvad.config import MotionConfig
from streamvad.types import Frame, MotionField

_BLUR = (5, 5)


def _flow_engine() -> cv2.DISOpticalFlow:
    # ULTRAFAST down to half resolution (its default stops at a quarter, where a distant cyclist blurs into
    # the background; full resolution cost 4x as much and validated no better on Ped2): ~2 ms for 240x352
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    dis.setFinestScale(1)
    dis.setPatchStride(4)
    return dis


def grey(image: np.ndarray, grid: tuple[int, int], cell_px: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> grey uint8 [h*cell_px, w*cell_px], blurred for differencing."""
    h, w = grid
    small = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (w * cell_px, h * cell_px),
                       interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small, _BLUR, 0)


def cell_motion(prev: np.ndarray, cur: np.ndarray, dt: float, grid: tuple[int, int], cfg: MotionConfig,
                flow: cv2.DISOpticalFlow | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(moving fraction [N], mean velocity of the moving pixels [N, 2]) between two `grey` frames `dt` s apart."""
    h, w = grid
    c = cfg.cell_px
    moving = (cv2.absdiff(prev, cur) > cfg.diff_threshold).astype(np.float32).reshape(h, c, w, c)
    field = (flow or _flow_engine()).calc(prev, cur, None) / (dt * prev.shape[0])  # frame heights / s
    count = moving.sum((1, 3))
    vel = (field.reshape(h, c, w, c, 2) * moving[..., None]).sum((1, 3)) / np.maximum(count, 1.0)[..., None]
    return (count / (c * c)).reshape(-1).astype(np.float32), vel.reshape(-1, 2).astype(np.float32)


class MotionTracker:
    """Each camera's previous sampled frame, so every new frame's motion can be measured against it.

    Frames must arrive in stream order per camera: replay reads clips in order, and a worker gets them
    in order when it is the camera's only worker (with several, cameras must be pinned to one). A
    camera's first frame, a frame more than `max_gap_s` after the previous one, one whose pts went
    backwards (a restarted stream) or one marked `restart` (a looped file's next pass, a reconnected camera)
    has no motion (`valid` False).
    """

    def __init__(self, grid: tuple[int, int], cfg: MotionConfig) -> None:
        self.grid = grid
        self.cfg = cfg
        self._flow = _flow_engine()
        self._last: dict[str, tuple[float, np.ndarray]] = {}

    def observe(self, frames: Sequence[Frame]) -> MotionField:
        n = self.grid[0] * self.grid[1]
        fraction = np.zeros((len(frames), n), dtype=np.float32)
        velocity = np.zeros((len(frames), n, 2), dtype=np.float32)
        valid = np.zeros(len(frames), dtype=bool)
        for i, frame in enumerate(frames):
            cur = grey(frame.image, self.grid, self.cfg.cell_px)
            last = self._last.get(frame.camera)
            if last is not None and not frame.restart and 0.0 < frame.pts - last[0] <= self.cfg.max_gap_s:
                fraction[i], velocity[i] = cell_motion(last[1], cur, frame.pts - last[0], self.grid, self.cfg,
                                                       self._flow)
                valid[i] = True
            self._last[frame.camera] = (frame.pts, cur)
        return MotionField(fraction, velocity, valid)

    def forget(self, camera: str) -> None:
        """Drop a camera's state (its stream ended), so a restart is not measured against the old stream."""
        self._last.pop(camera, None)
