"""Config files: every shipped YAML loads, and ${VAR} placeholders expand in values only."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamvad.config import ScoringConfig, load_config
from streamvad.console.auth import hash_password
from streamvad.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WEBHOOK_SECRET", "RTSP_USER", "RTSP_PASS"):  # live.yaml's placeholders without a default
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("STREAMVAD_TOKEN", "a-token-of-sixteen-or-more")
    monkeypatch.setenv("OPS_PASSWORD_HASH", hash_password("an example password"))
    cfg = load_config(path)
    assert cfg.scoring.method in ("distance", "knnn", "hdbscan", "nnn")


def test_placeholders_expand_in_values_not_comments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "# ${UNSET_IN_A_COMMENT} is documentation, not a placeholder\n"
        "model_dir: ${MODEL_DIR:-/data/model}\n"
        "scoring:\n"
        "  frame_threshold: ${THRESHOLD:-null}   # a lone placeholder is typed like YAML\n"
        "transport:\n"
        "  frames: tcp://${HOST:-events}:${PORT}\n"
        "  hwm: ${HWM}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("PORT", "5555")
    monkeypatch.setenv("HWM", "32")
    cfg = load_config(path)
    assert str(cfg.model_dir) == "/data/model"
    assert cfg.scoring.frame_threshold is None
    assert cfg.transport.frames == "tcp://events:5555" and cfg.transport.hwm == 32
    monkeypatch.setenv("THRESHOLD", "0.7")
    monkeypatch.setenv("HOST", "a: b")  # never turns into YAML structure
    cfg = load_config(path)
    assert cfg.scoring.frame_threshold == 0.7 and cfg.transport.frames == "tcp://a: b:5555"
    monkeypatch.delenv("HWM")
    with pytest.raises(ConfigError, match=r"c\.yaml: environment variable \$\{HWM\} is not set"):
        load_config(path)


def test_the_decision_threshold_is_the_set_one_then_the_calibrated_one_then_a_votes() -> None:
    """The order the worker's scorer decides by and the console shows: one set in the config overrides the model's
    calibration, and a voting rule the model never calibrated votes at its patch threshold; a rule with neither
    has none (the scorer then refuses to start)."""
    calibrated = {"distance/topk": 1.25, "knnn/majority": 0.9}
    assert ScoringConfig().decision_threshold(calibrated) == 1.25
    assert ScoringConfig(frame_threshold=2.0).decision_threshold(calibrated) == 2.0
    assert ScoringConfig(method="knnn", rule="majority").decision_threshold(calibrated) == 0.9
    assert ScoringConfig(method="distance", rule="any_k", patch_threshold=0.7).decision_threshold(calibrated) == 0.7
    assert ScoringConfig(method="knnn", rule="global").decision_threshold(calibrated) is None
