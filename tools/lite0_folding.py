"""What folding Lite0's BatchNorms into its convolutions saves on this box: the network alone, as served against as
published (`EfficientNetLite0.fuse`), on the same random batch, the two alternated so that both see the same load.

Reported per input size: the median milliseconds per frame of each over `--rounds` rounds, their ratio, and the
largest difference of the maps the backbone keeps relative to their largest value.

    python tools/lite0_folding.py --json bench-out/lite0-folding.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from streamvad.backbones.efficientnet_lite import (
    STRIDE16_BLOCK,
    STRIDE32_BLOCK,
    EfficientNetLite0,
    default_weights_path,
    load_lite0_weights,
)


def compare(size: tuple[int, int], batch: int, rounds: int) -> dict[str, float]:
    published = load_lite0_weights(EfficientNetLite0(), default_weights_path()).eval()
    served = load_lite0_weights(EfficientNetLite0(), default_weights_path()).eval().fuse()
    nets = {name: net.to(memory_format=torch.channels_last).requires_grad_(False)
            for name, net in (("published", published), ("served", served))}
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    keep = {STRIDE16_BLOCK, STRIDE32_BLOCK}
    times: dict[str, list[float]] = {name: [] for name in nets}
    with torch.inference_mode():
        maps = {name: net.features(x, keep)[0] for name, net in nets.items()}  # also the warm-up
        for _ in range(rounds):
            for name, net in nets.items():
                start = time.perf_counter()
                net.features(x, keep)
                times[name].append(time.perf_counter() - start)
    ms = {name: 1000 * float(np.median(t)) / batch for name, t in times.items()}
    gap = max(float((maps["served"][b] - m).abs().max() / m.abs().max()) for b, m in maps["published"].items())
    return {"published_ms_per_frame": round(ms["published"], 2), "served_ms_per_frame": round(ms["served"], 2),
            "ratio": round(ms["served"] / ms["published"], 3), "max_relative_difference": gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {"torch_threads": torch.get_num_threads(), "batch": args.batch, "rounds": args.rounds,
              "sizes": {f"{h}x{w}": compare((h, w), args.batch, args.rounds) for h, w in ((240, 352), (224, 224))}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
