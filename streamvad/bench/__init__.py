"""Benchmarks that back the project's performance claims; each returns a plain dict of figures."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def environment() -> dict[str, Any]:
    """Where a figure was measured: timings mean little without the machine they came from."""
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_json(result: dict[str, Any], path: str | Path | None = None) -> str:
    """The result as indented JSON; also written to `path` (parent folders created) when given."""
    text = json.dumps(result, indent=2, sort_keys=True, default=str)
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n", encoding="utf-8")
    return text
