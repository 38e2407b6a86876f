"""Choose how appearance and motion are fused without test labels: UCSD Ped2 *training* clips only.

The training clips are split into 4 folds of whole clips. For each fold the product's own `fit`
(configs/ped2.yaml or `--config`: appearance memory, motion part, thresholds from normal footage) runs on the other
clips, and its engine replays the fold's clips as they are (normal frames the model never saw) and once per
pasted kind (`--kinds`, all by default). Four kinds are a walker cut out of another clip (WALKERS): crossing at
2-2.5x a walker's pace (`fast`: a motion anomaly with a walker's look); twice a walker's size at a walker's pace
(`large`: an appearance anomaly that moves like one); the same standing still (`still`: a left object); and a
cyclist-like shape, a walker 1.8x as wide at 1.4-1.8x a walker's pace (`wide`: a little of each, neither alone
enough). Being a walker's own pixels, these favour features that see a patch's detail over its context, so
three kinds are drawn objects of other classes (OBJECTS), crossing at about a walker's pace: a rider on a
bicycle, a striped crate and a face cut from matplotlib's sample photo. The pasted frames are the middle third
of each clip (tools/motion_validation.py pastes them). Each frame gets the
fold model's own scores: appearance alone and motion alone (each divided by its threshold), and both fused
as served, by `max` and by `sum` (motion/fusion.py: each part on its fusion scale, appearance corrected for
the crowd). Reported, pooled over every fold (scores compare across clips because each is on its calibration's
scale) and per pasted clip: AUROC of normal against pasted frames; and that of the most crowded quarter of the
normal frames (by the crowd of the scene: its cells that move as normal footage does) against pasted frames in
the quieter half, the ranking a crowd spoils (issue #9); and at the threshold, through the events' hysteresis,
the normal frames flagged, false events per hour of the unseen normal clips, and per pasted clip whether an event
caught it and how long after it began; and the same at thresholds that flag 1, 3 and 5% of the unseen normal
frames (`at_matched_shares`), and at thresholds that raise 0, 1 and 2 false events there
(`at_matched_false_events`), so that two settings are compared at equal false alarms.
The test clips are never read. What it gave is in docs/VALIDATION.md.

    python tools/fusion_validation.py --root ../shared/data/ucsd_ped2 --out /tmp/fusion [--step 2] [--kinds fast,face]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib import cbook
from PIL import Image
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from motion_validation import ROWS, cross, load_clip, motion_of, paste_walker

from streamvad.config import EventsConfig, load_config
from streamvad.datasets.base import clip_from_path
from streamvad.motion.fusion import motion_on_fusion_scale
from streamvad.offline.event_metrics import ClipVerdicts, event_metrics
from streamvad.offline.pipeline import fit, replay, rule_variants
from streamvad.scoring.engine import load_engine

SCORERS = {"appearance": "distance/topk", "motion": "motion", "max": "distance/topk+motion:max",
           "sum": "distance/topk+motion:sum"}
PARTS = ("clip", "kind", "label", "pts", "crowd", "look", "move", "sum_at", *SCORERS)
WALKERS = {"fast": {"pace": (2.0, 2.5), "scale": 1}, "large": {"pace": (0.8, 1.2), "scale": 2},
           "still": {"pace": (0.0, 0.0), "scale": 2}, "wide": {"pace": (1.4, 1.8), "scale": 1, "widen": 1.8}}
OBJECT_PACE = (1.0, 1.4)  # a walker's pace or a little more: the look must tell these apart, not the speed


def bicycle() -> tuple[np.ndarray, np.ndarray]:
    """A rider on a bicycle in side view, dark strokes 46 px wide and 36 high (a walker's height): grey pixels
    and their foreground mask."""
    crop, fg = np.zeros((36, 46), np.uint8), np.zeros((36, 46), np.uint8)
    for image, wheel, frame, rider in ((crop, 60, 40, 90), (fg, 1, 1, 1)):
        for x in (10, 36):
            cv2.circle(image, (x, 27), 8, wheel, 2)
        for a, b in (((10, 27), (22, 27)), ((22, 27), (30, 16)), ((30, 16), (36, 27)), ((16, 16), (30, 16)),
                     ((22, 27), (16, 16))):
            cv2.line(image, a, b, frame, 2)
        cv2.ellipse(image, (20, 8), (5, 9), 20, 0, 360, rider, -1)
    return crop, fg.astype(bool)


def crate() -> tuple[np.ndarray, np.ndarray]:
    """A crate 30 px wide and 24 high, light with dark and bright stripes: nothing on a walkway is striped."""
    crop = np.full((24, 30), 120, np.uint8)
    crop[:, ::5] = 30
    crop[::4] = 200
    return crop, np.ones_like(crop, bool)


def face() -> tuple[np.ndarray, np.ndarray]:
    """A face cut from matplotlib's sample photo into an oval 26 px wide and 38 high: a photo's texture where
    walkers are blurred and small."""
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grey = np.asarray(Image.open(f).convert("L"))
    crop = cv2.resize(grey[40:560, 80:440], (26, 38), interpolation=cv2.INTER_AREA)
    fg = np.zeros((38, 26), np.uint8)
    cv2.ellipse(fg, (13, 19), (12, 18), 0, 0, 360, 1, -1)
    return crop, fg.astype(bool)


OBJECTS = {"bicycle": bicycle, "crate": crate, "face": face}
KINDS = (*WALKERS, *OBJECTS)


def paste(kind: str, frames: np.ndarray, donor: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`frames` with `kind` pasted into their middle third (a walker cut out of `donor`, or a drawn object), and
    their 0/1 labels."""
    if kind in WALKERS:
        return paste_walker(frames, donor, 1, seed=seed, **WALKERS[kind])
    crop, fg = OBJECTS[kind]()
    return cross(frames, crop, fg, 1, np.random.default_rng(seed), OBJECT_PACE, ROWS)


def write_clip(folder: Path, frames: np.ndarray) -> Path:
    """Grey frames as lossless PNGs (the replay applies the wire's JPEG round trip itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, g in enumerate(frames):
        Image.fromarray(g).convert("RGB").save(folder / f"{i:04d}.png")
    return folder


def scores(engine: Any, clip: Any, fps: float | None) -> dict[str, np.ndarray]:
    """Every sampled frame's score by each of SCORERS, divided by its threshold, its label, pts and validity
    (frames with motion: the first has none); and the sum's two parts, each on its fusion scale, with the sum's
    threshold (`look` + `move` = `sum` * `sum_at`), to try other fusions of the same parts."""
    scorers = rule_variants(engine, list(SCORERS.values()))
    recs = replay(engine, [clip], sample_fps=fps, scorers=scorers, progress=False).records
    out = {name: np.array([r["raw_score"] / r["threshold"] for r in recs[rule]]) for name, rule in SCORERS.items()}
    summed, motion = scorers[SCORERS["sum"]], recs["motion"]
    move = np.array([motion_on_fusion_scale(summed.motion, r["motion_score"]) for r in recs[SCORERS["sum"]]])
    look = np.array([r["raw_score"] for r in recs[SCORERS["sum"]]]) * summed.sum_at - move
    return {**out, "move": move, "look": look,
            "sum_at": np.full(len(move), summed.sum_at), "moving": np.array([r["frame"] > 0 for r in motion]),
            "label": np.array([r["label"] or 0 for r in motion]), "pts": np.array([r["pts"] for r in motion])}


def crowd(engine: Any, name: str, frames: np.ndarray, step: int) -> np.ndarray:
    """The crowd of each sampled frame of a clip as it was, before anything was pasted (`MotionModel.crowd` of the
    fold model)."""
    motion = engine.scorer.motion
    return motion.crowd(motion_of(name, frames[::step], step, motion.cfg))


def validate(root: Path, out: Path, step: int, folds: int, kinds: list[str], config: Path) -> dict[str, np.ndarray]:
    """Every replayed frame of every fold: its clip, kind ("normal" or a pasted kind), label, the crowd of the
    scene and each scorer's score over its threshold (frames without motion, each clip's first, are left
    out)."""
    cfg = load_config(config)
    cfg = cfg.model_copy(update={"normality": cfg.normality.model_copy(update={"chroma": False})})  # scores only
    clips = sorted((root / "training" / "frames").iterdir())
    names = [c.name for c in clips]
    fps = 10.0 / step
    rows: dict[str, list[np.ndarray]] = {k: [] for k in PARTS}

    def add(clip: str, kind: str, s: dict[str, np.ndarray], cells: np.ndarray) -> None:
        ok = s["moving"]
        for key, value in (("clip", clip), ("kind", kind)):
            rows[key].append(np.full(int(ok.sum()), value))
        for key in ("label", "pts", "look", "move", "sum_at", *SCORERS):
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
            for kind in kinds:
                pasted, labels = paste(kind, raw, donor, seed=100 * k + i + 1)
                path = write_clip(out / "clips" / f"{name}-{kind}", pasted)
                clip = clip_from_path(path, f"{name}-{kind}", f"{name}-{kind}", labels=labels.tolist())
                add(f"{name}-{kind}", kind, scores(engine, clip, fps), cells)
        logging.info("fold %d of %d done", k + 1, folds)
    return {key: np.concatenate(v) for key, v in rows.items()}


def at_threshold(table: dict[str, np.ndarray], scores: np.ndarray, kinds: list[str]) -> dict[str, Any]:
    """What an operator would have been told at the threshold (1 on each scale), through the events' default
    hysteresis as `streamvad eval` counts it (offline/event_metrics.py): the share of normal frames flagged, false
    events per hour of the unseen normal clips, and per pasted kind the clips whose pasted segment an event
    overlaps, with the median and p90 delay from the segment's first frame to the verdict that opened it."""
    def events_of(kind: str) -> dict[str, Any]:
        clips = {}
        for clip in np.unique(table["clip"][table["kind"] == kind]):
            rows = table["clip"] == clip
            clips[str(clip)] = ClipVerdicts(table["pts"][rows], table["label"][rows], scores[rows] > 1)
        return event_metrics(clips, EventsConfig())

    normal = events_of("normal")
    out: dict[str, Any] = {"normal_flagged": round(float((scores[table["kind"] == "normal"] > 1).mean()), 4),
                           "false_events": int(normal["false_events"]),
                           "false_events_per_hour": round(float(normal["false_events_per_hour"]), 1)}
    for kind in kinds:
        m = events_of(kind)
        out[kind] = {"caught": m["segments_detected"], "of": m["segments"],
                     "delay_median_s": round(m["delay_median_s"], 3), "delay_p90_s": round(m["delay_p90_s"], 3),
                     "delay_s_per_clip": {c: None if d["delay_s"][0] is None else round(d["delay_s"][0], 3)
                                          for c, d in m["per_clip"].items()}}
    return out


MATCHED_SHARES = (0.01, 0.03, 0.05)


def at_matched_shares(table: dict[str, np.ndarray], scores: np.ndarray, kinds: list[str]) -> dict[str, Any]:
    """What two settings catch when they flag the same share of normal frames: `at_threshold` at thresholds cut
    from the unseen normal frames' own quantiles. Each setting's calibrated threshold flags a share of its own, so
    catches there mix how a setting ranks with where its calibration fell; a window that ranks frames better but
    blunts a short anomaly's peak shows here as fewer clips caught."""
    normal = scores[table["kind"] == "normal"]
    return {f"{share:.0%}": pooled(at_threshold(table, scores / np.quantile(normal, 1 - share), kinds), kinds)
            for share in MATCHED_SHARES}


MATCHED_FALSE_EVENTS = (0, 1, 2)


def at_matched_false_events(table: dict[str, np.ndarray], scores: np.ndarray, kinds: list[str]) -> dict[str, Any]:
    """What two settings catch when they raise the same number of false events on the unseen normal clips (0, 1
    or 2: the clips are minutes long), what an operator counts: `at_threshold` at the lowest threshold at which
    neither it nor any higher one raises more. Equal shares of normal frames (`at_matched_shares`) can differ in
    events: one setting's flagged frames may come in runs that each open an event, another's scattered."""
    normal = np.unique(scores[table["kind"] == "normal"])[::-1]  # each lower threshold flags one more
    chosen = dict.fromkeys(MATCHED_FALSE_EVENTS, float(normal[0]))
    exceeded: set[int] = set()
    for candidate in normal:
        n = at_threshold(table, scores / candidate, [])["false_events"]
        exceeded |= {allowed for allowed in MATCHED_FALSE_EVENTS if n > allowed}
        chosen.update({allowed: float(candidate) for allowed in MATCHED_FALSE_EVENTS if allowed not in exceeded})
        if len(exceeded) == len(MATCHED_FALSE_EVENTS):
            break
    return {str(allowed): pooled(at_threshold(table, scores / threshold, kinds), kinds)
            for allowed, threshold in chosen.items()}


def pooled(m: dict[str, Any], kinds: list[str]) -> dict[str, Any]:
    """`at_threshold`'s figures over every pasted kind: false events per hour, normal frames flagged, pasted clips
    caught of all, and the p90 delay of those caught."""
    delays = [d for kind in kinds for d in m[kind]["delay_s_per_clip"].values() if d is not None]
    return {"false_events_per_hour": m["false_events_per_hour"], "normal_flagged": m["normal_flagged"],
            "caught": sum(m[kind]["caught"] for kind in kinds), "of": sum(m[kind]["of"] for kind in kinds),
            "delay_p90_s": round(float(np.quantile(delays, 0.9)), 3) if delays else None}


def summarise(table: dict[str, np.ndarray]) -> dict[str, Any]:
    """AUROC of normal against pasted frames, per fusion: pooled per kind, pooled over every kind, and per
    pasted clip (its own normal and pasted frames); crowded normal frames against quiet pasted ones; and what the
    threshold decides (`at_threshold`)."""
    fused = {name: table[name] for name in SCORERS}
    normal = table["kind"] == "normal"
    result: dict[str, Any] = {"normal_frames": int(normal.sum())}
    kinds = [kind for kind in KINDS if kind in table["kind"]]
    for kind in [*kinds, "all"]:
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
    result["at_threshold"] = {name: at_threshold(table, v, kinds) for name, v in fused.items()}
    result["at_matched_shares"] = {name: at_matched_shares(table, v, kinds) for name, v in fused.items()}
    result["at_matched_false_events"] = {name: at_matched_false_events(table, v, kinds) for name, v in fused.items()}
    result["per_clip_auroc"] = per_clip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/ucsd_ped2"))
    parser.add_argument("--out", type=Path, required=True, help="work folder: fold models and pasted clips")
    parser.add_argument("--step", type=int, default=1, help="every n-th native frame (2 = 5 fps)")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--config", type=Path, default=Path(__file__).parents[1] / "configs" / "ped2.yaml",
                        help="the fit's configuration (a setting to validate against the shipped configs/ped2.yaml)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"what is pasted, comma-separated: {', '.join(KINDS)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    kinds = args.kinds.split(",")
    if unknown := sorted(set(kinds) - set(KINDS)):
        parser.error(f"--kinds: unknown {', '.join(unknown)}; expected some of {', '.join(KINDS)}")
    table = validate(args.root, args.out, args.step, args.folds, kinds, args.config)
    np.savez(args.out / "frames.npz", **table)  # every frame's scores over their thresholds, to try other fusions
    result = {"step": args.step, **summarise(table)}
    (args.out / "fusion_validation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "per_clip_auroc"}, indent=2))


if __name__ == "__main__":
    main()
