"""Evaluation metrics against scikit-learn, MCC thresholds, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    matthews_corrcoef,
    roc_auc_score,
)

from biovfm_core.eval.metrics import (
    best_mcc_threshold,
    bootstrap_intervals,
    compute_metrics,
    evaluate_predictions,
    select_thresholds,
    weighted_metrics,
)


def _multiclass(n=300, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def _binary(n=300, seed=1):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * (2 * y - 1))))
    return y, s


def _multilabel(n=300, labels=5, seed=2):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < 0.35).astype(int)
    s = 1 / (1 + np.exp(-(rng.normal(size=(n, labels)) + 1.0 * (2 * y - 1))))
    return y, s


def test_multiclass_metrics_equal_sklearn():
    y, p = _multiclass()
    pred = p.argmax(1)
    m = compute_metrics("multi-class", y, p)
    assert m["auc"] == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-5
    )
    assert m["acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-6)
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred), abs=1e-5)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-5)
    assert m["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro"), abs=1e-6)


def test_classes_absent_from_the_test_set_do_not_count_in_the_auc():
    # 5 declared classes, only 0-2 in the test labels (a small benchmark's test split).
    y, p3 = _multiclass(c=3)
    p = np.concatenate([p3, np.full((len(y), 2), 1e-3)], axis=1)
    p /= p.sum(1, keepdims=True)
    m = compute_metrics("multi-class", y, p)
    expected = np.mean([roc_auc_score(y == k, p[:, k]) for k in range(3)])
    assert m["auc"] == pytest.approx(expected, abs=1e-5)
    point = weighted_metrics("multi-class", y, p, None, torch.ones(1, len(y)))
    assert float(point["auc"][0]) == pytest.approx(m["auc"], abs=1e-6)  # as the bootstrap does
    # Multi-label: a label with no positives in the test set has no AUC.
    ym, sm = _multilabel()
    ym[:, 0] = 0
    ml = compute_metrics("multi-label", ym, sm, np.full(ym.shape[1], 0.5))
    expected = np.mean([roc_auc_score(ym[:, j], sm[:, j]) for j in range(1, ym.shape[1])])
    assert ml["auc"] == pytest.approx(expected, abs=1e-5)


def test_binary_metrics_equal_sklearn_at_the_given_threshold():
    y, s = _binary()
    thr = np.array([0.42])
    pred = (s >= 0.42).astype(int)
    m = compute_metrics("binary", y, s, thr)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-5)
    assert m["acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-6)
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred), abs=1e-5)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-5)
    assert m["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro"), abs=1e-6)


def test_multilabel_metrics_are_per_label_averages_as_sklearn():
    y, s = _multilabel()
    thr = np.array([0.3, 0.4, 0.5, 0.6, 0.45])
    pred = (s >= thr).astype(int)
    m = compute_metrics("multi-label", y, s, thr)
    L = y.shape[1]
    per = lambda fn: np.mean([fn(y[:, j], pred[:, j]) for j in range(L)])  # noqa: E731
    assert m["auc"] == pytest.approx(
        np.mean([roc_auc_score(y[:, j], s[:, j]) for j in range(L)]), abs=1e-5
    )
    assert m["acc"] == pytest.approx(per(accuracy_score), abs=1e-6)
    assert m["balanced_acc"] == pytest.approx(per(balanced_accuracy_score), abs=1e-6)
    assert m["mcc"] == pytest.approx(per(matthews_corrcoef), abs=1e-5)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-5)
    assert m["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro"), abs=1e-5)


def test_threshold_maximises_validation_mcc():
    y, s = _binary(n=200, seed=5)
    t = best_mcc_threshold(s, y)
    got = matthews_corrcoef(y, (s >= t).astype(int))
    # Every achievable split: predicting positive from each observed score up.
    best = max(matthews_corrcoef(y, (s >= c).astype(int)) for c in np.unique(s))
    assert got == pytest.approx(best, abs=1e-12)
    assert got > matthews_corrcoef(y, (s >= 0.5).astype(int))  # the search mattered here


def test_threshold_on_a_hand_example():
    # Positives at 0.35 and 0.9, negatives at 0.1, 0.3, 0.4: cutting between 0.3 and
    # 0.35 catches both positives with one false positive (MCC 2/3); any other cut is worse.
    s = np.array([0.1, 0.3, 0.35, 0.4, 0.9])
    y = np.array([0, 0, 1, 0, 1])
    assert best_mcc_threshold(s, y) == pytest.approx(0.325)


def test_fixed_threshold_and_per_label_selection():
    y, s = _multilabel(n=120)
    fixed = select_thresholds("multi-label", s, y, 0.5)
    assert fixed.tolist() == [0.5] * 5
    chosen = select_thresholds("multi-label", s, y, None)
    for j in range(5):
        assert chosen[j] == best_mcc_threshold(s[:, j], y[:, j])
    assert select_thresholds("multi-class", s, y, None) is None


@pytest.mark.parametrize("task", ["multi-class", "binary", "multi-label"])
def test_weighted_formulas_equal_torchmetrics_at_unit_and_integer_weights(task):
    y, s = {"multi-class": _multiclass, "binary": _binary, "multi-label": _multilabel}[task](n=150)
    thr = None if task == "multi-class" else select_thresholds(task, s, y, None)
    ones = torch.ones(1, len(y), dtype=torch.float64)
    got = weighted_metrics(task, y, s, thr, ones)
    want = compute_metrics(task, y, s, thr)
    for key, value in want.items():
        assert float(got[key][0]) == pytest.approx(value, abs=1e-5), key
    # A resample as counts equals the metric of the explicitly repeated samples.
    idx = np.random.default_rng(3).integers(0, len(y), len(y))
    counts = torch.as_tensor(np.bincount(idx, minlength=len(y)), dtype=torch.float64)[None]
    got = weighted_metrics(task, y, s, thr, counts)
    want = compute_metrics(task, y[idx], s[idx], thr)
    for key, value in want.items():
        assert float(got[key][0]) == pytest.approx(value, abs=1e-5), key


def test_bootstrap_ci_contains_estimate_and_repeats_with_its_seed():
    y, p = _multiclass(n=400)
    a = evaluate_predictions("multi-class", y, p, None, resamples=1000, seed=7)
    for m in a.values():
        assert m.ci_low <= m.value <= m.ci_high
        assert m.ci_high - m.ci_low < 0.2
    b = bootstrap_intervals("multi-class", y, p, None, resamples=1000, seed=7)
    c = bootstrap_intervals("multi-class", y, p, None, resamples=1000, seed=8)
    assert {k: (v.ci_low, v.ci_high) for k, v in a.items()} == b
    assert b != c
