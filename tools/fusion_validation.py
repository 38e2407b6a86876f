"""Choose how appearance and motion are fused without test labels: UCSD Ped2 *training* clips only.

The training clips are split into 4 folds of whole clips. For each fold the product's own `fit`
(configs/ped2.yaml: appearance memory, motion part, thresholds from normal footage) runs on the other
clips, and its engine replays the fold's clips three ways: as they are (normal frames the model never
saw), with a walker crossing at 2-2.5x a walker's pace (a motion anomaly: a walker's look), and with a
walker twice a walker's size at a walker's pace (an appearance anomaly: it moves like one). The pasted
frames are the middle third of each clip (tools/motion_validation.py pastes them). Each frame gets the
appearance score and the motion score, each on its fusion scale (its normal median at 0, its calibrated
threshold at 1: motion/fusion.py) and, for comparison, divided by its threshold alone (`... /threshold`); the
fusions compared are the larger of the two (`max`) and their sum (`sum`). Reported, pooled over every fold
(scores compare across clips because each is on its calibration's scale) and per pasted clip: AUROC of normal
against pasted frames. The test clips are never read. What it gave is in the README (Scorers: fusion).

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
from motion_validation import load_clip, paste_walker

from streamvad.config import EventsConfig, load_config
from streamvad.datasets.base import clip_from_path
from streamvad.offline.pipeline import fit, replay, rule_variants
from streamvad.scoring.budget import opening_statistic
from streamvad.scoring.engine import load_engine

FUSIONS = {"max": np.maximum, "sum": np.add}
PARTS = ("clip", "kind", "label", "appearance", "motion", "sum_at", "zero_a", "zero_m")
KINDS = {"fast": {"pace": (2.0, 2.5), "scale": 1}, "large": {"pace": (0.8, 1.2), "scale": 2},
         "still": {"pace": (0.0, 0.0), "scale": 2}}


def write_clip(folder: Path, frames: np.ndarray) -> Path:
    """Grey frames as lossless PNGs (the replay applies the wire's JPEG round trip itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, g in enumerate(frames):
        Image.fromarray(g).convert("RGB").save(folder / f"{i:04d}.png")
    return folder


def scores(engine: Any, clip: Any, fps: float | None) -> dict[str, np.ndarray]:
    """Appearance and motion scores of every sampled frame, each divided by its threshold, and validity
    (frames with motion: the first has none)."""
    variants = rule_variants(engine, ["distance/topk", "motion"])
    recs = replay(engine, [clip], sample_fps=fps, scorers=variants, progress=False).records
    app = np.array([r["raw_score"] / r["threshold"] for r in recs["distance/topk"]])
    mot = np.array([r["raw_score"] / r["threshold"] for r in recs["motion"]])
    return {"appearance": app, "motion": mot, "moving": np.array([r["frame"] > 0 for r in recs["motion"]]),
            "label": np.array([r["label"] or 0 for r in recs["motion"]])}


def validate(root: Path, out: Path, step: int, folds: int) -> dict[str, np.ndarray]:
    """Every replayed frame of every fold: its clip, kind ("normal" or a pasted kind), label, both parts on their
    unit scales and the fold model's sum threshold (frames without motion, each clip's first, are left out)."""
    cfg = load_config(Path(__file__).parents[1] / "configs" / "ped2.yaml")
    cfg = cfg.model_copy(update={"normality": cfg.normality.model_copy(update={"chroma": False})})  # scores only
    clips = sorted((root / "training" / "frames").iterdir())
    names = [c.name for c in clips]
    fps = 10.0 / step
    rows: dict[str, list[np.ndarray]] = {k: [] for k in PARTS}

    def add(clip: str, kind: str, s: dict[str, np.ndarray], fold: dict[str, float]) -> None:
        ok = s["moving"]
        for key, value in (("clip", clip), ("kind", kind), *fold.items()):
            rows[key].append(np.full(int(ok.sum()), value))
        for key in ("label", "appearance", "motion"):
            rows[key].append(s[key][ok])

    for k in range(folds):
        held = names[k::folds]
        train = [clip_from_path(c, c.name, c.name) for c in clips if c.name not in held]
        model = out / f"fold{k}"
        fit(cfg, train, model, sample_fps=fps, progress=False)
        engine = load_engine(model)
        motion = engine.scorer.motion
        # the fold model's sum threshold and each part's zero point, on its threshold's unit scale
        fold = {"sum_at": motion.sum_thresholds["distance/topk"], "zero_m": motion.medians["motion"] / motion.threshold,
                "zero_a": motion.medians["distance/topk"] / engine.scorer.appearance.threshold}
        for i, name in enumerate(held):
            raw = load_clip(root / "training" / "frames" / name, 1, wire=False)
            donor = load_clip(root / "training" / "frames" / names[(names.index(name) + 1) % len(names)], 1, False)
            add(name, "normal", scores(engine, clip_from_path(write_clip(out / "clips" / name, raw), name, name), fps),
                fold)
            for kind, how in KINDS.items():
                pasted, labels = paste_walker(raw, donor, 1, seed=100 * k + i + 1, **how)
                path = write_clip(out / "clips" / f"{name}-{kind}", pasted)
                clip = clip_from_path(path, f"{name}-{kind}", f"{name}-{kind}", labels=labels.tolist())
                add(f"{name}-{kind}", kind, scores(engine, clip, fps), fold)
        logging.info("fold %d of %d done", k + 1, folds)
    return {key: np.concatenate(v) for key, v in rows.items()}


def summarise(table: dict[str, np.ndarray]) -> dict[str, Any]:
    """AUROC of normal against pasted frames, per fusion: pooled per kind, pooled over every kind, and per
    pasted clip (its own normal and pasted frames); and at the threshold (1 on each fused scale), the share of
    normal frames flagged and the pasted clips whose pasted frames open an event."""
    a, m = table["appearance"], table["motion"]
    # each fold's zero points are below its thresholds (1 here), so this is motion/fusion.py's scale
    looks, moves = (a - table["zero_a"]) / (1 - table["zero_a"]), (m - table["zero_m"]) / (1 - table["zero_m"])
    fused = {"appearance": a, "motion": m, "max": np.maximum(looks, moves), "sum": (looks + moves) / table["sum_at"],
             **{f"{name} /threshold": f(a, m) for name, f in FUSIONS.items()}}
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
    events = EventsConfig()
    # the one-point sum has no threshold of its own here (the fold models calibrated the two-point one)
    result["at_threshold"] = {name: {"normal_flagged": round(float((fused[name][normal] > 1).mean()), 4), **{
        f"caught_{kind}": sum(bool(opening_statistic(fused[name][(table["clip"] == clip) & (table["label"] == 1)],
                                                     events.open_n, events.open_m).max() > 1)
                              for clip in np.unique(table["clip"][table["kind"] == kind])) for kind in KINDS}}
        for name in ("appearance", "motion", "max", "sum", "max /threshold")}
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
    np.savez(args.out / "frames.npz", **table)  # every frame's two parts on their unit scales, to try other fusions
    result = {"step": args.step, **summarise(table)}
    (args.out / "fusion_validation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "per_clip_auroc"}, indent=2))


if __name__ == "__main__":
    main()
