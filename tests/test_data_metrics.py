"""AUC, GAUC and logloss against sklearn / NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

import sparsecore.data as scd


def ref_gauc(y, s, users):
    total, weight = 0.0, 0.0
    for u in np.unique(users):
        sel = users == u
        if len(np.unique(y[sel])) == 2:
            total += roc_auc_score(y[sel], s[sel]) * sel.sum()
            weight += sel.sum()
    return total / weight


@pytest.mark.parametrize("n, levels", [(2, None), (1000, None), (5000, 7), (20000, 2)])
def test_auc_matches_sklearn_including_ties(n, levels):
    rng = np.random.default_rng()
    y = rng.integers(0, 2, n).astype(np.float32)
    y[0], y[-1] = 0, 1
    s = rng.normal(size=n) + y
    if levels:  # heavy ties
        s = np.round(s * levels / 4) / levels
    assert scd.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert scd.auc(y, s.astype(np.float32)) == pytest.approx(roc_auc_score(y, s.astype(np.float32)), abs=1e-12)


def test_auc_extremes_and_single_class():
    y = np.array([0, 0, 1, 1])
    assert scd.auc(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert scd.auc(y, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert scd.auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert np.isnan(scd.auc([1, 1], [0.1, 0.2]))


def test_gauc_matches_reference():
    rng = np.random.default_rng()
    n = 3000
    users = rng.integers(0, 200, n)
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + 0.5 * y, 1)
    assert scd.gauc(y, s, users) == pytest.approx(ref_gauc(y, s, users), abs=1e-12)


def test_gauc_skips_single_class_users():
    y = np.array([1, 1, 0, 1, 0, 1])
    s = np.array([0.9, 0.1, 0.2, 0.8, 0.7, 0.3])
    users = np.array([5, 5, 7, 7, 9, 9])
    # user 5 has one class; users 7 and 9 have AUC 1 and 0, two samples each
    assert scd.gauc(y, s, users) == pytest.approx(0.5)
    assert np.isnan(scd.gauc([1, 0], [0.5, 0.5], [1, 2]))


def test_logloss_matches_sklearn():
    rng = np.random.default_rng()
    y = rng.integers(0, 2, 1000)
    p = rng.uniform(size=1000)
    p[:3] = [0.0, 1.0, 0.5]
    assert scd.logloss(y, p) == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]), rel=1e-12)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: scd.auc([0, 2], [0.1, 0.2]), ValueError, "labels\\[1\\]"),
    (lambda: scd.auc([0, 1], [0.1, np.nan]), ValueError, "scores\\[1\\]"),
    (lambda: scd.auc([0, 1], [0.1]), ValueError, "labels has 2"),
    (lambda: scd.auc(np.zeros((2, 2)), np.zeros((2, 2))), ValueError, "1-D"),
    (lambda: scd.auc(["a", "b"], [0.1, 0.2]), TypeError, "numeric"),
    (lambda: scd.logloss([0, 1], [0.5, 1.5]), ValueError, "probabilities\\[1\\]"),
    (lambda: scd.gauc([0, 1], [0.1, 0.2], [1]), ValueError, "differ in length"),
])
def test_bad_metric_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_metrics_accept_torch_tensors():
    torch = pytest.importorskip("torch")
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    s = torch.tensor([[0.1], [0.9], [0.4], [0.5]], requires_grad=True)
    assert scd.auc(y, s) == pytest.approx(0.75)
