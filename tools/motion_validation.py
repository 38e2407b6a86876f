"""Choose motion settings without test labels: UCSD Ped2 *training* clips only.

For each setting (`--set key=value` on normality.motion), every training clip is scored by a motion model
fitted on the other clips (4 folds), which gives the normal score tail, and the same clips are scored again
with a synthetic anomaly pasted in: a walker cut out of another clip (its foreground pixels only, against
that clip's median background) crossing the walkway at 2-2.5x a walker's pace for the middle third of the
clip. Scores are averaged over `smooth_s` of each clip's stream, as serving does (`--set smooth_s=0` scores
frames alone). Reported: AUROC of normal against synthetic frames, the normal 99th percentile, and the recall
at it.
The test clips are never read. Frames go through the wire's JPEG round trip, as in `make ped2`.

    python tools/motion_validation.py --root ../shared/data/ucsd_ped2 --step 2 --set min_fraction=0.3
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from streamvad.config import MotionConfig
from streamvad.motion import MotionModel, MotionTracker
from streamvad.scoring.smoothing import causal_means
from streamvad.types import Frame, MotionField

GRID = (15, 22)  # configs/ped2.yaml: 240x352 on EfficientNet-Lite0's stride 16
PACE_PX = 1.2  # a Ped2 walker's pace, pixels per native (10 fps) frame
ROWS = (110, 190)  # the rows a pasted walker or object crosses at: the near part of Ped2's walkway
# what is pasted (paste_walker's arguments): a walker at 2-2.5x a walker's pace, near or, at 0.7x the size and
# 0.7x the pixels per second, at the far edge of the walkway
KINDS = {"fast": {"pace": (2.0, 2.5)}, "far": {"pace": (1.4, 1.75), "scale": 0.7, "rows": (95, 125)}}


def load_clip(folder: Path, step: int, wire: bool = True) -> np.ndarray:
    """Grey frames [T, 240, 360], every `step`-th native frame, after a JPEG q90 round trip when `wire`."""
    out = []
    for path in sorted(folder.glob("*.jpg"))[::step]:
        image = Image.open(path).convert("RGB")
        if wire:
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=90)
            image = Image.open(buf)
        out.append(np.asarray(image.convert("L")))
    return np.stack(out)


def paste_walker(frames: np.ndarray, donor: np.ndarray, step: int, seed: int, pace: tuple[float, float] = (2.0, 2.5),
                 scale: float = 1, rows: tuple[int, int] = ROWS, widen: float = 1,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A walker cut out of `donor` (its foreground pixels only, against the donor's median background), `scale`
    times its size and `widen` times as wide again (a cyclist's side view is a walker's height and about twice
    the width), crossing the view at a row in `rows` at `pace` times a walker's pace (in pixels: a walker
    further away covers fewer of them) for the middle third of `frames`; returns the frames and their 0/1 labels."""
    rng = np.random.default_rng(seed)
    moving = cv2.absdiff(cv2.GaussianBlur(donor[10], (5, 5), 0), cv2.GaussianBlur(donor[11], (5, 5), 0)) > 12
    ys, xs = np.nonzero(moving[100:200])
    j = rng.integers(len(ys))
    h, w = 34, 16
    y0, x0 = int(np.clip(ys[j] + 100 - h // 2, 0, 240 - h)), int(np.clip(xs[j] - w // 2, 0, 360 - w))
    crop = donor[10, y0:y0 + h, x0:x0 + w]
    fg = np.abs(crop.astype(float) - np.median(donor[::5], axis=0)[y0:y0 + h, x0:x0 + w]) > 15
    if scale != 1 or widen != 1:
        h, w = round(h * scale), round(w * scale * widen)
        crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST)
        fg = cv2.resize(fg.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return cross(frames, crop, fg, step, rng, pace, rows)


def cross(frames: np.ndarray, crop: np.ndarray, fg: np.ndarray, step: int, rng: np.random.Generator,
          pace: tuple[float, float], rows: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`crop`'s foreground pixels `fg` crossing the view, left or right, at a row in `rows` at `pace` times a
    walker's pace for the middle third of `frames`; returns the frames and their 0/1 labels."""
    h, w = crop.shape
    row, speed = int(rng.integers(*rows)), float(rng.uniform(*pace)) * PACE_PX
    row = int(np.clip(row, h // 2, 240 - h + h // 2))
    rightward = rng.random() < 0.5
    out, labels = frames.copy(), np.zeros(len(frames), dtype=int)
    first, last = len(frames) // 3, 2 * len(frames) // 3
    for t in range(first, last):
        dx = (t - first) * step * speed
        px = round(20 + dx if rightward else 340 - w - dx)
        if 0 <= px <= 360 - w:
            region = out[t, row - h // 2:row - h // 2 + h, px:px + w]
            region[fg] = crop[fg]
            labels[t] = 1
    return out, labels


def motion_of(name: str, frames: np.ndarray, step: int, cfg: MotionConfig) -> MotionField:
    tracker = MotionTracker(GRID, cfg)
    return tracker.observe([Frame(name, i, i * step / 10, 0.0, np.repeat(g[..., None], 3, 2))
                            for i, g in enumerate(frames)])


def windowed(name: str, scores: np.ndarray, step: int, seconds: float) -> np.ndarray:
    """The clip's frame scores as served: each the mean over its last `seconds` of stream (`smooth_s`)."""
    return causal_means(scores, [name] * len(scores), np.arange(len(scores)) * step / 10, seconds)


def validate(root: Path, step: int, cfg: MotionConfig, kind: str = "fast", folds: int = 4) -> dict[str, float]:
    clips = sorted((root / "training" / "frames").iterdir())
    frames = {c.name: load_clip(c, step) for c in clips}
    names = list(frames)
    normal = {n: motion_of(n, frames[n], step, cfg) for n in names}
    synthetic = {}
    for i, n in enumerate(names):
        pasted, labels = paste_walker(frames[n], frames[names[(i + 1) % len(names)]], step, seed=i + 1,
                                      **KINDS[kind])
        synthetic[n] = (motion_of(n, pasted, step, cfg), labels)
    oof, syn = [], []
    for k in range(folds):
        held = names[k::folds]
        model = MotionModel.fit(MotionField.concat([normal[n] for n in names if n not in held]), GRID, cfg)
        for n in held:
            oof.append(windowed(n, model.score(normal[n]), step, cfg.smooth_s)[normal[n].valid])
            field, labels = synthetic[n]
            pasted = field.valid & (labels[: len(field.valid)] == 1)
            syn.append(windowed(n, model.score(field), step, cfg.smooth_s)[pasted])
    normal_scores, anomalous = np.concatenate(oof), np.concatenate(syn)
    p99 = float(np.quantile(normal_scores, 0.99))
    y = np.r_[np.zeros(len(normal_scores)), np.ones(len(anomalous))]
    return {"auroc_normal_vs_synthetic": float(roc_auc_score(y, np.r_[normal_scores, anomalous])),
            "normal_p99": p99, "recall_at_normal_p99": float((anomalous > p99).mean()),
            "normal_frames": len(normal_scores), "synthetic_frames": len(anomalous)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/ucsd_ped2"))
    parser.add_argument("--step", type=int, default=1, help="every n-th native frame (2 = 5 fps)")
    parser.add_argument("--kind", choices=list(KINDS), default="fast", help="what is pasted (KINDS)")
    parser.add_argument("--set", action="append", default=[], help="normality.motion field=value (repeatable)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    overrides = dict(item.split("=", 1) for item in args.set)
    cfg = MotionConfig.model_validate(overrides)
    result = validate(args.root, args.step, cfg, args.kind)
    print(json.dumps({"step": args.step, "kind": args.kind, "motion": overrides, **result}, indent=2))


if __name__ == "__main__":
    main()
