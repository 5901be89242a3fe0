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


def test_one_class_gives_nan_not_a_crash():
    assert np.isnan(metrics.auroc(np.ones(5), np.arange(5)))
    assert np.isnan(metrics.auprc(np.zeros(5), np.arange(5)))
    assert metrics.nanmean([0.5, float("nan"), 0.7]) == pytest.approx(0.6)
