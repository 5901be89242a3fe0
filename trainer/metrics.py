"""Classification metrics for one task: AUROC, AUPRC, curves, threshold metrics, calibration.

The ranking metrics and curves are scikit-learn's (exact, from ranks, not the bucketed curve
of ``keras.metrics.AUC``). What this module adds are the report's conventions: NaN instead of
an exception where a metric is undefined (one class only), confusion counts with every rate
at one threshold, a bootstrap CI, the F1-tuned threshold, and reliability bins with their
counts and intervals. All functions take 1-D arrays of one length n: ``y`` labels (nonzero
is positive), ``p`` probabilities.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm


def _binary(y, p) -> tuple[np.ndarray, np.ndarray]:
    """``y`` as int8 labels in {0, 1} and ``p`` as float64, both (n,)."""
    return (np.asarray(y) != 0).astype(np.int8), np.asarray(p, np.float64)


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, p = _binary(y, p)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return float("nan")
    return float(skm.roc_auc_score(y, p))


def auprc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision, the sum over thresholds of (R_n - R_{n-1}) P_n; NaN without positives."""
    y, p = _binary(y, p)
    if not y.any():
        return float("nan")
    return float(skm.average_precision_score(y, p))


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Confusion counts and the rates derived from them at ``p >= threshold``.

    Kept by hand rather than ``sklearn.metrics.confusion_matrix`` plus ``precision_score``
    and friends: those warn and return 0 where a rate is undefined, and the report needs NaN
    there (it says why each one is missing).
    """
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
    """Mean of the values that are not NaN; NaN when none is."""
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
    """The threshold maximising F1 (ties: the highest), for tuning on a separate split.

    The candidates are the distinct scores; one ``precision_recall_curve`` pass gives the
    true positives at each, so this is a sort, O(n log n). F1 is then formed from integer
    counts exactly as ``at_threshold`` forms it, so that equal F1s compare equal and the tie
    rule picks the same threshold as trying every candidate would. NaN without positives.
    """
    y, p = _binary(y, p)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    _, recall, thresholds = skm.precision_recall_curve(y, p, drop_intermediate=False)
    # thresholds ascend over the distinct scores; recall has one extra, final point (0).
    tp = np.rint(recall[:-1] * n_pos)
    called = len(p) - np.searchsorted(np.sort(p), thresholds, side="left")  # p >= threshold
    f1 = 2 * tp / (tp + called + n_pos)  # 2tp / (2tp + fp + fn): fp = called - tp, fn = n_pos - tp
    return float(thresholds[np.flatnonzero(f1 == f1.max())[-1]])


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

    The curve is the one ``sklearn.calibration.calibration_curve(strategy="uniform")``
    draws, binned here because that function returns neither the bin of each point nor its
    count (the ECE weights, the Wilson intervals and the sparse flags need them), and it puts
    a score on an inner edge (0.1, 0.2, ...) into the lower bin where this report has always
    put it into the upper one (``np.digitize``). Away from the edges the two agree (tested).

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
    """ROC and precision-recall points at every distinct threshold, high to low.

    Args:
        y: labels (n,) with both classes present (the report draws curves only then).
        p: probabilities (n,).

    Returns:
        float64 arrays: ``fpr`` and ``tpr`` (k + 1,) starting at (0, 0), ``recall`` and
        ``precision`` (k,), for k distinct scores.

    Raises:
        ValueError: ``y`` holds one class only (no ROC, and recall is undefined).
    """
    y, p = _binary(y, p)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError("curves need both classes in y")
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    precision, recall, _ = skm.precision_recall_curve(y, p, drop_intermediate=False)
    # precision_recall_curve runs low to high thresholds and appends the (recall 0,
    # precision 1) end point; the report draws from the highest threshold down.
    return {"fpr": fpr, "tpr": tpr, "recall": recall[-2::-1], "precision": precision[-2::-1]}
