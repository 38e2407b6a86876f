"""Choose how appearance and motion are fused without test labels: UCSD Ped2 *training* clips only.

The training clips are split into 4 folds of whole clips. For each fold the product's own `fit`
(configs/ped2.yaml: appearance memory, motion part, thresholds from normal footage) runs on the other
clips, and its engine replays the fold's clips five ways (KINDS): as they are (normal frames the model never
saw); with a walker crossing at 2-2.5x a walker's pace (`fast`: a motion anomaly with a walker's look); with a
walker twice a walker's size at a walker's pace (`large`: an appearance anomaly that moves like one); the same
standing still (`still`: a left object); and a cyclist-like shape, a walker 1.8x as wide at 1.4-1.8x a walker's
pace (`wide`: a little of each, neither alone enough). The pasted frames are the middle third of each clip
(tools/motion_validation.py pastes them). Each frame gets the
fold model's own scores: appearance alone and motion alone (each divided by its threshold), and both fused
as served, by `max` and by `sum` (motion/fusion.py: each part on its fusion scale, appearance corrected for
the crowd). Reported, pooled over every fold (scores compare across clips because each is on its calibration's
scale) and per pasted clip: AUROC of normal against pasted frames; and that of the most crowded quarter of the
normal frames (by the crowd of the scene: its cells that move as normal footage does) against pasted frames in
the quieter half, the ranking a crowd spoils (issue #9).
The test clips are never read. What it gave is in docs/VALIDATION.md.

    python tools/fusion_validation.py --root ../shared/data/ucsd_ped2 --out /tmp/fusion [--step 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from motion_validation import load_clip, motion_of, paste_walker

from streamvad.config import EventsConfig, load_config
from streamvad.datasets.base import clip_from_path
from streamvad.offline.pipeline import fit, replay, rule_variants
from streamvad.scoring.budget import opening_statistic
from streamvad.scoring.engine import load_engine

SCORERS = {"appearance": "distance/topk", "motion": "motion", "max": "distance/topk+motion:max",
           "sum": "distance/topk+motion:sum"}
PARTS = ("clip", "kind", "label", "crowd", *SCORERS)
KINDS = {"fast": {"pace": (2.0, 2.5), "scale": 1}, "large": {"pace": (0.8, 1.2), "scale": 2},
         "still": {"pace": (0.0, 0.0), "scale": 2}, "wide": {"pace": (1.4, 1.8), "scale": 1, "widen": 1.8}}


def write_clip(folder: Path, frames: np.ndarray) -> Path:
    """Grey frames as lossless PNGs (the replay applies the wire's JPEG round trip itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, g in enumerate(frames):
        Image.fromarray(g).convert("RGB").save(folder / f"{i:04d}.png")
    return folder


def scores(engine: Any, clip: Any, fps: float | None) -> dict[str, np.ndarray]:
    """Every sampled frame's score by each of SCORERS, divided by its threshold, its label and validity (frames
    with motion: the first has none)."""
    recs = replay(engine, [clip], sample_fps=fps, scorers=rule_variants(engine, list(SCORERS.values())),
                  progress=False).records
    out = {name: np.array([r["raw_score"] / r["threshold"] for r in recs[rule]]) for name, rule in SCORERS.items()}
    return {**out, "moving": np.array([r["frame"] > 0 for r in recs["motion"]]),
            "label": np.array([r["label"] or 0 for r in recs["motion"]])}


def crowd(engine: Any, name: str, frames: np.ndarray, step: int) -> np.ndarray:
    """The crowd of each sampled frame of a clip as it was, before anything was pasted (`MotionModel.crowd` of the
    fold model)."""
    motion = engine.scorer.motion
    return motion.crowd(motion_of(name, frames[::step], step, motion.cfg))


def validate(root: Path, out: Path, step: int, folds: int) -> dict[str, np.ndarray]:
    """Every replayed frame of every fold: its clip, kind ("normal" or a pasted kind), label, the crowd of the
    scene and each scorer's score over its threshold (frames without motion, each clip's first, are left
    out)."""
    cfg = load_config(Path(__file__).parents[1] / "configs" / "ped2.yaml")
    cfg = cfg.model_copy(update={"normality": cfg.normality.model_copy(update={"chroma": False})})  # scores only
    clips = sorted((root / "training" / "frames").iterdir())
    names = [c.name for c in clips]
    fps = 10.0 / step
    rows: dict[str, list[np.ndarray]] = {k: [] for k in PARTS}

    def add(clip: str, kind: str, s: dict[str, np.ndarray], cells: np.ndarray) -> None:
        ok = s["moving"]
        for key, value in (("clip", clip), ("kind", kind)):
            rows[key].append(np.full(int(ok.sum()), value))
        for key in ("label", *SCORERS):
            rows[key].append(s[key][ok])
        rows["crowd"].append(cells[ok])

    for k in range(folds):
        held = names[k::folds]
        train = [clip_from_path(c, c.name, c.name) for c in clips if c.name not in held]
        model = out / f"fold{k}"
        fit(cfg, train, model, sample_fps=fps, progress=False)
        engine = load_engine(model)
        for i, name in enumerate(held):
            raw = load_clip(root / "training" / "frames" / name, 1, wire=False)
            donor = load_clip(root / "training" / "frames" / names[(names.index(name) + 1) % len(names)], 1, False)
            cells = crowd(engine, name, raw, step)
            add(name, "normal", scores(engine, clip_from_path(write_clip(out / "clips" / name, raw), name, name), fps),
                cells)
            for kind, how in KINDS.items():
                pasted, labels = paste_walker(raw, donor, 1, seed=100 * k + i + 1, **how)
                path = write_clip(out / "clips" / f"{name}-{kind}", pasted)
                clip = clip_from_path(path, f"{name}-{kind}", f"{name}-{kind}", labels=labels.tolist())
                add(f"{name}-{kind}", kind, scores(engine, clip, fps), cells)
        logging.info("fold %d of %d done", k + 1, folds)
    return {key: np.concatenate(v) for key, v in rows.items()}


def summarise(table: dict[str, np.ndarray]) -> dict[str, Any]:
    """AUROC of normal against pasted frames, per fusion: pooled per kind, pooled over every kind, and per
    pasted clip (its own normal and pasted frames); crowded normal frames against quiet pasted ones; and at the
    threshold (1 on each scale), the share of normal frames flagged and the pasted clips whose pasted frames open
    an event."""
    fused = {name: table[name] for name in SCORERS}
    normal = table["kind"] == "normal"
    result: dict[str, Any] = {"normal_frames": int(normal.sum())}
    for kind in [*KINDS, "all"]:
        pasted = (table["label"] == 1) & (True if kind == "all" else table["kind"] == kind)
        y = np.r_[np.zeros(int(normal.sum())), np.ones(int(pasted.sum()))]
        result[kind] = {"frames": int(pasted.sum()), "auroc": {
            name: round(float(roc_auc_score(y, np.r_[v[normal], v[pasted]])), 4) for name, v in fused.items()}}
    per_clip = {}
    for clip in np.unique(table["clip"][~normal]):
        rows = table["clip"] == clip
        per_clip[str(clip)] = {name: round(float(roc_auc_score(table["label"][rows], v[rows])), 4)
                               for name, v in fused.items()}
    result["per_clip_mean_auroc"] = {name: round(float(np.mean([c[name] for c in per_clip.values()])), 4)
                                     for name in fused}
    busy, calm = np.quantile(table["crowd"][normal], [0.75, 0.5])
    ranked = (normal & (table["crowd"] >= busy)) | ((table["label"] == 1) & (table["crowd"] <= calm))
    result["crowded_normal_vs_quiet_pasted"] = {
        "frames": int(ranked.sum()), "auroc": {name: round(float(roc_auc_score(~normal[ranked], v[ranked])), 4)
                                               for name, v in fused.items()}}
    events = EventsConfig()
    result["at_threshold"] = {name: {"normal_flagged": round(float((fused[name][normal] > 1).mean()), 4), **{
        f"caught_{kind}": sum(bool(opening_statistic(fused[name][(table["clip"] == clip) & (table["label"] == 1)],
                                                     events.open_n, events.open_m).max() > 1)
                              for clip in np.unique(table["clip"][table["kind"] == kind])) for kind in KINDS}}
        for name in fused}
    result["per_clip_auroc"] = per_clip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/ucsd_ped2"))
    parser.add_argument("--out", type=Path, required=True, help="work folder: fold models and pasted clips")
    parser.add_argument("--step", type=int, default=1, help="every n-th native frame (2 = 5 fps)")
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    table = validate(args.root, args.out, args.step, args.folds)
    np.savez(args.out / "frames.npz", **table)  # every frame's scores over their thresholds, to try other fusions
    result = {"step": args.step, **summarise(table)}
    (args.out / "fusion_validation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "per_clip_auroc"}, indent=2))


if __name__ == "__main__":
    main()
