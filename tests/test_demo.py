"""`streamvad demo` end to end, as the README's first command runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamvad.demo import run_demo


@pytest.mark.slow
def test_demo_fits_evaluates_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(tmp_path, progress=False) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in ("distance/topk", "knnn/majority", "knnn/global"))
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["scorer"] == "distance/topk"
    assert metrics["auroc"] > 0.9  # a person on the lawn and a cart on the walkway are clear anomalies
    for plot in ("roc.png", "pr.png", "scores.png", "hist.png"):
        assert (tmp_path / "report" / plot).is_file()
    assert list((tmp_path / "report" / "heatmaps").rglob("*.jpg"))
