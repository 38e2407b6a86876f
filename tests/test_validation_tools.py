"""tools/fusion_validation.py: what it pastes and how it counts events, without Ped2 (synthetic frames)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

TOOLS = Path(__file__).parents[1] / "tools"


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    sys.path.insert(0, str(TOOLS))  # the tool imports motion_validation beside it
    try:
        spec = importlib.util.spec_from_file_location("fusion_validation", TOOLS / "fusion_validation.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(TOOLS))


def grey_clip(n: int = 30) -> np.ndarray:
    """A Ped2-sized clip of a flat grey scene with a little noise, so that a pasted object is the only edge."""
    return np.random.default_rng(0).integers(100, 104, size=(n, 240, 360), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["bicycle", "crate", "face"])
def test_an_object_crosses_the_middle_third_at_a_walkers_pace(tool: ModuleType, kind: str) -> None:
    frames = grey_clip()
    pasted, labels = tool.paste(kind, frames, frames, seed=3)
    crop, fg = tool.OBJECTS[kind]()
    assert fg.any() and crop.shape == fg.shape
    assert np.flatnonzero(labels).tolist() == list(range(10, 20))  # the middle third, fully in view at this pace
    changed = (pasted != frames).any(axis=(1, 2))
    assert not changed[labels == 0].any() and changed[labels == 1].all()
    lefts = [int(np.flatnonzero((pasted[t] != frames[t]).any(axis=0))[0]) for t in range(10, 20)]
    steps = np.abs(np.diff(lefts))
    low, high = tool.OBJECT_PACE
    assert low * 1.2 - 0.5 <= steps.mean() <= high * 1.2 + 0.5  # a walker moves 1.2 px a native frame
    assert len(set(np.sign(np.diff(lefts)))) == 1  # one direction


def test_the_walker_kinds_paste_the_donors_walker_and_nothing_else(tool: ModuleType) -> None:
    frames, donor = grey_clip(), grey_clip()
    donor[10, 140:174, 100:116] = 30  # a dark walker, 2 px further right in the next frame
    donor[11, 140:174, 102:118] = 30
    for kind in tool.WALKERS:
        pasted, labels = tool.paste(kind, frames, donor, seed=1)
        t = int(np.flatnonzero(labels)[0])
        changed = pasted[t] != frames[t]
        assert changed.sum() > 100, kind
        assert set(np.unique(pasted[t][changed]).tolist()) == {30}, kind


def table_of(clips: dict[str, tuple[str, list[int], list[float]]], step: float = 0.2) -> dict[str, np.ndarray]:
    """A validation table (tool.PARTS) from clip -> (kind, labels, `sum` scores over the threshold)."""
    rows: dict[str, list[object]] = {"clip": [], "kind": [], "label": [], "pts": [], "sum": []}
    for clip, (kind, labels, scores) in clips.items():
        for i, (label, score) in enumerate(zip(labels, scores, strict=True)):
            rows["clip"].append(clip)
            rows["kind"].append(kind)
            rows["label"].append(label)
            rows["pts"].append((i + 1) * step)
            rows["sum"].append(score)
    return {key: np.asarray(v) for key, v in rows.items()}


def test_at_threshold_counts_events_as_eval_does(tool: ModuleType) -> None:
    quiet, alarm = [0.5] * 10, [0.5, 0.5, 1.5, 1.5, 1.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    table = table_of({
        "01": ("normal", [0] * 10, quiet),
        "02": ("normal", [0] * 10, alarm),  # one false alarm in 4 s of normal footage
        "01-fast": ("fast", [0] * 4 + [1] * 4 + [0] * 2, [0.5] * 5 + [2.0] * 3 + [0.5] * 2),  # caught a frame late
        "02-fast": ("fast", [0] * 4 + [1] * 4 + [0] * 2, [0.9] * 10),  # missed
    })
    out = tool.at_threshold(table, table["sum"], ["fast"])
    assert out["normal_flagged"] == pytest.approx(3 / 20)
    assert out["false_events_per_hour"] == pytest.approx(3600 / 4, rel=0.01)
    fast = out["fast"]
    assert (fast["caught"], fast["of"]) == (1, 2)
    assert fast["delay_s_per_clip"] == {"01-fast": pytest.approx(0.4), "02-fast": None}  # opened at the 2nd of 2
    assert fast["delay_median_s"] == pytest.approx(0.4)


def test_matched_shares_compare_settings_at_equal_false_alarms(tool: ModuleType) -> None:
    """Thresholds come from the unseen normal frames' own quantiles, whatever the setting's calibration said."""
    segment = [0] * 4 + [1] * 4 + [0] * 2
    table = table_of({
        "01": ("normal", [0] * 100, list(np.arange(100) / 100)),
        "01-fast": ("fast", segment, [0.5] * 4 + [2.0] * 4 + [0.5] * 2),  # above every normal frame
        "02-fast": ("fast", segment, [0.5] * 4 + [0.97] * 4 + [0.5] * 2),  # above the top 3%, not the top 1%
    })
    for scale in (1.0, 10.0):  # where the calibrated threshold fell does not matter
        out = tool.at_matched_shares(table, table["sum"] * scale, ["fast"])
        assert {share: (m["caught"], m["of"]) for share, m in out.items()} == {"1%": (1, 2), "3%": (2, 2), "5%": (2, 2)}
        assert out["1%"]["delay_p90_s"] == pytest.approx(0.2)  # opened at the second pasted frame


def test_matched_false_events_compare_settings_at_equal_false_events(tool: ModuleType) -> None:
    """The threshold for n false events is the lowest at which the unseen normal clips raise n or fewer, whatever
    the setting's calibration said: here above the higher normal spike for none, above the lower for one."""
    quiet, segment = [0.5] * 4, [0] * 4 + [1] * 4 + [0] * 2
    table = table_of({
        "01": ("normal", [0] * 10, [*quiet, 0.9, 0.9, *quiet]),  # a two-frame spike opens an event
        "02": ("normal", [0] * 10, [*quiet, 0.8, 0.8, *quiet]),
        "01-fast": ("fast", segment, [0.5] * 4 + [0.85] * 4 + [0.5] * 2),  # between the two spikes
        "02-fast": ("fast", segment, [0.5] * 4 + [0.95] * 4 + [0.5] * 2),  # above every normal frame
    })
    for scale in (1.0, 10.0):
        out = tool.at_matched_false_events(table, table["sum"] * scale, ["fast"])
        assert {n: (m["caught"], m["of"]) for n, m in out.items()} == {"0": (1, 2), "1": (2, 2), "2": (2, 2)}
        assert [out[n]["false_events_per_hour"] for n in ("0", "1", "2")] == pytest.approx(
            [0.0, 3600 / 4, 2 * 3600 / 4], rel=0.01)
        assert out["0"]["normal_flagged"] == 0.0 and out["1"]["normal_flagged"] == pytest.approx(2 / 20)
