"""Fleet mode of `bench throughput`: N cameras on N models against N cameras on one model, in one run.

What per-camera models cost a worker: every batch still has one backbone forward pass, but its rows are
scored in one search per model instead of one search for all, and each model's memory is its own (no
cache shared between cameras). Both runs use EfficientNet-Lite0 (real weights, multi-scale features as in
configs/ped2.yaml) at Ped2's 240x352 input (15x22 = 330 patches, D 432) and models of Ped2's size: fitted on
`train_vectors` frames per token (~2,000 in `make ped2`) and served as `fit` serves them, within
`normality.memory_budget_mb` (the per-token coreset; `memory_budget_mb` None keeps every vector).

Fitting N models of that size on CPU would take hours, so one model is fitted on synthetic normal footage
and grown to the served rows per token by resampling its rows with a little noise; each of the N copies gets
its own noise, so the worker holds N distinct memories of the real size. Search cost depends on the sizes,
not on what the rows mean; the motion part comes from the fit unchanged.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from streamvad.bench import environment
from streamvad.bench.throughput import _CLIP_FPS, _CLIP_SIZE, CAMERA_FPS, PLACE, fit_small_model, measure
from streamvad.config import BackboneConfig, NormalityConfig
from streamvad.datasets.synthetic import make_scene
from streamvad.layout import MOTION_DIR, NORMALITY_DIR
from streamvad.motion.model import motion_memory_bound
from streamvad.normality.model import NormalityModel, memory_rows, serving_memory
from streamvad.scoring.engine import ModelInfo

log = logging.getLogger(__name__)

PED2_INPUT = (240, 352)
FLEET_ROUNDS = 3  # runs per layout; one 30 s run's capacity moved by up to 31% with the load of a 2-core box


def grow_model(source: Path, out: Path, train_vectors: int, seed: int, index: str = "dense") -> Path:
    """A copy of the model in `source` whose memory holds `train_vectors` rows per token: rows resampled
    from the fitted ones plus Gaussian noise (1% of the features' spread), their densities and clusters
    carried along; served by exact search or by the `index` (normality.index) built on the grown rows."""
    model = NormalityModel.load(source / NORMALITY_DIR)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, model.n_train, train_vectors)
    spread = float(model.train.std(dtype=np.float64))
    train = model.train[:, rows] + rng.normal(0.0, 0.01 * spread, (model.n_tokens, train_vectors, model.dim))
    model.train = serving_memory(train)
    model.clusters, model.loc_dens = model.clusters[:, rows], model.loc_dens[:, rows]
    model.sources = [model.sources[r] for r in rows]
    model.nnn = None  # the original k-NNN's tables would be the copied rows'; built on first use if asked for
    model.config = model.config.model_copy(update={"index": index})
    model.rebuild_indexes()
    out.mkdir(parents=True)
    model.save(out / NORMALITY_DIR, write_chroma=False)
    if (source / MOTION_DIR).is_dir():
        shutil.copytree(source / MOTION_DIR, out / MOTION_DIR)
    ModelInfo.load(source).save(out)  # last: it records the checksums of the grown files
    log.info("bench fleet: model %s ready (%d vectors per token, %s search)", out.name, train_vectors, index)
    return out


def served_vectors(train_vectors: int, n_tokens: int, dim: int, memory_budget_mb: float | None,
                   motion_bytes: int) -> int:
    """Rows per token that `fit` keeps of `train_vectors` training frames within the budget (motion included)."""
    if memory_budget_mb is None:
        return train_vectors
    cfg = NormalityConfig(memory_budget_mb=memory_budget_mb)
    budget = int(memory_budget_mb * 2**20) - motion_bytes
    return min(train_vectors, memory_rows(budget, n_tokens, dim, cfg, dim, train_vectors))


def run_fleet_bench(cameras: int = 8, seconds: float = 20.0, *, train_vectors: int = 2000,
                    memory_budget_mb: float | None = NormalityConfig().memory_budget_mb, max_batch: int = 16,
                    device: str = "auto", index: str = "dense", rounds: int = FLEET_ROUNDS) -> dict[str, Any]:
    """Capacity (unpaced readers, policy block) of one worker with `cameras` cameras sharing one model and
    with one model per camera, and the relative cost of the second: the median of `rounds` runs of each. With
    an `index`, the shared model is also measured on exact dense search (the same rows), the default the index
    has to beat."""
    backbone = BackboneConfig(name="efficientnet-lite0-ms", image_size=PED2_INPUT, device=device, batch_size=max_batch)
    with tempfile.TemporaryDirectory(prefix="streamvad-fleet-") as tmp:
        work = Path(tmp)
        clip = make_scene(work / "clips", seconds=10, fps=_CLIP_FPS, size=_CLIP_SIZE, seed=7, place_seed=PLACE,
                          name="live").path
        fitted = fit_small_model(backbone, work / "fit", seconds=20.0)
        small = NormalityModel.load(fitted / NORMALITY_DIR)
        rows = served_vectors(train_vectors, small.n_tokens, small.dim, memory_budget_mb,
                              motion_memory_bound(small.grid, NormalityConfig().motion))  # the fit's settings
        log.info("bench fleet: fitting a model, then growing %d copies to %d vectors per token (%d training "
                 "frames within %s MiB), %s search", cameras, rows, train_vectors, memory_budget_mb, index)
        models = [grow_model(fitted, work / f"model-{i}", rows, seed=i, index=index) for i in range(cameras)]
        model_bytes = int(sum(f.stat().st_size for f in (models[0] / NORMALITY_DIR).rglob("*") if f.is_file()))
        layouts = {"shared_model": models[:1], "model_per_camera": models}
        if index != "dense":
            layouts["shared_model_dense"] = [grow_model(fitted, work / "model-0-dense", rows, seed=0)]
        # the layouts alternate round by round, so the box's drift over the bench hits each alike
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in layouts}
        for _ in range(rounds):
            for name, served in layouts.items():
                runs[name].append(measure(served, backbone, clip, cameras, seconds, paced=False,
                                          max_batch=max_batch))
    capacity = {name: float(np.median([r["frames_per_s"] for r in done])) for name, done in runs.items()}
    ratio = _ratio(capacity["model_per_camera"], capacity["shared_model"])
    result = {
        "environment": environment(), "camera_fps": CAMERA_FPS,
        "settings": {"cameras": cameras, "seconds": seconds, "rounds": rounds, "train_vectors": train_vectors,
                     "memory_budget_mb": memory_budget_mb, "served_vectors_per_token": rows, "index": index,
                     "max_batch": max_batch,
                     "backbone": backbone.model_dump(mode="json"), "model_bytes_on_disk": model_bytes},
        **{name: {"capacity_frames_per_s": capacity[name], "runs": done} for name, done in runs.items()},
        "capacity_ratio": ratio,
        "cost_of_per_camera_models": round(1.0 - ratio, 3),
    }
    if "shared_model_dense" in capacity:
        result["capacity_ratio_to_shared_dense"] = _ratio(capacity["model_per_camera"], capacity["shared_model_dense"])
    return result


def _ratio(capacity: float, base: float) -> float:
    return round(capacity / base, 3) if base else float("nan")
