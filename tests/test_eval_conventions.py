"""Metric conventions: the study's evaluator, MedMNIST's Evaluator, and no mixing.

The study's rules are checked on hand-computed cases and against a per-resample
reference built from scikit-learn calls (as the study's evaluator makes them)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    matthews_corrcoef,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.utils import resample

from biovfm_core.errors import ConfigError
from biovfm_core.eval import conventions as C
from biovfm_core.eval.metrics import compute_metrics
from biovfm_core.eval.report import check_folder_convention, compare_tables, write_result
from biovfm_core.results import ResultRow, one_convention, read_results, write_results

# ------------------------------------------------------- a scikit-learn reference


def _auc(y, s) -> float:
    # sklearn 1.4 (the study's) raises on one class; newer versions return NaN.
    return roc_auc_score(y, s) if len(np.unique(y)) == 2 else np.nan


def sklearn_study_metrics(task: str, y, s, thr) -> dict[str, float]:
    """What the study's compute_all_metrics gives, from plain scikit-learn calls."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task == "binary":
            p = s > thr[0]
            f1, rec = f1_score(y, p), recall_score(y, p)
            out = {
                "acc": accuracy_score(y, p),
                "balanced_acc": balanced_accuracy_score(y, p),
                "mcc": matthews_corrcoef(y, p),
                "f1_macro": f1, "f1_micro": f1, "recall_macro": rec, "recall_micro": rec,
                "auc": _auc(y, s),
            }  # fmt: skip
        elif task == "multi-label":
            p = s > thr[None, :]
            per = lambda fn: np.mean([fn(y[:, j], p[:, j]) for j in range(y.shape[1])])  # noqa: E731
            aucs = [_auc(y[:, j], s[:, j]) for j in range(y.shape[1])]
            out = {
                "acc": per(accuracy_score),
                "balanced_acc": per(balanced_accuracy_score),
                "mcc": per(matthews_corrcoef),
                "f1_macro": f1_score(y, p, average="macro"),
                "f1_micro": f1_score(y, p, average="micro"),
                "recall_macro": recall_score(y, p, average="macro"),
                "recall_micro": recall_score(y, p, average="micro"),
                "auc": np.nanmean(aucs) if not np.all(np.isnan(aucs)) else np.nan,
            }
        else:
            p = s.argmax(axis=1)
            aucs = [_auc((y == k).astype(int), s[:, k]) for k in range(s.shape[1])]
            out = {
                "acc": accuracy_score(y, p),
                "balanced_acc": balanced_accuracy_score(y, p),
                "mcc": matthews_corrcoef(y, p),
                "f1_macro": f1_score(y, p, average="macro"),
                "f1_micro": f1_score(y, p, average="micro"),
                "recall_macro": recall_score(y, p, average="macro"),
                "recall_micro": recall_score(y, p, average="micro"),
                "auc": np.nanmean(aucs),
            }
    return out


def sklearn_study_threshold(s, y) -> float:
    _, _, th = roc_curve(y, s)
    th = np.sort(th[1:])
    if len(th) > 1000:
        th = th[:: int(len(th) / 1000)]
    return float(th[int(np.argmax([matthews_corrcoef(y, (s >= t).astype(int)) for t in th]))])


def _data(task: str, n: int, rng):
    # Scores rounded to 1-2 decimals: many ties, in validation and in test.
    if task == "binary":
        return rng.integers(0, 2, n), np.round(rng.random(n), 1)
    if task == "multi-label":
        y = (rng.random((n, 4)) < 0.3).astype(int)
        y[:, 2] = 0  # a label with no positive at all
        return y, np.round(rng.random((n, 4)), 2)
    y = rng.integers(0, 5, n)
    y[y == 3] = 0  # a class absent from the targets
    return y, np.round(rng.random((n, 5)), 2)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.parametrize("task", ["binary", "multi-label", "multi-class"])
def test_study_equals_sklearn_on_every_resample_with_ties(task):
    rng = np.random.default_rng(1)
    y, s = _data(task, 60, rng)
    vy, vs = _data(task, 70, rng)
    thr = C.thresholds_for("study", task, vs, vy, None)
    if task != "multi-class":
        vs2, vy2 = vs.reshape(70, -1), vy.reshape(70, -1)
        want = [sklearn_study_threshold(vs2[:, j], vy2[:, j]) for j in range(vs2.shape[1])]
        assert thr.tolist() == want  # exactly: same candidate, same tie-break
    for i in range(10):
        idx = resample(np.arange(len(y)), replace=True, random_state=i)
        np.testing.assert_array_equal(idx, C.resample_indices(len(y), i))
        want = sklearn_study_metrics(task, y[idx], s[idx], thr)
        w = np.bincount(idx, minlength=len(y))[None].astype(np.float64)
        got = C.study_values(task, y, s, thr, w)
        for key, value in want.items():
            np.testing.assert_allclose(got[key][0], value, rtol=0, atol=1e-12, err_msg=key)
    result = C.evaluate_study(task, y, s, thr, resamples=40)
    every = C.study_values(task, y, s, thr, C.resample_weights(len(y), 0, 40))
    point = sklearn_study_metrics(task, y, s, thr)
    for key in C.STUDY_METRICS:
        values = np.sort(every[key])
        m = result[key]
        # value = mean of the resamples; bounds: int(0.025 n) - 1 = 0, int(0.975 n) - 1 = 38.
        assert m.value == pytest.approx(values.mean(), abs=1e-12)
        assert (m.ci_low, m.ci_high) == pytest.approx((values[0], values[38]), abs=1e-12)
        assert m.point == pytest.approx(point[key], abs=1e-12)


def test_binary_f1_is_the_positive_class_f1_in_study_and_both_classes_in_standard():
    y = np.array([0, 0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.4])  # at 0.5: tp 1, fp 1, fn 1, tn 3
    thr = np.array([0.5])
    study = C.evaluate_study("binary", y, s, thr, resamples=0)
    assert study["f1_macro"].value == study["f1_micro"].value == pytest.approx(2 / 4)
    assert study["recall_macro"].value == pytest.approx(0.5)
    standard = compute_metrics("binary", y, s, thr)
    assert standard["f1_macro"] == pytest.approx((2 / 4 + 6 / 8) / 2)  # classes 1 and 0
    assert standard["f1_micro"] == pytest.approx(4 / 6)  # = accuracy


def test_ties_choose_the_lowest_best_threshold_and_test_applies_it_strictly():
    vs, vy = np.array([0.2, 0.5, 0.5, 0.8]), np.array([0, 1, 0, 1])
    # Candidates 0.2, 0.5, 0.8: MCC 0, 2/sqrt(12), 2/sqrt(12): the first best is 0.5.
    assert C.study_threshold(vs, vy) == 0.5
    ts, ty = np.array([0.5, 0.5, 0.9, 0.1]), np.array([0, 0, 1, 0])
    m = C.evaluate_study("binary", ty, ts, np.array([0.5]), resamples=0)
    assert m["acc"].value == 1.0  # 0.5 > 0.5 is negative; `>=` would give 0.5
    assert C.study_threshold(np.array([0.3, 0.3, 0.3]), np.array([0, 1, 1])) == 0.3


def test_more_than_1000_validation_thresholds_are_thinned():
    # Alternating labels in score order make every score a corner of the ROC curve.
    n = 2500
    s = np.arange(n, dtype=np.float64) / n
    y = (np.arange(n) % 2 == 0).astype(int)
    y[1500:1510] = 1  # somewhere better than elsewhere
    _, _, th = roc_curve(y, s)
    full = np.sort(th[1:])
    cands = C.study_candidates(s, y)
    assert len(full) > 2000
    np.testing.assert_array_equal(cands, full[:: int(len(full) / 1000)])  # every 2nd
    pred = s[None, :] >= cands[:, None]
    tp, fp = (pred & (y == 1)).sum(1), (pred & (y == 0)).sum(1)
    fn, tn = (y == 1).sum() - tp, (y == 0).sum() - fp
    with np.errstate(invalid="ignore"):  # the lowest candidate predicts all positive
        mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert C.study_threshold(s, y) == cands[int(np.nanargmax(mcc))]
    # Between 1,001 and 1,999 thresholds the study's step int(n/1000) is 1: no thinning.
    m = 1500
    s2, y2 = np.arange(m) / m, np.arange(m) % 2
    assert len(C.study_candidates(s2, y2)) == len(np.unique(s2))


def test_multilabel_with_an_all_negative_label_by_hand():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    s = np.array([[0.9, 0.6], [0.2, 0.1], [0.4, 0.3], [0.6, 0.2]])
    m = C.evaluate_study("multi-label", y, s, np.array([0.5, 0.5]), resamples=0)
    # label 0: tp 1, fp 1, fn 1, tn 1; label 1 (no positives): fp 1, tn 3.
    want = {
        "acc": (0.5 + 0.75) / 2,
        "balanced_acc": (0.5 + 0.75) / 2,  # label 1: recall of class 0 only
        "mcc": 0.0,
        "f1_macro": (0.5 + 0.0) / 2,
        "f1_micro": 2 / (2 + 2 + 1),
        "recall_macro": (0.5 + 0.0) / 2,
        "recall_micro": 0.5,
        "auc": 0.75,  # label 0's 3 of 4 pairs; label 1 undefined, left out
    }
    assert {k: m[k].value for k in want} == pytest.approx(want)
    ref = sklearn_study_metrics("multi-label", y, s, np.array([0.5, 0.5]))
    assert {k: ref[k] for k in want} == pytest.approx(want)


def test_interval_indices_and_undefined_resamples():
    values = np.random.default_rng(0).permutation(1000).astype(np.float64)
    assert C.study_interval(values) == (499.5, 24.0, 974.0, 0)  # the 25th and 975th
    with_nan = np.r_[np.arange(990.0), [np.nan] * 10]
    assert C.study_interval(with_nan) == (494.5, 23.0, 964.0, 10)
    # A binary test set where some resamples draw one class only: AUC undefined there.
    y, s = np.array([0, 1, 0, 0]), np.array([0.1, 0.9, 0.3, 0.2])
    m = C.evaluate_study("binary", y, s, np.array([0.5]), resamples=100)
    assert 0 < m["auc"].undefined < 100 and m["auc"].value == 1.0
    assert m["acc"].undefined == 0


def test_medmnist_is_auc_and_acc_at_half_with_strict_comparison():
    y = np.array([1, 0, 1, 0])
    s = np.array([0.5, 0.4, 0.7, 0.6])
    m = C.evaluate_medmnist("binary", y, s)
    assert set(m) == {"auc", "acc"} and m["acc"].ci_low is None
    assert m["acc"].value == accuracy_score(y, s > 0.5) == 0.5
    assert m["auc"].value == roc_auc_score(y, s)
    ym = np.array([[1, 0], [0, 1], [1, 1]])
    sm = np.array([[0.5, 0.1], [0.2, 0.8], [0.9, 0.5]])
    assert C.evaluate_medmnist("multi-label", ym, sm)["acc"].value == pytest.approx(
        (2 / 3 + 2 / 3) / 2
    )
    yc, sc = np.array([0, 1, 2]), np.array([[0.5, 0.5, 0.0], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    assert C.evaluate_medmnist("multi-class", yc, sc)["acc"].value == 1.0  # argmax: first max
    assert C.thresholds_for("medmnist", "multi-label", sm, ym, None).tolist() == [0.5, 0.5]


# ------------------------------------------------------------- never mixed


def _rows(convention: str) -> list[ResultRow]:
    return [ResultRow("m", "breastmnist", "linear", "auc", 0.8, convention=convention)]


def test_compare_and_analyze_refuse_mixed_conventions(tmp_path):
    from biovfm_core.analysis.report import read_tables

    study, standard = tmp_path / "study.csv", tmp_path / "standard.csv"
    write_results(study, _rows("study"))
    write_results(standard, _rows("standard"))
    old = tmp_path / "old.csv"  # written before the convention column existed
    old.write_text("model,benchmark,protocol,metric,value\nm,breastmnist,linear,auc,0.7\n")
    assert read_results(study)[0].convention == "study"
    with pytest.raises(ConfigError, match=r"study: A = .*standard: B = "):
        compare_tables(study, standard)
    with pytest.raises(ConfigError, match="treated as standard"):
        compare_tables(old, study)
    text = compare_tables(old, standard)
    assert "metric convention: standard (A record" in text and "+0.1000" in text
    with pytest.raises(ConfigError, match="different metric conventions"):
        read_tables([study, standard])
    assert len(read_tables([old, standard])) == 2
    assert one_convention([("a", _rows("medmnist"))]) == "medmnist"
    bad = tmp_path / "bad.csv"
    bad.write_text("model,benchmark,protocol,metric,value,convention\nm,b,linear,auc,0.7,x\n")
    with pytest.raises(ConfigError, match="convention 'x' is not one of"):
        read_results(bad)


def test_a_results_folder_holds_one_convention(tmp_path):
    record = {"model": "m", "benchmark": "b", "protocol": "knn", "metrics": {}}
    z = np.zeros(2)
    write_result(tmp_path, {**record, "metrics_convention": "study"}, z, z, z, z)
    check_folder_convention(tmp_path, "study")
    with pytest.raises(ConfigError, match=r"--metrics study.*pass --metrics study"):
        check_folder_convention(tmp_path, "medmnist")
    old = tmp_path / "old"
    write_result(old, record, z, z, z, z)  # a result from before conventions
    with pytest.raises(ConfigError, match=r"standard \(no convention recorded\)"):
        check_folder_convention(old, "study")
