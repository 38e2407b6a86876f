"""`streamvad demo` end to end, as the README's first command runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamvad.offline.demo import run_demo


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a hang guard, not a speed target: about 3 min alone, twice that on a busy box
def test_demo_fits_evaluates_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(tmp_path, progress=False) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in ("distance/topk+motion", "distance/topk", "motion", "knnn/majority"))
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["scorer"] == "distance/topk+motion"  # the default: what `fit` produces and `serve` runs
    assert metrics["auroc"] > 0.9
    assert metrics["events"]["segments"] == 8 and "holdout_events" in metrics
    kinds = json.loads((tmp_path / "report" / "detections_by_kind.json").read_text())
    # the cyclist and the wrong-way walker look like walkers: motion catches them, appearance alone does not
    assert kinds["distance/topk+motion"] == {kind: [2, 2] for kind in ("lawn_walker", "object", "cyclist",
                                                                       "wrong_way")}
    appearance = kinds["distance/topk"]
    assert appearance["cyclist"][0] + appearance["wrong_way"][0] < 4
    for plot in ("roc.png", "pr.png", "scores.png", "hist.png"):
        assert (tmp_path / "report" / plot).is_file()
    assert list((tmp_path / "report" / "heatmaps").rglob("*.jpg"))
