"""How often `normality.index: projected` finds the exact nearest row, on real features: UCSD Ped2 *training* clips.

The memory is every frame of the first clips (up to `--rows` per token, the size of `make ped2`'s footage) in
the patch features of configs/ped2.yaml's backbone; the queries are the frames of the last `--held-out` clips,
as they are and with a fast walker pasted in (tools/motion_validation.py). For every patch query the projected
index's nearest row is compared with exact dense search. Reported: recall@1, how much farther a missed row is
than the true nearest, and the largest change of a frame's distance/topk score (mean of its top 5% patch
distances). The test clips are never read.

    python tools/projected_recall.py --root ../shared/data/ucsd_ped2 --json bench-out/projected-recall.json
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch
from motion_validation import load_clip, paste_walker
from PIL import Image
from tqdm import tqdm

from streamvad.backbones.registry import build_backbone
from streamvad.config import load_config
from streamvad.normality.projected_index import CANDIDATES, DIMS, ProjectedIndex


def embed(net: object, frames: np.ndarray) -> np.ndarray:
    """Patch features [Q, N, D] float16 of grey frames, sent as the wire sends them (JPEG q90, RGB)."""
    out = []
    for lo in range(0, len(frames), 16):
        batch = []
        for grey in frames[lo:lo + 16]:
            buf = io.BytesIO()
            Image.fromarray(grey).convert("RGB").save(buf, "JPEG", quality=90)
            batch.append(np.asarray(Image.open(buf).convert("RGB")))
        out.append(net.embed(batch).patches.astype(np.float16))  # type: ignore[attr-defined]
    return np.concatenate(out)


def frame_scores(dists: torch.Tensor) -> torch.Tensor:
    """distance/topk's frame score from patch distances [N, Q]: the mean of each frame's top 5%."""
    top = max(1, round(0.05 * dists.shape[0]))
    return dists.topk(top, dim=0).values.mean(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/data/ucsd_ped2"))
    ap.add_argument("--config", type=Path, default=Path("configs/ped2.yaml"))
    ap.add_argument("--held-out", type=int, default=2)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cfg = load_config(args.config)
    net = build_backbone(cfg.backbone.model_copy(update={"device": "cpu"}))
    clips = sorted(p for p in (args.root / "training" / "frames").iterdir() if p.is_dir())
    memory = np.concatenate([embed(net, load_clip(c, 1, wire=False)) for c in tqdm(clips[:-args.held_out],
                                                                                   desc="memory", unit="clip")])
    memory = memory[np.random.default_rng(0).permutation(len(memory))[:args.rows]]
    queries = []
    for i, clip in enumerate(clips[-args.held_out:]):
        frames = load_clip(clip, 1, wire=False)
        pasted, labels = paste_walker(frames, load_clip(clips[i], 1, wire=False), 1, seed=i + 1)
        queries += [embed(net, frames), embed(net, pasted[labels.astype(bool)])]
    train = torch.from_numpy(np.ascontiguousarray(memory.transpose(1, 0, 2)))  # [N, M, D] float16
    q = torch.from_numpy(np.concatenate(queries).transpose(1, 0, 2).astype(np.float32))  # [N, Q, D]
    index = ProjectedIndex.build(lambda lo, hi: train[lo:hi].numpy().astype(np.float32), *train.shape)
    exact = torch.cat([torch.cdist(q[lo:lo + 16], train[lo:lo + 16].float()).min(-1).values
                       for lo in range(0, len(q), 16)])
    rows = index.nearest(train, q)
    found = torch.cat([(q[lo:lo + 16] - train[lo:lo + 16].float().gather(
        1, rows[lo:lo + 16].expand(-1, -1, q.shape[2]))).norm(dim=-1) for lo in range(0, len(q), 16)])
    missed = found > exact * (1 + 1e-5)
    excess = (found[missed] / exact[missed] - 1) if missed.any() else torch.zeros(1)
    change = (frame_scores(found) / frame_scores(exact) - 1).abs()
    result = {
        "memory_rows_per_token": int(train.shape[1]), "patch_tokens": int(train.shape[0]),
        "query_frames": int(q.shape[1]), "sketch_dims": DIMS, "candidates": CANDIDATES,
        "recall_at_1": round(1 - missed.float().mean().item(), 5),
        "missed_row_excess_distance": {"median": round(excess.median().item(), 5),
                                       "max": round(excess.max().item(), 5)},
        "frame_score_max_relative_change": round(change.max().item(), 6),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
