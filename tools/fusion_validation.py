"""Choose how appearance and motion are fused without test labels: UCSD Ped2 *training* clips only.

The training clips are split into 4 folds of whole clips. For each fold the product's own `fit`
(configs/ped2.yaml: appearance memory, motion part, thresholds from normal footage) runs on the other
clips, and its engine replays the fold's clips three ways: as they are (normal frames the model never
saw), with a walker crossing at 2-2.5x a walker's pace (a motion anomaly: a walker's look), and with a
walker twice a walker's size at a walker's pace (an appearance anomaly: it moves like one). The pasted
frames are the middle third of each clip (tools/motion_validation.py pastes them). Each frame gets the
appearance score and the motion score, each divided by its calibrated threshold; the fusions compared are
the larger of the two (`max`) and their sum (`sum`). Reported, pooled over every fold (scores compare
across clips because each is on its threshold's scale) and per pasted clip: AUROC of normal against
pasted frames. The test clips are never read. What it gave is in the README (Scorers: fusion).

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

from streamvad.config import load_config
from streamvad.datasets.base import clip_from_path
from streamvad.offline.pipeline import fit, replay, rule_variants
from streamvad.scoring.engine import load_engine

FUSIONS = {"max": np.maximum, "sum": np.add}
KINDS = {"fast": {"pace": (2.0, 2.5), "scale": 1}, "large": {"pace": (0.8, 1.2), "scale": 2}}


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


def validate(root: Path, out: Path, step: int, folds: int) -> dict[str, Any]:
    cfg = load_config(Path(__file__).parents[1] / "configs" / "ped2.yaml")
    cfg = cfg.model_copy(update={"normality": cfg.normality.model_copy(update={"chroma": False})})  # scores only
    clips = sorted((root / "training" / "frames").iterdir())
    names = [c.name for c in clips]
    fps = 10.0 / step
    pooled: dict[str, list[np.ndarray]] = {"normal_a": [], "normal_m": []}
    per_clip: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        pooled[f"{kind}_a"], pooled[f"{kind}_m"] = [], []
    for k in range(folds):
        held = names[k::folds]
        train = [clip_from_path(c, c.name, c.name) for c in clips if c.name not in held]
        model = out / f"fold{k}"
        fit(cfg, train, model, sample_fps=fps, progress=False)
        engine = load_engine(model)
        for i, name in enumerate(held):
            raw = load_clip(root / "training" / "frames" / name, 1, wire=False)
            donor = load_clip(root / "training" / "frames" / names[(names.index(name) + 1) % len(names)], 1, False)
            normal = scores(engine, clip_from_path(write_clip(out / "clips" / name, raw), name, name), fps)
            ok = normal["moving"]
            pooled["normal_a"].append(normal["appearance"][ok])
            pooled["normal_m"].append(normal["motion"][ok])
            for kind, how in KINDS.items():
                pasted, labels = paste_walker(raw, donor, 1, seed=100 * k + i + 1, **how)
                path = write_clip(out / "clips" / f"{name}-{kind}", pasted)
                clip = clip_from_path(path, f"{name}-{kind}", f"{name}-{kind}", labels=labels.tolist())
                s = scores(engine, clip, fps)
                y, ok = s["label"], s["moving"]
                pooled[f"{kind}_a"].append(s["appearance"][ok & (y == 1)])
                pooled[f"{kind}_m"].append(s["motion"][ok & (y == 1)])
                per_clip[f"{name}-{kind}"] = {
                    fusion: round(float(roc_auc_score(y[ok], f(s["appearance"], s["motion"])[ok])), 4)
                    for fusion, f in FUSIONS.items()}
        logging.info("fold %d of %d done", k + 1, folds)
    cat = {key: np.concatenate(v) for key, v in pooled.items()}
    np.savez(out / "unit_scores.npz", **cat)  # every frame's two parts on their unit scales, to try other fusions
    result: dict[str, Any] = {"step": step, "normal_frames": len(cat["normal_a"])}
    for kind in KINDS:
        y = np.r_[np.zeros(len(cat["normal_a"])), np.ones(len(cat[f"{kind}_a"]))]
        row = {"appearance": np.r_[cat["normal_a"], cat[f"{kind}_a"]],
               "motion": np.r_[cat["normal_m"], cat[f"{kind}_m"]]}
        aurocs = {part: float(roc_auc_score(y, v)) for part, v in row.items()}
        aurocs.update({fusion: float(roc_auc_score(y, f(row["appearance"], row["motion"])))
                       for fusion, f in FUSIONS.items()})
        result[kind] = {"frames": int(y.sum()), "auroc": {k: round(v, 4) for k, v in aurocs.items()}}
    both = {}
    for fusion, f in FUSIONS.items():
        normal = f(cat["normal_a"], cat["normal_m"])
        anomalous = np.concatenate([f(cat[f"{kind}_a"], cat[f"{kind}_m"]) for kind in KINDS])
        both[fusion] = round(float(roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(anomalous))],
                                                 np.r_[normal, anomalous])), 4)
    result["both_kinds_auroc"] = both
    result["per_clip_auroc"] = per_clip
    result["per_clip_mean_auroc"] = {fusion: round(float(np.mean([c[fusion] for c in per_clip.values()])), 4)
                                     for fusion in FUSIONS}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/ucsd_ped2"))
    parser.add_argument("--out", type=Path, required=True, help="work folder: fold models and pasted clips")
    parser.add_argument("--step", type=int, default=1, help="every n-th native frame (2 = 5 fps)")
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    result = validate(args.root, args.out, args.step, args.folds)
    (args.out / "fusion_validation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "per_clip_auroc"}, indent=2))


if __name__ == "__main__":
    main()
