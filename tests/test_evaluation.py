"""Evaluation: metrics against hand-computed confusion matrices and sklearn, thresholds, report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import average_precision_score, fbeta_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from streamvad.errors import InputError
from streamvad.offline.evaluation import (
    ORACLE_NOTE,
    _shade_runs,
    auroc,
    average_precision,
    binary_metrics,
    oracle_threshold,
    pr_curve,
    roc_curve,
    summary_table,
    threshold_from_normal,
    write_report,
)

LABELS = [0, 0, 0, 0, 1, 1, 1, 0, 1, 0]
SCORES = [0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.3, 0.2, 0.6, 0.5]


def test_binary_metrics_match_hand_computed_confusion_matrix() -> None:
    # > 0.45 flags 0.8(n) 0.7(a) 0.9(a) 0.6(a) 0.5(n): tp=3 fp=2; misses 0.3(a): fn=1; tn=4
    m = binary_metrics(LABELS, SCORES, 0.45)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 2, 4, 1)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["fpr"] == pytest.approx(2 / 6)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 4 / 6) / 2)
    assert m["undefined"] == []


def test_decision_is_strictly_greater_than_threshold() -> None:
    m = binary_metrics([1, 0], [0.5, 0.5], 0.5)
    assert m["tp"] == 0 and m["fp"] == 0


def test_zero_denominators_are_zero_and_listed() -> None:
    no_alarm = binary_metrics([0, 0, 1], [0.1, 0.2, 0.3], 1.0)
    assert no_alarm["precision"] == 0.0 and "precision" in no_alarm["undefined"]
    assert no_alarm["f1"] == 0.0
    all_normal = binary_metrics([0, 0], [0.1, 0.9], 0.5)
    assert all_normal["recall"] == 0.0 and "recall" in all_normal["undefined"]
    assert all_normal["fpr"] == 0.5


def test_bad_inputs_raise_input_error() -> None:
    with pytest.raises(InputError, match="equal length"):
        binary_metrics([0, 1], [0.1], 0.5)
    with pytest.raises(InputError, match="0 or 1"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(InputError, match="NaN"):
        auroc([0, 1], [0.1, math.nan])


def test_auroc_and_ap_match_sklearn_on_random_data_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.normal(size=400) + y * 0.8, 1)  # rounding forces many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))


def test_auroc_ties_count_half() -> None:
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert auroc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)


def test_single_class_gives_nan() -> None:
    assert math.isnan(auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_roc_curve_points_match_sklearn_and_thresholds_reproduce_them() -> None:
    fpr, tpr, thr = roc_curve(LABELS, SCORES)
    sk_fpr, sk_tpr, _ = sk_roc_curve(LABELS, SCORES, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    for f, t, th in zip(fpr, tpr, thr, strict=True):
        m = binary_metrics(LABELS, SCORES, th)
        assert (m["fpr"], m["recall"]) == pytest.approx((f, t))


def test_pr_curve_thresholds_reproduce_points() -> None:
    precision, recall, thr = pr_curve(LABELS, SCORES)
    assert np.all(np.diff(recall) >= 0) and recall[-1] == 1.0
    for p, r, th in zip(precision, recall, thr, strict=True):
        m = binary_metrics(LABELS, SCORES, th)
        assert (m["precision"], m["recall"]) == pytest.approx((p, r))


def test_oracle_threshold_maximises_f2_over_every_cut() -> None:
    t = oracle_threshold(LABELS, SCORES, beta=2)
    best = binary_metrics(LABELS, SCORES, t)["f2"]
    cuts = [*sorted(set(SCORES)), min(SCORES) - 1]
    all_f2 = [fbeta_score(LABELS, np.asarray(SCORES) > c, beta=2) for c in cuts]
    assert best == pytest.approx(max(all_f2))
    # here flagging everything >= 0.3 catches all 4 anomalies with 4 false alarms: F2 = 0.833
    assert best == pytest.approx(5 * 0.5 * 1.0 / (4 * 0.5 + 1.0))


def test_oracle_threshold_needs_anomalies() -> None:
    with pytest.raises(InputError, match="no anomalous"):
        oracle_threshold([0, 0], [0.1, 0.2])


def test_threshold_from_normal_bounds_false_alarms() -> None:
    normal = np.random.default_rng(1).normal(size=1000)
    t = threshold_from_normal(normal, 0.95)
    assert np.mean(normal > t) <= 0.05
    assert np.mean(normal > t) >= 0.04
    assert threshold_from_normal([1.0, 2.0, 3.0], 1.0) == 3.0
    with pytest.raises(InputError, match="quantile"):
        threshold_from_normal([1.0], 0.0)
    with pytest.raises(InputError, match="non-empty"):
        threshold_from_normal([], 0.9)


def _is_png(path) -> bool:
    with Image.open(path) as img:
        img.verify()
        return img.format == "PNG"


def test_write_report_files_and_keys(tmp_path) -> None:
    per_clip = {
        "a": {"labels": LABELS[:5], "scores": SCORES[:5], "pts": [0.0, 0.25, 0.5, 0.75, 1.0]},
        "b": {"labels": LABELS[5:], "scores": SCORES[5:]},
    }
    report = write_report(tmp_path / "out", labels=LABELS, scores=SCORES, threshold=0.45, oracle=True,
                          per_clip=per_clip, extra={"dataset": "toy"})
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved == report
    for key in ("precision", "recall", "fpr", "specificity", "f1", "balanced_accuracy", "auroc",
                "threshold", "n_normal", "n_anomalous", "average_precision"):
        assert key in saved
    assert (saved["n_normal"], saved["n_anomalous"], saved["dataset"]) == (6, 4, "toy")
    assert saved["auroc"] == pytest.approx(roc_auc_score(LABELS, SCORES))
    assert saved["oracle"]["note"] == ORACLE_NOTE
    assert saved["oracle"]["f2"] >= binary_metrics(LABELS, SCORES, 0.45)["f2"]
    assert saved["per_clip_auroc"]["a"] == pytest.approx(roc_auc_score(LABELS[:5], SCORES[:5]))
    for name in ("roc.png", "pr.png", "scores.png", "hist.png"):
        assert _is_png(tmp_path / "out" / name)


def test_write_report_single_class_writes_null_auroc(tmp_path) -> None:
    report = write_report(tmp_path, labels=[0, 0, 0], scores=[0.1, 0.2, 0.3], threshold=0.5, oracle=True)
    assert report["auroc"] is None and report["average_precision"] is None
    assert "not computed" in report["oracle"]["note"]
    assert json.loads((tmp_path / "metrics.json").read_text())["auroc"] is None
    assert _is_png(tmp_path / "roc.png")


def test_write_report_rejects_extra_that_overwrites_a_metric(tmp_path) -> None:
    with pytest.raises(InputError, match="overwrite"):
        write_report(tmp_path, labels=[0, 1], scores=[0.1, 0.9], threshold=0.5, extra={"f1": 1.0})


def test_summary_table_aligns_columns() -> None:
    text = summary_table([{"model": "knnn", "auroc": 0.91234, "fp": 3},
                          {"model": "global", "auroc": None, "fp": 12}], columns=None)
    lines = text.splitlines()
    assert lines[0].split() == ["model", "auroc", "fp"]
    assert lines[2].split() == ["knnn", "0.912", "3"]
    assert lines[3].split() == ["global", "-", "12"]
    assert len({len(line) for line in lines[1:]}) == 1  # numbers right-aligned to one width
    assert summary_table([]) == "(no results)"


def test_summary_table_shows_headline_columns_by_default() -> None:
    text = summary_table([{"scorer": "topk", "auroc": 0.9, "tp": 4, "f1": 0.5, "per_clip_auroc": {"a": 1.0}}])
    assert text.splitlines()[0].split() == ["scorer", "auroc", "f1"]


def test_the_score_plot_shades_a_labelled_run_up_to_the_next_frame() -> None:
    # 4 fps sampled from 10 fps footage: the run's last frame (pts 0.5) stands for the stream up to 0.8, not for the
    # median step (0.25)
    ax = Figure().add_subplot()
    _shade_runs(ax, np.array([0.0, 0.3, 0.5, 0.8, 1.0]), np.array([0, 1, 1, 0, 0]))
    [run] = ax.patches
    assert (run.get_bbox().x0, run.get_bbox().x1) == pytest.approx((0.3, 0.8))
