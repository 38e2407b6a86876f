"""Frame-level evaluation: metrics, threshold selection and the report (metrics.json + PNG plots).

One decision rule everywhere: a frame is anomalous when `score > threshold` (the study's rule for
patch confidences, reused for frames). Curves and the oracle threshold use the same rule, so a
threshold read off a curve or chosen by `oracle_threshold` reproduces the reported point exactly.

Two thresholds are kept apart on purpose. `threshold_from_normal` uses only normal footage and is
what a deployment can actually do; `oracle_threshold` picks the best F-beta on the *test labels*
(what the reproduced study reported) and is always labelled as such, because it flatters results.

Ratios whose denominator is zero (precision with no alarms, recall with no anomalies, ...) are
defined as 0 and listed under "undefined", rather than crashing or silently becoming NaN.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import rankdata

from streamvad.errors import InputError
from streamvad.offline.event_metrics import frame_spans

logger = logging.getLogger(__name__)

ORACLE_NOTE = "oracle (uses test labels)"
DECISION_RULE = "anomalous if score > threshold"
_MAX_TIMELINES = 12  # clips drawn in scores.png; more would make each panel unreadable

ArrayLike = Sequence[float] | Sequence[int] | np.ndarray


def _as_arrays(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate a labels/scores pair: same length, labels in {0, 1}, finite scores."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise InputError(f"evaluation: labels {y.shape} and scores {s.shape} must be 1-D of equal length")
    if y.size and not np.isin(y, (0, 1)).all():
        raise InputError(f"evaluation: labels must be 0 or 1, got values {sorted(set(y.tolist()) - {0, 1})}")
    if not np.isfinite(s).all():
        raise InputError(f"evaluation: {int((~np.isfinite(s)).sum())} scores are NaN or infinite")
    return y.astype(np.int64), s


def _ratio(num: float, den: float, name: str, undefined: list[str]) -> float:
    if den == 0:
        undefined.append(name)
        return 0.0
    return num / den


def fbeta(precision: float, recall: float, beta: float = 1.0) -> float:
    """F-beta from precision and recall; 0 when both are 0."""
    b2 = beta * beta
    den = b2 * precision + recall
    return (1 + b2) * precision * recall / den if den > 0 else 0.0


def binary_metrics(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, Any]:
    """Confusion matrix and the ratios derived from it at one threshold (`score > threshold`)."""
    y, s = _as_arrays(labels, scores)
    pred = s > threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    undefined: list[str] = []
    precision = _ratio(tp, tp + fp, "precision", undefined)
    recall = _ratio(tp, tp + fn, "recall", undefined)
    fpr = _ratio(fp, fp + tn, "fpr", undefined)
    specificity = _ratio(tn, tn + fp, "specificity", undefined)
    accuracy = _ratio(tp + tn, y.size, "accuracy", undefined)
    return {
        "threshold": float(threshold),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "precision": precision,
        "recall": recall,
        "fpr": fpr,
        "specificity": specificity,
        "f1": fbeta(precision, recall, 1.0),
        "f2": fbeta(precision, recall, 2.0),
        "balanced_accuracy": (recall + specificity) / 2,
        "accuracy": accuracy,
        "undefined": undefined,  # ratios with a zero denominator, reported as 0
    }


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (tied scores count one half).

    Returns NaN (and logs a warning) when one class is missing, since the area is then undefined.
    """
    y, s = _as_arrays(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        logger.warning("AUROC undefined: %d anomalous and %d normal frames (need both)", n_pos, n_neg)
        return math.nan
    ranks = rankdata(s)  # average ranks: ties handled
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _cumulative_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP and FP counts when flagging every score >= each distinct score, highest first."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]
    tps = np.cumsum(y_sorted)[last_of_group]
    fps = (last_of_group + 1) - tps
    return tps, fps, s_sorted[last_of_group]


def _thresholds_below(distinct_desc: np.ndarray) -> np.ndarray:
    """Thresholds t such that `score > t` flags exactly the scores >= each distinct score."""
    lower = np.r_[distinct_desc[1:], np.nextafter(distinct_desc[-1], -np.inf)]
    return lower


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr, thresholds) from (0, 0) to (1, 1); point i flags `score > thresholds[i]`."""
    y, s = _as_arrays(labels, scores)
    if y.size == 0:
        raise InputError("evaluation: cannot draw a ROC curve from zero frames")
    tps, fps, distinct = _cumulative_counts(y, s)
    n_pos, n_neg = max(int(y.sum()), 1), max(y.size - int(y.sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[distinct[0], _thresholds_below(distinct)]
    return fpr, tpr, thresholds


def pr_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall points, recall increasing; point i flags `score > thresholds[i]`."""
    y, s = _as_arrays(labels, scores)
    if y.size == 0:
        raise InputError("evaluation: cannot draw a PR curve from zero frames")
    tps, fps, distinct = _cumulative_counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / max(int(y.sum()), 1)
    return precision, recall, _thresholds_below(distinct)


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Step-wise area under the PR curve, sum of (R_k - R_k-1) * P_k (sklearn's definition).

    NaN (with a warning) when there is no anomalous frame, since recall is then undefined.
    """
    y, _ = _as_arrays(labels, scores)
    if y.sum() == 0:
        logger.warning("average precision undefined: no anomalous frames")
        return math.nan
    precision, recall, _ = pr_curve(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_from_normal(normal_scores: ArrayLike, quantile: float = 0.99) -> float:
    """The deployable threshold: the `quantile` of scores on normal footage only.

    With `score > threshold`, at most a fraction 1 - quantile of those normal frames alarm.
    """
    s = np.asarray(normal_scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise InputError("threshold_from_normal: need a non-empty 1-D array of normal scores")
    if not 0.0 < quantile <= 1.0:
        raise InputError(f"threshold_from_normal: quantile must be in (0, 1], got {quantile}")
    if not np.isfinite(s).all():
        raise InputError("threshold_from_normal: normal scores contain NaN or infinite values")
    return float(np.quantile(s, quantile))


def oracle_threshold(labels: ArrayLike, scores: ArrayLike, beta: float = 2.0) -> float:
    """The study's choice: the threshold that maximises F-beta *on the test labels* (beta=2: recall
    weighs more). Report it only as "oracle (uses test labels)". Ties go to the higher threshold,
    which raises fewer alarms for the same F-beta.
    """
    y, s = _as_arrays(labels, scores)
    if y.sum() == 0:
        raise InputError("oracle_threshold: no anomalous frame among the labels, F-beta is undefined")
    tps, fps, distinct = _cumulative_counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / y.sum()
    b2 = beta * beta
    den = b2 * precision + recall
    f = np.divide((1 + b2) * precision * recall, den, out=np.zeros_like(den), where=den > 0)
    best = int(np.argmax(f))  # first maximum = highest threshold, thresholds run high to low
    return float(_thresholds_below(distinct)[best])


def _json_safe(value: Any) -> Any:
    """NaN/inf become null so metrics.json stays valid JSON for every consumer."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _clip_arrays(per_clip: dict[str, dict[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per clip: (x, labels, scores), x being `pts` when given, else the frame position."""
    out = {}
    for name, data in per_clip.items():
        if "labels" not in data or "scores" not in data:
            raise InputError(f"write_report: per_clip[{name!r}] needs 'labels' and 'scores'")
        y, s = _as_arrays(data["labels"], data["scores"])
        x = np.asarray(data.get("pts", np.arange(y.size)), dtype=np.float64)
        if x.shape != y.shape:
            raise InputError(f"write_report: per_clip[{name!r}] pts {x.shape} does not match labels {y.shape}")
        out[name] = (x, y, s)
    return out


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")


def _plot_roc(path: Path, y: np.ndarray, s: np.ndarray, area: float) -> None:
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    if 0 < y.sum() < y.size:
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"AUROC {area:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right")
    _save(fig, path)


def _plot_pr(path: Path, y: np.ndarray, s: np.ndarray, ap: float) -> None:
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    if y.sum() > 0:
        precision, recall, _ = pr_curve(y, s)
        ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre", label=f"AP {ap:.3f}")
        ax.axhline(y.mean(), ls="--", color="grey", label="chance")
        ax.legend(loc="lower left")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    _save(fig, path)


def _shade_runs(ax: Any, x: np.ndarray, y: np.ndarray) -> None:
    """Shade every run of anomalous ground truth (label 1) on a timeline."""
    edges = np.flatnonzero(np.diff(np.r_[0, y, 0]))
    spans = frame_spans(x) if x.size > 1 else np.ones(x.size)
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        ax.axvspan(x[start], x[stop - 1] + spans[stop - 1], color="tab:red", alpha=0.2, lw=0)


def _plot_timelines(path: Path, clips: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                    threshold: float, oracle: float | None) -> None:
    names = list(clips)[:_MAX_TIMELINES]
    if len(clips) > len(names):
        logger.info("scores.png shows the first %d of %d clips", len(names), len(clips))
    fig = Figure(figsize=(10, 1.8 * len(names) + 0.6))
    for i, name in enumerate(names):
        x, y, s = clips[name]
        ax = fig.add_subplot(len(names), 1, i + 1)
        _shade_runs(ax, x, y)
        ax.plot(x, s, lw=1, color="tab:blue")
        ax.axhline(threshold, color="black", ls="--", lw=1, label="threshold")
        if oracle is not None:
            ax.axhline(oracle, color="tab:orange", ls=":", lw=1, label=ORACLE_NOTE)
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        if i == 0:
            ax.legend(loc="upper right", fontsize="small")
    fig.axes[-1].set_xlabel("time (s) or frame; red = anomalous ground truth")
    _save(fig, path)


def _plot_histogram(path: Path, y: np.ndarray, s: np.ndarray, threshold: float) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(s, bins=40)
    for label, name, color in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        if (y == label).any():
            ax.hist(s[y == label], bins=bins, alpha=0.5, color=color, label=f"{name} ({int((y == label).sum())})")
    ax.axvline(threshold, color="black", ls="--", label="threshold")
    ax.set(xlabel="score", ylabel="frames", title="Score distribution")
    ax.legend()
    _save(fig, path)


def write_report(out_dir: str | Path, *, labels: ArrayLike, scores: ArrayLike, threshold: float,
                 oracle: bool = False, per_clip: dict[str, dict[str, Any]] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write metrics.json, roc.png, pr.png, scores.png and hist.png to `out_dir`; return the metrics.

    `labels`/`scores` are all evaluated frames. `per_clip` maps a clip name to {"labels", "scores",
    optional "pts"} and adds per-clip AUROC and one timeline per clip (else one timeline overall).
    `oracle=True` adds an "oracle" section at the best-F2 threshold on these labels. `extra` (run
    details: dataset, backbone, timings) is stored alongside and must not reuse a metric key.
    """
    y, s = _as_arrays(labels, scores)
    if y.size == 0:
        raise InputError("write_report: no labelled frames to evaluate")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    area, ap = auroc(y, s), average_precision(y, s)
    report: dict[str, Any] = binary_metrics(y, s, threshold)
    report.update(decision_rule=DECISION_RULE, auroc=area, average_precision=ap,
                  n_frames=int(y.size), n_normal=int((y == 0).sum()), n_anomalous=int(y.sum()))
    oracle_t = None
    if oracle and y.sum() > 0:
        oracle_t = oracle_threshold(y, s, beta=2.0)
        report["oracle"] = {"note": ORACLE_NOTE, "beta": 2.0, **binary_metrics(y, s, oracle_t)}
    elif oracle:
        report["oracle"] = {"note": f"{ORACLE_NOTE}: not computed, no anomalous frame"}
    clips = _clip_arrays(per_clip) if per_clip else {"all frames": (np.arange(y.size, dtype=float), y, s)}
    if per_clip:
        per_auc = {name: auroc(cy, cs) for name, (_, cy, cs) in clips.items()}
        report["per_clip_auroc"] = per_auc
        finite = [v for v in per_auc.values() if math.isfinite(v)]
        report["mean_per_clip_auroc"] = float(np.mean(finite)) if finite else math.nan
    for key in (extra or {}):
        if key in report:
            raise InputError(f"write_report: extra key {key!r} would overwrite a metric")
    report.update(extra or {})
    report = _json_safe(report)
    (out / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    _plot_roc(out / "roc.png", y, s, area)
    _plot_pr(out / "pr.png", y, s, ap)
    _plot_timelines(out / "scores.png", clips, threshold, oracle_t)
    _plot_histogram(out / "hist.png", y, s, threshold)
    logger.info("report written to %s: AUROC %.4f, F1 %.3f at threshold %.4g", out, area, report["f1"], threshold)
    return report


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


SUMMARY_COLUMNS = ("scorer", "auroc", "balanced_accuracy", "f1", "precision", "recall", "fpr", "threshold",
                   "segment_recall", "delay_median_s", "false_events_per_hour", "holdout_false_events_per_hour",
                   "n_normal", "n_anomalous")


def summary_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = SUMMARY_COLUMNS) -> str:
    """A plain-text table for the CLI, floats to 3 places.

    `columns` picks and orders the keys shown (the headline metrics by default; metrics.json has
    the rest); None shows every key in first-seen order.
    """
    if not rows:
        return "(no results)"
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    columns = [c for c in columns if any(c in row for row in rows)]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows) for c in columns]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])
