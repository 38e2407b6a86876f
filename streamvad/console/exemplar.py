"""The nearest normal exemplar of an event: the training frame whose patch, at the event's hottest patch
position, is nearest the event's own. It shows the operator what normal looks like exactly there, the
comparison the score itself made.

Each memory row records its training frame (`frames.npy`), and `fit` keeps a small JPEG of every frame the
memory holds a row of (`exemplars/<frame>.jpg`, see offline/exemplars.py). Memories are mapped from their files
on first use, without the model's libraries (normality/memory_files.py: serve's supervisor, where the console
runs, never imports torch), and a few are kept, since an operator reviews several events of one camera in a
row. The camera page's facts about a model (its thresholds, the scorer that decides its alerts) are read here
too, from its files alone.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from streamvad.config import ScoringConfig
from streamvad.errors import StreamVADError
from streamvad.layout import MOTION_DIR, NORMALITY_DIR
from streamvad.model_store import json_object, version_name
from streamvad.normality.memory_files import read_memory
from streamvad.offline.exemplars import EXEMPLARS, exemplar_path
from streamvad.scoring.engine import ModelInfo
from streamvad.types import Evidence, NormalMemory

_KEEP = 4  # memories held at once


class Exemplars:
    def __init__(self) -> None:
        self._memories: OrderedDict[Path, NormalMemory] = OrderedDict()
        self._lock = threading.Lock()

    def _memory(self, model_dir: Path) -> NormalMemory:
        with self._lock:
            if model_dir in self._memories:
                self._memories.move_to_end(model_dir)
                return self._memories[model_dir]
        memory = read_memory(model_dir / NORMALITY_DIR)
        with self._lock:
            self._memories[model_dir] = memory
            while len(self._memories) > _KEEP:
                self._memories.popitem(last=False)
        return memory

    def nearest(self, model_dir: Path | None, evidence: Evidence) -> dict[str, Any] | None:
        """{"path", "source", "patch", "distance", "version"} of the exemplar of the evidence's hottest patch, or
        None when the model keeps no exemplars (fitted before they were kept), is gone, or was fitted on another
        backbone than the evidence came from."""
        if model_dir is None or not (model_dir / EXEMPLARS).is_dir():
            return None
        try:
            memory = self._memory(model_dir)
        except (StreamVADError, OSError):
            return None
        patch = int(evidence.patches[0])
        if patch + 1 >= len(memory.train) or memory.train.shape[2] != evidence.vectors.shape[1]:
            return None  # another backbone's memory: the event's version was pruned, the current one differs
        rows = memory.train[patch + 1].astype(np.float32)  # token 0 is the global embedding
        distances = np.sqrt(((rows - evidence.vectors[0].astype(np.float32)) ** 2).sum(1))
        row = int(np.argmin(distances))
        frame = int(memory.frames[patch + 1, row])
        path = exemplar_path(model_dir, frame)
        if not path.is_file():
            return None
        return {"path": path, "source": memory.sources[frame], "patch": patch, "distance": float(distances[row]),
                "version": version_name(model_dir)}

    @staticmethod
    def scoring(model_dir: Path, served: ScoringConfig | None) -> tuple[dict[str, float], str | None, dict[str, float]]:
        """Every threshold the model calibrated (appearance rules from the normality manifest, and motion); the
        scorer that decides the camera's alerts, named as `eval --rules` names it ("distance/topk+motion:sum"); and
        the thresholds that decide with it: what an operator asks first, where the model also calibrates rules it
        is not served with. `served`: the site's scoring (`served_scoring`), else the model's own, as the worker
        decides. Fused, the deciding thresholds are the crowd-corrected appearance's and motion's (each part's 1 on
        the fusion scale) and, for `sum`, the sum's own (motion/fusion.py). No scorer for an image detector or an
        unreadable model.json."""
        manifest = json_object(model_dir / NORMALITY_DIR / "manifest.json")
        motion = json_object(model_dir / MOTION_DIR / "motion.json")
        found = {**manifest.get("thresholds", {}), "motion": motion.get("threshold")}
        thresholds = {str(k): float(v) for k, v in found.items() if isinstance(v, int | float)}
        try:
            info = ModelInfo.load(model_dir)
        except StreamVADError:
            return thresholds, None, {}
        if info.kind != "knnn":
            return thresholds, info.kind, {}
        scoring = served or info.scoring
        appearance = f"{scoring.method}/{scoring.rule}"
        if "motion" not in thresholds or scoring.motion == "appearance":
            own = scoring.decision_threshold(thresholds)
            return thresholds, appearance, {} if own is None else {appearance: own}
        if scoring.motion == "motion":
            return thresholds, "motion", {"motion": thresholds["motion"]}
        sums, looks = motion.get("sum_thresholds", {}), motion.get("appearance_thresholds", {})
        fusion = "sum" if scoring.fusion == "sum" and appearance in sums else "max"  # older models: max (kinds)
        parts = {f"{appearance}, crowd-corrected": looks.get(appearance, thresholds.get(appearance)),
                 "motion": thresholds["motion"], "sum": sums.get(appearance) if fusion == "sum" else None}
        return thresholds, f"{appearance}+motion:{fusion}", {k: float(v) for k, v in parts.items() if v is not None}
