"""trainer/metrics.py against scikit-learn on the same arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from trainer import metrics


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_auprc_equal_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.5 + y * 0.3, 2)  # rounded: many ties
    assert metrics.auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert metrics.auprc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)


def test_threshold_metrics_equal_sklearn():
    rng = np.random.default_rng(7)
    y, p = rng.integers(0, 2, 200), rng.random(200)
    r = metrics.at_threshold(y, p, 0.35)
    pred = (p >= 0.35).astype(int)
    assert r["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert r["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert r["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred))
    assert r["ppv"] == pytest.approx(skm.precision_score(y, pred))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert (r["tn"], r["fp"], r["fn"], r["tp"]) == (tn, fp, fn, tp)
    assert r["npv"] == pytest.approx(skm.precision_score(1 - y, 1 - pred)) == pytest.approx(tn / (tn + fn))
    assert r["npv"] != pytest.approx(r["specificity"])  # the two differ on this data


def test_one_class_gives_nan_not_a_crash():
    assert np.isnan(metrics.auroc(np.ones(5), np.arange(5)))
    assert np.isnan(metrics.auprc(np.zeros(5), np.arange(5)))
    assert metrics.nanmean([0.5, float("nan"), 0.7]) == pytest.approx(0.6)


def test_bootstrap_ci_brackets_the_auroc_and_is_seeded():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p = rng.random(200) * 0.6 + y * 0.3
    lo, hi = metrics.bootstrap_auroc_ci(y, p, n=300, seed=1)
    assert lo < metrics.auroc(y, p) < hi and hi - lo < 0.2
    assert (lo, hi) == metrics.bootstrap_auroc_ci(y, p, n=300, seed=1)
    # A 95% percentile interval: the 2.5th and 97.5th percentiles of the resampled AUROCs
    # (the same seeded draws, computed here with sklearn).
    rng, values = np.random.default_rng(1), []
    for _ in range(300):
        idx = rng.integers(0, len(y), len(y))
        values.append(skm.roc_auc_score(y[idx], p[idx]))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])), abs=1e-12)
    assert metrics.bootstrap_auroc_ci(y, p, n=300, seed=1, level=0.9) == pytest.approx(
        tuple(np.percentile(values, [5, 95])), abs=1e-12)


def test_tuned_threshold_maximises_f1_and_calibration_error_is_exact():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.55, 0.7, 0.9])
    t = metrics.best_f1_threshold(y, p)
    assert metrics.at_threshold(y, p, t)["f1"] == max(metrics.at_threshold(y, p, c)["f1"] for c in p)
    cal = metrics.calibration(np.array([0, 1, 1, 1]), np.array([0.05, 0.95, 0.95, 0.55]), bins=10)
    # bins: {0.05: y 0} |0.05-0| ; {0.55: 1} |0.55-1| ; {0.95, 0.95: 1, 1} |0.95-1|
    assert cal["ece"] == pytest.approx((0.05 + 0.45 + 2 * 0.05) / 4)


def test_curves_equal_sklearn():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 150)
    p = np.round(rng.random(150), 2)
    c = metrics.curves(y, p)
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(c["fpr"], fpr)
    np.testing.assert_allclose(c["tpr"], tpr)
    prec, rec, _ = skm.precision_recall_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(c["precision"], prec[:-1][::-1])
    np.testing.assert_allclose(c["recall"], rec[:-1][::-1])


def _best_f1_by_trying_every_threshold(y, p):
    """The quadratic reference: F1 at every distinct score, the highest of the best."""
    candidates = np.unique(p)
    f1s = np.array([metrics.at_threshold(y, p, t)["f1"] for t in candidates])
    return float(candidates[np.flatnonzero(f1s == np.nanmax(f1s))[-1]])


@pytest.mark.parametrize("seed", range(20))
def test_best_f1_threshold_equals_trying_every_threshold(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    y = rng.integers(0, 2, n)
    if not y.any():
        y[0] = 1
    # Few distinct scores for half the seeds: ties within a score and equal F1s between scores.
    p = np.round(rng.random(n), 1 if seed % 2 else 3)
    assert metrics.best_f1_threshold(y, p) == _best_f1_by_trying_every_threshold(y, p)


def test_best_f1_threshold_ties_and_edge_cases():
    # F1 is 2/3 at both 0.8 and 0.4 (tp 1 fp 0 fn 1; tp 2 fp 2 fn 0): the highest wins.
    y, p = np.array([1, 0, 1, 0]), np.array([0.8, 0.6, 0.4, 0.5])
    assert metrics.best_f1_threshold(y, p) == _best_f1_by_trying_every_threshold(y, p) == 0.8
    assert np.isnan(metrics.best_f1_threshold(np.zeros(4), np.arange(4) / 4))
    assert metrics.best_f1_threshold(np.ones(3), np.array([0.2, 0.5, 0.9])) == 0.2


def test_calibration_curve_equals_sklearn_away_from_bin_edges():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 500)
    p = np.clip(rng.random(500) * 0.7 + y * 0.25, 0, 1)
    off_edge = np.abs(p * 10 - np.round(p * 10)) > 1e-9  # no score on a bin edge
    y, p = y[off_edge], p[off_edge]
    observed, confidence = calibration_curve(y, p, n_bins=10, strategy="uniform")
    cal = metrics.calibration(y, p, bins=10)
    np.testing.assert_allclose([b["observed"] for b in cal["curve"]], observed, atol=1e-12)
    np.testing.assert_allclose([b["confidence"] for b in cal["curve"]], confidence, atol=1e-12)
    assert sum(cal["counts"]) == len(y)


def test_curves_need_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        metrics.curves(np.ones(4), np.arange(4) / 4)
