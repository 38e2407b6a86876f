"""`streamvad doctor`: what this machine offers, so an operator can tell why a path is slow or skipped."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil

PACKAGES = ["torch", "transformers", "chromadb", "hnswlib", "hdbscan", "scikit-learn", "av", "pyzmq", "numpy",
            "openvino", "nncf", "fastapi"]  # the last three: optional runtime, and the console
TOOLS = ["ffmpeg", "gst-launch-1.0", "chromium", "chromedriver"]


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "missing"


def report() -> str:
    import torch

    lines = [f"python        {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs"]
    lines += [f"{name:<13} {_version(name)}" for name in PACKAGES]
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "none (CPU path)"
    lines.append(f"cuda          {gpu}")
    lines.append(f"torch threads {torch.get_num_threads()}")
    lines += [f"{tool:<13} {shutil.which(tool) or 'not found'}" for tool in TOOLS]
    return "\n".join(lines)
