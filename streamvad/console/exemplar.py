"""The nearest normal exemplar of an event: the training frame whose patch, at the event's hottest patch
position, is nearest the event's own. It shows the operator what normal looks like exactly there, the
comparison the score itself made.

Each memory row records its training frame (`frames.npy`), and `fit` keeps a small JPEG of every frame the
memory holds a row of (`exemplars/<frame>.jpg`, see offline/exemplars.py). Memories are loaded on first use
and a few are kept, since an operator reviews several events of one camera in a row. The camera page's facts
about a model (its thresholds, the scorer that decides its alerts) are read here too, from its files alone.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamvad.config import ScoringConfig
from streamvad.errors import StreamVADError
from streamvad.layout import MOTION_DIR, NORMALITY_DIR
from streamvad.model_store import json_object, version_name
from streamvad.offline.exemplars import EXEMPLARS, exemplar_path
from streamvad.scoring.engine import ModelInfo
from streamvad.types import Evidence

if TYPE_CHECKING:
    from streamvad.normality.model import NormalityModel

_KEEP = 4  # memories held at once


class Exemplars:
    def __init__(self) -> None:
        self._models: OrderedDict[Path, NormalityModel] = OrderedDict()
        self._lock = threading.Lock()

    def _model(self, model_dir: Path) -> NormalityModel:
        with self._lock:
            if model_dir in self._models:
                self._models.move_to_end(model_dir)
                return self._models[model_dir]
        # the model's code, on torch: serve's supervisor imports it on the first exemplar, not at start
        from streamvad.normality.model import NormalityModel

        model = NormalityModel.load(model_dir / NORMALITY_DIR)
        with self._lock:
            self._models[model_dir] = model
            while len(self._models) > _KEEP:
                self._models.popitem(last=False)
        return model

    def nearest(self, model_dir: Path | None, evidence: Evidence) -> dict[str, Any] | None:
        """{"path", "source", "patch", "distance", "version"} of the exemplar of the evidence's hottest patch, or
        None when the model keeps no exemplars (fitted before they were kept), is gone, or was fitted on another
        backbone than the evidence came from."""
        if model_dir is None or not (model_dir / EXEMPLARS).is_dir():
            return None
        try:
            model = self._model(model_dir)
        except (StreamVADError, OSError):
            return None
        patch = int(evidence.patches[0])
        if patch + 1 >= len(model.train) or model.train.shape[2] != evidence.vectors.shape[1]:
            return None  # another backbone's memory: the event's version was pruned, the current one differs
        memory = model.train[patch + 1].astype(np.float32)  # token 0 is the global embedding
        distances = np.sqrt(((memory - evidence.vectors[0].astype(np.float32)) ** 2).sum(1))
        row = int(np.argmin(distances))
        frame = int(model.frame_of()[patch + 1, row])
        path = exemplar_path(model_dir, frame)
        if not path.is_file():
            return None
        return {"path": path, "source": model.sources[frame], "patch": patch, "distance": float(distances[row]),
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
