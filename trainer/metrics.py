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


def bootstrap_auroc_ci(y: np.ndarray, p: np.ndarray, *, n: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUROC, resampling the given units (pass study-level
    arrays to resample studies). Resamples with one class only are skipped."""
    y, p = np.asarray(y).astype(bool), np.asarray(p, np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        v = auroc(y[idx], p[idx])
        if not math.isnan(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [50 * (1 - level), 100 - 50 * (1 - level)])
    return float(lo), float(hi)


def best_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold maximising F1 (ties: the highest), for tuning on a separate split."""
    y, p = np.asarray(y).astype(bool), np.asarray(p, np.float64)
    if not y.any():
        return float("nan")
    candidates = np.unique(p)
    f1s = [at_threshold(y, p, t)["f1"] for t in candidates]
    best = np.nanmax(f1s)
    return float(candidates[np.flatnonzero(np.asarray(f1s) == best)[-1]])


# A bin with fewer studies than this has a binomial standard error of its observed frequency
# above ~0.15 (sqrt(0.25 / 10)): too wide to read a calibration error off it, so reports mark it.
SPARSE_BIN = 10


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (95% for the default ``z``).

    Chosen over the normal approximation because it stays inside [0, 1] and is honest for
    the small counts a reliability bin often holds. NaNs when ``n`` is 0.
    """
    if n == 0:
        return float("nan"), float("nan")
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    # At k = 0 or k = n the bound is exactly 0 or 1; rounding can put it a hair inside, which
    # would leave the observed frequency outside its own interval.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error over equal-width bins, and the reliability curve.

    Returns:
        ``{"ece", "bins", "n", "counts", "curve"}``: ``counts`` has one entry per bin (empty
        bins 0, so it sums to ``n = len(y)``); ``curve`` one entry per non-empty bin with
        ``bin``, ``lo``/``hi`` (edges), ``count``, ``confidence`` (mean p), ``observed``
        (fraction positive), ``observed_ci95`` (Wilson) and ``sparse`` (count < SPARSE_BIN).
    """
    y, p = np.asarray(y).astype(float), np.asarray(p, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece, curve, counts = 0.0, [], []
    for b in range(bins):
        sel = which == b
        counts.append(int(sel.sum()))
        if not sel.any():
            continue
        conf, acc = float(p[sel].mean()), float(y[sel].mean())
        ece += sel.mean() * abs(conf - acc)
        curve.append({"bin": b, "lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(sel.sum()),
                      "confidence": conf, "observed": acc,
                      "observed_ci95": list(wilson_interval(int(y[sel].sum()), int(sel.sum()))),
                      "sparse": bool(sel.sum() < SPARSE_BIN)})
    return {"ece": float(ece), "bins": bins, "n": int(len(y)), "counts": counts, "curve": curve}


def curves(y: np.ndarray, p: np.ndarray) -> dict:
    """ROC (fpr, tpr) and precision-recall points at every distinct threshold, high to low."""
    y, p = np.asarray(y).astype(bool), np.asarray(p, np.float64)
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = np.r_[np.flatnonzero(ps[1:] != ps[:-1]), len(ps) - 1]
    tp = np.cumsum(ys)[last].astype(float)
    fp = (last + 1) - tp
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return {"fpr": np.r_[0.0, fp / n_neg], "tpr": np.r_[0.0, tp / n_pos],
            "recall": tp / n_pos, "precision": tp / (tp + fp)}
