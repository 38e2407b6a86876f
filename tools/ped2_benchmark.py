"""UCSD Ped2 quality benchmark: every k-NNN rule and every image detector on cached embeddings.

    python tools/ped2_benchmark.py --root ../shared/data/ucsd_ped2 --out /tmp/ped2-bench --cache /tmp/ped2-cache

Frames are embedded once (EfficientNet-Lite0, configs/ped2.yaml) with every feature any method needs
and cached under --cache (never in the repository); a second run with the same settings skips the
embedding. Writes results.json and results.md to --out and prints the markdown table. The detectors'
paper settings are scaled down for a CPU (see `detector_sections`); the JSON records exactly what ran.
See streamvad/bench/quality.py for what is measured and how thresholds are calibrated.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from streamvad.backbones.registry import build_backbone
from streamvad.bench import write_json
from streamvad.bench.quality import (
    BenchSettings,
    CutPaste,
    Features,
    embed_clips,
    make_cutpaste,
    markdown_table,
    normal_rows,
    required_layers,
    run_benchmark,
)
from streamvad.config import load_config
from streamvad.datasets.base import Clip, load_dataset
from streamvad.detectors.config import GeneralADConfig, S2VADConfig, UniformalyConfig
from streamvad.errors import ConfigError, StreamVADError

log = logging.getLogger("ped2_benchmark")

# EfficientNet-Lite0 has 16 blocks; 0-indexed reference blocks 6..7 map (scale_layers) to blocks 9 and
# 11, both 112 channels at stride 16: UniFormaly and S2VAD average layers, so they need one width.
SAME_WIDTH_BLOCKS = {"first_block": 6, "last_block": 7}


def detector_sections(args: argparse.Namespace) -> dict[str, BaseModel]:
    """Each detector's config, its paper defaults scaled for a 2-core CPU run."""
    sections: dict[str, BaseModel] = {
        # no CLS attention in a CNN: no back-patch masking; a smaller coreset keeps greedy k-center cheap
        "uniformaly": UniformalyConfig(**SAME_WIDTH_BLOCKS, masking=False, coreset_ratio=args.coreset_ratio),
        # scene-level anomalies: paper K=10 logits of 330 patches kept; fewer epochs, smaller MLP
        "generalad": GeneralADConfig(epochs=args.epochs, hidden_dim=args.generalad_hidden),
        # 112 channels: 8 heads of 14; shorter decoder and schedule
        "s2vad": S2VADConfig(**SAME_WIDTH_BLOCKS, num_heads=8, decoder_depth=args.s2vad_depth,
                             iterations=args.iterations, warmup_iters=max(1, args.iterations // 10),
                             hard_mining_ramp=max(1, args.iterations // 2)),
    }
    unknown = sorted(set(args.detectors) - set(sections))
    if unknown:
        raise ConfigError(f"--detectors: unknown {', '.join(unknown)}; expected a comma list of "
                          f"{', '.join(sections)}")
    return {name: sections[name] for name in args.detectors}


def cached(folder: Path, meta: dict[str, Any], make: Callable[[], Features]) -> Features:
    """Features from the cache when made with the same `meta`, else made, saved and re-read memory-mapped."""
    feats = Features.load(folder, meta)
    if feats is None:
        feats = make()
        feats.save(folder, meta)
        feats = Features.load(folder, meta)  # memory-mapped from here on
    assert feats is not None
    return feats


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("../shared/data/ucsd_ped2"), help="UCSD Ped2 folder")
    p.add_argument("--out", type=Path, default=Path("/tmp/ped2-bench"), help="results.json / results.md go here")
    p.add_argument("--cache", type=Path, default=Path("/tmp/ped2-cache"), help="embedding cache (not the repo)")
    p.add_argument("--config", type=Path, default=Path(__file__).parent.parent / "configs" / "ped2.yaml")
    p.add_argument("--detectors", type=lambda s: [x for x in s.split(",") if x],
                   default=["uniformaly", "generalad", "s2vad"], help="comma list; empty string: k-NNN only")
    p.add_argument("--epochs", type=int, default=2, help="GeneralAD epochs (paper: 160)")
    p.add_argument("--generalad-hidden", type=int, default=512, help="GeneralAD MLP width (paper: 2048)")
    p.add_argument("--iterations", type=int, default=300, help="S2VAD iterations (paper: 5k-10k)")
    p.add_argument("--s2vad-depth", type=int, default=4, help="S2VAD decoder blocks (paper: 8)")
    p.add_argument("--coreset-ratio", type=float, default=0.002, help="UniFormaly coreset ratio (paper: 0.01-0.1)")
    p.add_argument("--smooth", type=lambda s: tuple(int(x) for x in s.split(",") if x), default=(5, 9),
                   help="causal moving-average windows (frames) evaluated as extra variants")
    p.add_argument("--pixel-frames", type=int, default=48, help="normal test frames given a cut-paste anomaly")
    p.add_argument("--train-clips", type=int, default=0, help="use only the first N training clips (0: all)")
    p.add_argument("--test-clips", type=int, default=0, help="use only the first N test clips (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    progress = not args.no_progress
    try:
        cfg = load_config(args.config)
        split = load_dataset("ucsd", args.root)
        train_clips = split.train[: args.train_clips or None]
        test_clips = split.test[: args.test_clips or None]
        settings = BenchSettings(normality=cfg.normality, scoring=cfg.scoring, detectors=detector_sections(args),
                                 smoothing=args.smooth)
        t0 = time.perf_counter()
        backbone = build_backbone(cfg.backbone)
        layers = required_layers(settings, backbone.num_layers)
        base = {"backbone": backbone.manifest(), "layers": list(layers), "root": str(args.root.resolve()),
                "wire": [cfg.transport.frame_max_side, cfg.transport.jpeg_quality]}  # as `make ped2` sees frames
        timings: dict[str, float] = {}

        def embed(clips: list[Clip], desc: str) -> Features:
            t = time.perf_counter()
            feats = embed_clips(backbone, clips, layers, progress, desc, transport=cfg.transport)
            timings[f"embed_{desc}_s"] = time.perf_counter() - t
            timings[f"embed_{desc}_frames_per_s"] = len(feats) / timings[f"embed_{desc}_s"]
            return feats

        train = cached(args.cache / "train", {**base, "clips": [c.name for c in train_clips]},
                       lambda: embed(train_clips, "train"))
        test = cached(args.cache / "test", {**base, "clips": [c.name for c in test_clips]},
                      lambda: embed(test_clips, "test"))
        rows = normal_rows(test.labels, args.pixel_frames)
        cut_meta = {**base, "clips": [c.name for c in test_clips], "rows": rows.tolist(), "seed": args.seed}
        cut_dir = args.cache / "cutpaste"
        cut_feats = Features.load(cut_dir, cut_meta)
        if cut_feats is None or not (cut_dir / "masks.npy").is_file():
            cut = make_cutpaste(backbone, test_clips, rows, layers, args.seed, transport=cfg.transport)
            cut.features.save(cut_dir, cut_meta)
            np.save(cut_dir / "masks.npy", cut.masks)
        cut = CutPaste(Features.load(cut_dir, cut_meta), np.load(cut_dir / "masks.npy"), rows)  # type: ignore[arg-type]
        timings["prepare_s"] = time.perf_counter() - t0
        args.out.mkdir(parents=True, exist_ok=True)
        result = run_benchmark(train, len(train_clips), test, cut, settings, num_layers=backbone.num_layers,
                               backbone=backbone.manifest(), progress=progress,
                               scores_out=args.out / "scores.npz")
        timings["total_s"] = time.perf_counter() - t0
    except StreamVADError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result["timings"] = timings
    result["command"] = " ".join(["python tools/ped2_benchmark.py", *(argv if argv is not None else sys.argv[1:])])
    result["layers"] = list(layers)
    write_json(result, args.out / "results.json")
    table = markdown_table(result)
    (args.out / "results.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    log.info("results written to %s (results.json, results.md, scores.npz)", args.out)
    print(f"best by test AUROC (reporting only): {result['best_by_test_auroc']}; "
          f"timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
