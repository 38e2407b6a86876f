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

    rows = [("python", f"{platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")]
    rows += [(name, _version(name)) for name in PACKAGES]
    rows.append(("cuda", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU path)"))
    rows.append(("torch threads", str(torch.get_num_threads())))
    rows += [(tool, shutil.which(tool) or "not found") for tool in TOOLS]
    # runs/ (events, media, models) lives under the working folder by default, and a full disk stops event media
    cwd = os.getcwd()
    rows.append(("disk free", f"{shutil.disk_usage(cwd).free / 2**30:.1f} GB under {cwd}"))
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(f"{label:<{width}}{value}" for label, value in rows)
