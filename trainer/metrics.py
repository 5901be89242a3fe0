"""Classification metrics in numpy: exact AUROC, AUPRC and threshold metrics.

AUROC is computed exactly from ranks (Mann-Whitney U with average ranks for ties), not from
a bucketed curve as ``keras.metrics.AUC`` does, so it matches scikit-learn to float
precision. All functions take 1-D arrays: ``y`` in {0, 1}, ``p`` probabilities.
"""

from __future__ import annotations

import math

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), np.float64)
    # Boundaries of runs of equal values.
    bounds = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return ranks


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(p)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auprc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) P_n, scikit-learn's definition."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    # One point per distinct threshold (the last index of each run of equal scores).
    last = np.r_[np.flatnonzero(ps[1:] != ps[:-1]), len(ps) - 1]
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Confusion counts and the rates derived from them at ``p >= threshold``."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(p) >= threshold
    tp, fp = int(np.sum(pred & y)), int(np.sum(pred & ~y))
    fn, tn = int(np.sum(~pred & y)), int(np.sum(~pred & ~y))

    def div(a, b):
        return a / b if b else float("nan")

    precision, recall = div(tp, tp + fp), div(tp, tp + fn)
    f1 = div(2 * tp, 2 * tp + fp + fn)
    return {"threshold": threshold, "tp": tp, "fp": fp, "fn": fn, "tn": tn, "f1": f1,
            "accuracy": div(tp + tn, len(y)), "sensitivity": recall, "specificity": div(tn, tn + fp),
            "ppv": precision, "npv": div(tn, tn + fn)}


def task_report(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Everything metrics.json holds for one task."""
    out = {"auroc": auroc(y, p), "auprc": auprc(y, p), "positives": int(np.sum(y)),
           "negatives": int(len(y) - np.sum(y))}
    out.update(at_threshold(y, p, threshold))
    return out


def nanmean(values) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")
