"""Optimisation helpers shared by the trained detectors (GeneralAD, S2VAD)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[torch.Generator]:
    """Run a block with the global torch RNG seeded and restored afterwards.

    Weight initialisation and dropout draw from the global RNG, so fitting is reproducible without
    disturbing anyone else's random state; the yielded generator is for explicit sampling.
    """
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        yield gen


def warmup_cosine(total: int, warmup: int, final_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1 over `warmup` steps, then cosine down to `final_ratio`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        t = min(1.0, (step - warmup) / span)
        return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor
