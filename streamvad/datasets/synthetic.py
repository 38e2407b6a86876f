"""A synthetic fixed camera for the demo and the tests: a walkway across a lawn, people walking.

Normal: walkers of varied colours and speeds stay on the grey walkway and keep to their lane
(the upper half of the walkway walks left, the lower half right). Anomalous: a person crossing the
lawn, a red cart on the walkway, a cyclist (a walker's look at three times a walker's speed) and a
walker going against the flow of its lane. All are at least the size of a walker, so they are
visible yet not trivial: the lawn walker, the cyclist and the wrong-way walker look exactly like
normal ones; only *where*, *how fast* or *which way* they go is wrong. Everything is drawn with
numpy from a seed, so a clip is reproducible, needs no download, and its ground truth (labels and
boxes) is exact.

Randomness is split on purpose: the background comes from `place_seed` (one camera, one place),
the walkers from `seed`, the sensor noise from (seed, frame number), and each anomaly from its own
spec, so adding an anomaly changes the pixels inside its box and nothing else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image
from scipy.ndimage import uniform_filter

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), pixels

_WALKWAY = (0.34, 0.68)  # the walkway's top and bottom as fractions of the height: two lanes of a walker's height
_FIGURE_W, _FIGURE_H = 12, 30  # a walker's bounding box at the reference height of 240 px
_CART_W, _CART_H = 34, 24
_SHIRTS = ((40, 40, 60), (30, 60, 110), (70, 50, 30), (20, 20, 20), (90, 90, 100), (40, 80, 60), (110, 100, 40))
_SKIN = (205, 170, 140)
_RED = (200, 30, 25)
_PACE = 16.0  # a walker's typical speed, px/s at the reference height (walkers draw 12-20, about 1.4 m/s)


@dataclass(frozen=True)
class AnomalySpec:
    """An anomaly visible from `start_s` (inclusive) to `end_s` (exclusive).

    "lawn_walker": a person walking across the lawn, off the walkway.
    "object": a red cart standing (or, with `speed` > 0, rolling) on the walkway.
    "cyclist": a walker entering its lane at three times a walker's typical speed, going the lane's way.
    "wrong_way": a walker at a walker's pace going against its lane.
    `seed` varies its position, direction and colours.
    """

    kind: Literal["lawn_walker", "object", "cyclist", "wrong_way"]
    start_s: float
    end_s: float
    seed: int = 0
    speed: float = 0.0  # px/s for "object"; the lawn walker walks at a walker's pace

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True)
class Dusk:
    """Daylight fading from `start_s` to `end_s` to `level` of it, turning blue as it goes (street lights, a
    camera's night mode), and staying so: normal footage under two light regimes and the change between."""

    start_s: float
    end_s: float
    level: float = 0.4
    tint: tuple[float, float, float] = (0.75, 0.9, 1.25)  # per RGB channel, reached at the end

    def gain(self, t: float) -> np.ndarray:
        done = min(1.0, max(0.0, (t - self.start_s) / max(1e-6, self.end_s - self.start_s)))
        return (1.0 - done * (1.0 - self.level)) * (1.0 + done * (np.asarray(self.tint) - 1.0))


@dataclass
class SceneClip:
    """A rendered clip and its exact ground truth, per native frame."""

    path: Path  # the .mp4, or the folder of PNG frames
    labels: list[int]  # 1 where an anomaly is visible
    fps: float
    boxes: list[list[Box]] = field(default_factory=list)  # anomaly boxes per frame

    def masks(self, size: tuple[int, int]) -> np.ndarray:
        """Boxes as boolean pixel masks [T, H, W], for localisation metrics."""
        out = np.zeros((len(self.boxes), *size), dtype=bool)
        for i, frame_boxes in enumerate(self.boxes):
            for x0, y0, x1, y1 in frame_boxes:
                out[i, y0:y1, x0:x1] = True
        return out


@dataclass(frozen=True)
class _Walker:
    t0: float  # when it enters
    x0: float
    direction: int  # +1 right, -1 left
    speed: float  # px/s
    y: int  # top of the figure
    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]

    def x(self, t: float) -> float:
        return self.x0 + self.direction * self.speed * (t - self.t0)


class Scene:
    """The scene of one clip: render(i) draws native frame i, boxes(i) says where anomalies are."""

    def __init__(self, *, seconds: float, fps: float, size: tuple[int, int], anomalies: Sequence[AnomalySpec],
                 seed: int, place_seed: int | None = None, dusk: Dusk | None = None) -> None:
        self.fps = fps
        self.dusk = dusk
        self.size = size
        self.frames = round(seconds * fps)
        self.seed = seed
        self.anomalies = list(anomalies)
        self.scale = size[0] / 240.0
        h = size[0]
        self.walkway = (int(_WALKWAY[0] * h), int(_WALKWAY[1] * h))
        self.background = self._background(np.random.default_rng([seed if place_seed is None else place_seed, 1]))
        self.walkers = self._walkers(np.random.default_rng([seed, 2]), seconds)

    # --- layout -------------------------------------------------------------------------------------
    def _px(self, value: float) -> int:
        return max(1, round(value * self.scale))

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        h, w = self.size
        lawn = np.array([70.0, 135.0, 55.0]) + rng.normal(0.0, 22.0, (h, w, 1)) * np.array([0.6, 1.0, 0.5])
        lawn = uniform_filter(lawn, size=(3, 3, 1))
        top, bottom = self.walkway
        path = np.array([150.0, 148.0, 142.0]) + rng.normal(0.0, 6.0, (bottom - top, w, 1))
        lawn[top:bottom] = path
        lawn[top:top + 2] = lawn[bottom - 2:bottom] = (105.0, 100.0, 95.0)  # kerbs
        return np.clip(lawn, 0, 255).astype(np.uint8)

    def _walkers(self, rng: np.random.Generator, seconds: float) -> list[_Walker]:
        """Arrivals over the clip (a few already present at t=0), each crossing the frame once."""
        w = self.size[1]
        walkers: list[_Walker] = []
        t = -float(rng.uniform(4.0, 8.0))  # start in the past so the first frame is not empty
        while t < seconds:
            speed = float(rng.uniform(0.75, 1.25)) * _PACE * self.scale
            y = self._lane_y(rng)
            direction = self._lane_direction(y)
            x0 = -self._px(_FIGURE_W) if direction > 0 else float(w)
            shirt = _SHIRTS[int(rng.integers(len(_SHIRTS)))]
            trousers = _SHIRTS[int(rng.integers(len(_SHIRTS)))]
            walkers.append(_Walker(t, x0, direction, speed, y, shirt, trousers))
            t += float(rng.exponential(3.0)) + 0.8
        return walkers

    def _lane_y(self, rng: np.random.Generator) -> int:
        """The top of a figure that walks wholly inside one lane (upper or lower half of the walkway)."""
        top, bottom = self.walkway
        mid, fig_h = (top + bottom) // 2, self._px(_FIGURE_H)
        lo, hi = (top + 2, mid - fig_h) if rng.random() < 0.5 else (mid, bottom - fig_h - 2)
        return int(rng.integers(lo, max(lo + 1, hi + 1)))

    def _lane_direction(self, y: int) -> int:
        """+1 (right) for a figure whose middle is in the lower half of the walkway, -1 (left) above."""
        top, bottom = self.walkway
        return 1 if y + self._px(_FIGURE_H) / 2 >= (top + bottom) / 2 else -1

    # --- drawing ------------------------------------------------------------------------------------
    def _figure(self, img: np.ndarray, x: float, y: int, shirt: tuple[int, int, int],
                trousers: tuple[int, int, int]) -> Box | None:
        """Draws a person with its top-left at (x, y); returns its clipped box, None if off-frame."""
        fw, fh = self._px(_FIGURE_W), self._px(_FIGURE_H)
        x0 = round(x)
        head = self._px(4)
        body_top, legs_top = y + 2 * head, y + 2 * head + self._px(12)
        stride = (x0 // self._px(5)) % 2  # legs alternate as the figure moves
        cx, cy = x0 + fw / 2, y + head
        yy, xx = np.ogrid[y:y + 2 * head, x0:x0 + fw]
        _paint(img, (xx - cx) ** 2 + (yy - cy) ** 2 <= head ** 2, x0, y, _SKIN)
        _fill(img, (x0, body_top, x0 + fw, legs_top), shirt)
        leg = max(1, fw // 3)
        left = x0 + (1 if stride else 0)
        right = x0 + fw - leg - (0 if stride else 1)
        _fill(img, (left, legs_top, left + leg, y + fh), trousers)
        _fill(img, (right, legs_top, right + leg, y + fh), trousers)
        return _clip((x0, y, x0 + fw, y + fh), self.size)

    def _cart(self, img: np.ndarray, x: float, y: int) -> Box | None:
        cw, ch = self._px(_CART_W), self._px(_CART_H)
        x0 = round(x)
        wheel = self._px(4)
        _fill(img, (x0, y, x0 + cw, y + ch - wheel), _RED)
        _fill(img, (x0 + 2, y + 2, x0 + cw - 2, y + 4), (235, 90, 80))  # rim highlight
        _fill(img, (x0 + wheel, y + ch - wheel, x0 + 2 * wheel, y + ch), (25, 25, 25))
        _fill(img, (x0 + cw - 2 * wheel, y + ch - wheel, x0 + cw - wheel, y + ch), (25, 25, 25))
        return _clip((x0, y, x0 + cw, y + ch), self.size)

    def _draw_anomaly(self, img: np.ndarray, spec: AnomalySpec, t: float) -> Box | None:
        h, w = self.size
        rng = np.random.default_rng([spec.seed, 7919])
        top, bottom = self.walkway
        elapsed = t - spec.start_s
        if spec.kind == "lawn_walker":
            fig_w, fig_h = self._px(_FIGURE_W), self._px(_FIGURE_H)
            above = rng.random() < 0.5
            y = int(rng.integers(4, max(5, top - fig_h - 4))) if above \
                else int(rng.integers(bottom + 4, max(bottom + 5, h - fig_h - 4)))
            span = max(1e-6, spec.end_s - spec.start_s)
            speed = min(_PACE * self.scale, (w - fig_w - 8) / span)
            direction = 1 if rng.random() < 0.5 else -1
            start = 4 + float(rng.uniform(0, max(0.0, w - fig_w - 8 - speed * span)))
            x = start + speed * elapsed if direction > 0 else w - fig_w - start - speed * elapsed
            shirt = _SHIRTS[int(rng.integers(len(_SHIRTS)))]
            return self._figure(img, x, y, shirt, _SHIRTS[int(rng.integers(len(_SHIRTS)))])
        if spec.kind in ("cyclist", "wrong_way"):
            fig_w = self._px(_FIGURE_W)
            y = self._lane_y(rng)
            lane = self._lane_direction(y)
            shirt = _SHIRTS[int(rng.integers(len(_SHIRTS)))]
            trousers = _SHIRTS[int(rng.integers(len(_SHIRTS)))]
            if spec.kind == "cyclist":  # enters at the lane's start edge
                ride = 3 * _PACE * self.scale * elapsed
                x = -fig_w + ride if lane > 0 else w - ride
            else:  # starts inside the frame so it is seen for the whole window
                start = float(rng.uniform(0.55, 0.8)) * w
                step = _PACE * self.scale * elapsed
                x = start - step if lane > 0 else w - start + step
            return self._figure(img, x, y, shirt, trousers)
        if spec.kind == "object":
            ch = self._px(_CART_H)
            y = int(rng.integers(top + 2, max(top + 3, bottom - ch - 2)))
            x = float(rng.uniform(0.15, 0.7)) * w + spec.speed * self.scale * elapsed
            return self._cart(img, x, y)
        raise ValueError(f"AnomalySpec.kind: expected lawn_walker, object, cyclist or wrong_way, got {spec.kind!r}")

    def render(self, i: int) -> tuple[np.ndarray, list[Box]]:
        """Native frame i as RGB uint8 [H, W, 3], and the boxes of the anomalies visible in it."""
        t = i / self.fps
        img = self.background.copy()
        for walker in self.walkers:
            x = walker.x(t)
            if -self._px(_FIGURE_W) < x < self.size[1]:
                self._figure(img, x, walker.y, walker.shirt, walker.trousers)
        boxes = [box for spec in self.anomalies if spec.active(t)
                 if (box := self._draw_anomaly(img, spec, t)) is not None]
        light = 1.0 + 0.03 * math.sin(2 * math.pi * t / 17.0)  # slow daylight drift
        if self.dusk is not None:
            light = light * self.dusk.gain(t)
        noise = np.random.default_rng([self.seed, i, 104729]).normal(0.0, 2.0, img.shape)
        return np.clip(img * light + noise, 0, 255).astype(np.uint8), boxes


def _clip(box: Box, size: tuple[int, int]) -> Box | None:
    x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(size[1], box[2]), min(size[0], box[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _fill(img: np.ndarray, box: Box, colour: tuple[int, int, int]) -> None:
    clipped = _clip(box, img.shape[:2])
    if clipped is not None:
        x0, y0, x1, y1 = clipped
        img[y0:y1, x0:x1] = colour


def _paint(img: np.ndarray, mask: np.ndarray, x0: int, y0: int, colour: tuple[int, int, int]) -> None:
    """Paints `mask` (placed with its top-left at x0, y0) onto img, clipped to the image."""
    h, w = img.shape[:2]
    ys, xs = np.nonzero(mask)
    ys, xs = ys + y0, xs + x0
    keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    img[ys[keep], xs[keep]] = colour


def _write_mp4(path: Path, frames: Sequence[np.ndarray] | np.ndarray, fps: float) -> None:
    """H.264 (MPEG-4 Part 2 where libx264 is missing), yuv420p, no B-frames, a keyframe every 2 s
    so that an RTSP client joining mid-stream gets a picture quickly."""
    rate = Fraction(fps).limit_denominator(1001)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = max(1, round(2 * fps))
        stream.codec_context.max_b_frames = 0
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "20"}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def make_scene(out_dir: Path, *, seconds: float, fps: float = 10, size: tuple[int, int] = (240, 360),
               anomalies: Sequence[AnomalySpec] = (), seed: int = 0, fmt: Literal["mp4", "frames"] = "mp4",
               name: str = "scene", place_seed: int | None = None, dusk: Dusk | None = None) -> SceneClip:
    """Renders a clip to out_dir/<name>.mp4 (or out_dir/<name>/000000.png ...) with its ground truth."""
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"make_scene: size {size} must be even for yuv420p video")
    scene = Scene(seconds=seconds, fps=fps, size=size, anomalies=anomalies, seed=seed, place_seed=place_seed,
                  dusk=dusk)
    rendered = [scene.render(i) for i in range(scene.frames)]
    images = [img for img, _ in rendered]
    boxes = [b for _, b in rendered]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":
        path = out_dir / f"{name}.mp4"
        _write_mp4(path, images, fps)
    elif fmt == "frames":
        path = out_dir / name
        path.mkdir(exist_ok=True)
        for i, img in enumerate(images):
            Image.fromarray(img).save(path / f"{i:06d}.png")
    else:
        raise ValueError(f"make_scene: fmt must be 'mp4' or 'frames', got {fmt!r}")
    return SceneClip(path=path, labels=[int(bool(b)) for b in boxes], fps=float(fps), boxes=boxes)


DEMO_KINDS: tuple[Literal["lawn_walker", "object", "cyclist", "wrong_way"], ...] = (
    "lawn_walker", "object", "cyclist", "wrong_way")


def demo_anomalies(seconds: float, clip: int) -> list[AnomalySpec]:
    """One of each anomaly per test clip, each 6% of the clip long and a quarter of the clip apart (so that
    at the demo's 80 s the events' cooldown never hides one), in an order and at places that vary with the clip."""
    kinds = DEMO_KINDS[clip % 4:] + DEMO_KINDS[:clip % 4]
    return [AnomalySpec(kind, (0.1 + 0.25 * i) * seconds, (0.16 + 0.25 * i) * seconds, seed=4 * clip + i)
            for i, kind in enumerate(kinds)]


def make_demo_dataset(root: Path, *, train_clips: int = 5, test_clips: int = 2, seconds: float = 30.0,
                      test_seconds: float = 80.0, seed: int = 0, fps: float = 10,
                      size: tuple[int, int] = (240, 360)) -> Path:
    """Writes the `folder` dataset layout the demo fits and replays.

    root/train/normal/clip_NN.mp4 (normal only); root/test/clip_NN.mp4 with clip_NN.labels.json
    (0/1 per native frame) and clip_NN.boxes.json (anomaly boxes per native frame). Every clip
    shows the same place (same background) with different walkers, as one camera would.
    """
    root = Path(root)
    train_dir, test_dir = root / "train" / "normal", root / "test"
    for k in range(train_clips):
        make_scene(train_dir, seconds=seconds, fps=fps, size=size, seed=_clip_seed(seed, k), place_seed=seed,
                   name=f"clip_{k:02d}")
    for k in range(test_clips):
        clip = make_scene(test_dir, seconds=test_seconds, fps=fps, size=size, seed=_clip_seed(seed, 100 + k),
                          place_seed=seed, anomalies=demo_anomalies(test_seconds, k), name=f"clip_{k:02d}")
        (test_dir / f"clip_{k:02d}.labels.json").write_text(json.dumps(clip.labels))
        kinds = [{"kind": a.kind, "start_s": a.start_s, "end_s": a.end_s} for a in demo_anomalies(test_seconds, k)]
        (test_dir / f"clip_{k:02d}.anomalies.json").write_text(json.dumps(kinds))
        (test_dir / f"clip_{k:02d}.boxes.json").write_text(json.dumps(clip.boxes))
    return root


def _clip_seed(seed: int, k: int) -> int:
    return seed * 1000 + k
