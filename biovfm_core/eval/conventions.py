"""Metric conventions: which definitions a result's numbers follow.

- ``study``: the BioVFM-21M study's evaluator (``evaluation/MyEvaluatorBootstrap.py`` in
  JiarunLiu/BioVFM, run with scikit-learn 1.4), re-implemented here on resample weights.
- ``medmnist``: the MedMNIST package's ``Evaluator`` (``medmnist/evaluator.py``): AUC,
  and ACC at threshold 0.5; nothing else, no intervals.
- ``standard``: biovfm's earlier definitions (``biovfm_core.eval.metrics``).

The study's rules, as facts about that file:

- Binary tasks: the positive-class column's score; F1 and recall are sklearn's
  ``average="binary"`` (positive class only), reported as both macro and micro.
- Multi-label tasks: accuracy, balanced accuracy and MCC are means over labels;
  recall and F1 are sklearn's multi-label macro and micro averages.
- Multi-class (and ordinal) tasks: argmax; sklearn's macro / micro averages, over the
  classes present in the targets or the predictions.
- Thresholds (binary, multi-label, per label): the validation ``roc_curve`` thresholds
  (scikit-learn's, corners only), without the first one, sorted ascending, keeping
  every ``int(n/1000)``-th when there are more than 1,000; the first that maximises
  validation MCC with ``score >= t``. Test predictions are ``score > t``.
- Intervals: 1,000 resamples of the test set, resample ``i`` drawing indices with
  replacement from ``RandomState(i)`` (sklearn's ``resample(random_state=i)``). The
  reported value is the mean of the resamples; the bounds are the
  ``int(0.025 n) - 1``-th and ``int(0.975 n) - 1``-th sorted values (the 25th and 975th
  of 1,000).

Where the study's code would raise (sklearn's ``roc_auc_score`` on a label or class
with one target value, in the test set or in one resample), the label or class is left
out of that AUC mean; a resample with no defined AUC at all is left out of the AUC's
mean and bounds, and the count of such resamples is recorded. The study also rounds
its table to 4 decimals; the values here are not rounded.
"""

from __future__ import annotations

import numpy as np

from biovfm_core.eval.metrics import MetricValue, evaluate_predictions, select_thresholds
from biovfm_core.results import CONVENTIONS

DEFAULT_CONVENTION = "study"
STUDY_METRICS = (
    "auc", "acc", "balanced_acc", "mcc", "f1_macro", "f1_micro", "recall_macro", "recall_micro",
)  # fmt: skip
MEDMNIST_METRICS = ("auc", "acc")
STUDY_RESAMPLES = 1000
MAX_CANDIDATES = 1000

THRESHOLD_RULES = {
    "study": "max validation MCC over roc_curve thresholds (score >= t), applied as score > t",
    "medmnist": "fixed 0.5, applied as score > t",
    "standard": "max validation MCC over score midpoints, applied as score >= t",
}


# ----------------------------------------------------------------- thresholds


def roc_thresholds(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """scikit-learn's ``roc_curve`` thresholds (``drop_intermediate=True``) without its
    leading ``inf``: distinct scores, descending, keeping the ROC curve's corners."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    last_of_value = np.r_[np.nonzero(np.diff(s_desc))[0], len(s) - 1]
    tps = np.cumsum(y_desc)[last_of_value]
    fps = last_of_value + 1 - tps
    thresholds = s_desc[last_of_value]
    if len(fps) > 2:
        # A point collinear with (midway between) its neighbours is not a corner.
        corner = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        thresholds = thresholds[corner]
    return thresholds


def study_candidates(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The thresholds the study tries: ascending, thinned to every int(n/1000)-th."""
    cands = np.sort(roc_thresholds(scores, labels))
    if len(cands) > MAX_CANDIDATES:
        cands = cands[:: int(len(cands) / MAX_CANDIDATES)]
    return cands


def _mcc_from_counts(tp, fp, fn, tn) -> np.ndarray:
    """sklearn's ``matthews_corrcoef`` from (weighted) binary counts, elementwise.

    The counts are whole numbers, so every covariance below is exact in float64 and the
    result is bit-equal to sklearn's; that decides argmax ties the same way."""
    tp, fp, fn, tn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn, tn))
    n = tp + fp + fn + tn
    true0, true1, pred0, pred1 = tn + fp, fn + tp, tn + fn, fp + tp
    cov_yp = (tp + tn) * n - (true0 * pred0 + true1 * pred1)
    cov_pp = n**2 - (pred0 * pred0 + pred1 * pred1)
    cov_yy = n**2 - (true0 * true0 + true1 * true1)
    prod = cov_pp * cov_yy
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(prod == 0, 0.0, cov_yp / np.sqrt(prod))


def study_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The candidate maximising validation MCC with ``score >= t`` (first on ties)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    cands = study_candidates(s, y)
    order = np.argsort(s, kind="stable")
    s_asc = s[order]
    below = np.r_[0, np.cumsum(y[order])]  # positives among the k lowest scores
    k = np.searchsorted(s_asc, cands, side="left")  # samples with score < t
    n, pos = len(s), int(y.sum())
    tp = pos - below[k]
    fp = (n - k) - tp
    fn = pos - tp
    tn = (n - pos) - fp
    return float(cands[int(np.argmax(_mcc_from_counts(tp, fp, fn, tn)))])


def thresholds_for(
    convention: str,
    task: str,
    val_scores: np.ndarray,
    val_labels: np.ndarray,
    fixed: float | None,
) -> np.ndarray | None:
    """Per-label thresholds under a convention (None for multi-class tasks)."""
    if convention == "standard":
        return select_thresholds(task, val_scores, val_labels, fixed)
    if task == "multi-class":
        return None
    width = 1 if task == "binary" else np.asarray(val_labels).shape[1]
    if convention == "medmnist" or fixed is not None:
        value = 0.5 if convention == "medmnist" else fixed
        return np.full(width, value, dtype=np.float64)
    s = np.asarray(val_scores, dtype=np.float64).reshape(len(val_scores), -1)
    y = np.asarray(val_labels).reshape(len(val_labels), -1)
    return np.array([study_threshold(s[:, j], y[:, j]) for j in range(width)])


# ------------------------------------------------------------------- resamples


def resample_indices(n: int, i: int) -> np.ndarray:
    """Resample ``i`` of the study: ``sklearn.utils.resample(range(n), replace=True,
    random_state=i)``, which draws ``RandomState(i).randint(0, n, n)``."""
    return np.random.RandomState(i).randint(0, n, size=n)


def resample_weights(n: int, start: int, count: int) -> np.ndarray:
    """How often resamples ``start .. start+count-1`` draw each sample, ``(count, n)``."""
    return np.stack(
        [np.bincount(resample_indices(n, i), minlength=n) for i in range(start, start + count)]
    ).astype(np.float64)


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC (a tie counts half, as sklearn's trapezoid) per weight row;
    NaN where the weighted targets hold one class only (sklearn raises there)."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.r_[0, np.nonzero(np.diff(s))[0] + 1]
    ws = w[:, order]
    pos = positive[order].astype(np.float64)
    pos_g = np.add.reduceat(ws * pos, starts, axis=1)
    neg_g = np.add.reduceat(ws * (1.0 - pos), starts, axis=1)
    below = np.cumsum(neg_g, axis=1) - neg_g
    num = (pos_g * (below + 0.5 * neg_g)).sum(axis=1)
    den = pos_g.sum(axis=1) * neg_g.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # sklearn's zero_division="warn" scores an undefined ratio as 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, 0.0)


def _binary_counts(y: np.ndarray, pred: np.ndarray, w: np.ndarray):
    y, pred = y.astype(bool), pred.astype(bool)
    return (
        w @ (y & pred).astype(np.float64),
        w @ (~y & pred).astype(np.float64),
        w @ (y & ~pred).astype(np.float64),
        w @ (~y & ~pred).astype(np.float64),
    )


def _binary_metrics(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    n = tp + fp + fn + tn
    recall1, recall0 = _div(tp, tp + fn), _div(tn, tn + fp)
    present1, present0 = (tp + fn) > 0, (tn + fp) > 0
    # balanced_accuracy_score: mean recall over the classes present in the targets.
    balanced = _div(recall1 * present1 + recall0 * present0, present1 * 1.0 + present0)
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    return {
        "acc": (tp + tn) / n,
        "balanced_acc": balanced,
        "mcc": _mcc_from_counts(tp, fp, fn, tn),
        "f1_macro": f1,
        "f1_micro": f1,
        "recall_macro": recall1,
        "recall_micro": recall1,
    }


def _auc_mean(per: list[np.ndarray]) -> np.ndarray:
    stacked = np.stack(per, axis=1)
    defined = np.isfinite(stacked)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            defined.any(axis=1),
            np.where(defined, stacked, 0.0).sum(axis=1) / defined.sum(axis=1),
            np.nan,
        )


def study_values(
    task: str,
    labels: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray | None,
    weights: np.ndarray,
) -> dict[str, np.ndarray]:
    """Every study metric under each row of sample weights ``(B, N)``: what the study's
    ``compute_all_metrics`` gives on the resample that draws sample n ``w[b, n]`` times."""
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if task == "binary":
        s, y = s.reshape(-1), y.reshape(-1)
        out = _binary_metrics(*_binary_counts(y, s > thresholds[0], w))
        out["auc"] = _weighted_auc(s, y == 1, w)
        return out
    if task == "multi-label":
        per = []
        sums = np.zeros((4, w.shape[0]))
        aucs = []
        for j in range(y.shape[1]):
            counts = _binary_counts(y[:, j], s[:, j] > thresholds[j], w)
            sums += np.stack(counts)
            per.append(_binary_metrics(*counts))
            aucs.append(_weighted_auc(s[:, j], y[:, j] == 1, w))
        tp, fp, fn, _ = sums
        mean = lambda key: np.mean([m[key] for m in per], axis=0)  # noqa: E731
        return {
            "auc": _auc_mean(aucs),
            "acc": mean("acc"),
            "balanced_acc": mean("balanced_acc"),
            "mcc": mean("mcc"),
            "f1_macro": mean("f1_macro"),
            "f1_micro": _div(2 * tp, 2 * tp + fp + fn),
            "recall_macro": mean("recall_macro"),
            "recall_micro": _div(tp, tp + fn),
        }
    if task != "multi-class":
        raise ValueError(f"unknown task {task!r}")
    y = y.reshape(-1)
    c = s.shape[1]
    pred = s.argmax(axis=1)
    cells = np.zeros((len(y), c * c))
    cells[np.arange(len(y)), y * c + pred] = 1.0
    cm = (w @ cells).reshape(-1, c, c)  # rows: target, columns: prediction
    n = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    correct = tp.sum(axis=1)
    present, seen = support > 0, (support + predicted) > 0
    recall = _div(tp, support)
    f1 = _div(2 * tp, support + predicted)
    cov_yp = correct * n - (support * predicted).sum(axis=1)
    cov_pp = n**2 - (predicted * predicted).sum(axis=1)
    cov_yy = n**2 - (support * support).sum(axis=1)
    prod = cov_pp * cov_yy
    with np.errstate(divide="ignore", invalid="ignore"):
        mcc = np.where(prod == 0, 0.0, cov_yp / np.sqrt(prod))
    acc = correct / n
    return {
        "auc": _auc_mean([_weighted_auc(s[:, k], y == k, w) for k in range(c)]),
        "acc": acc,
        # sklearn's macro averages run over the labels in targets or predictions;
        # balanced accuracy over the classes in the targets.
        "balanced_acc": (recall * present).sum(axis=1) / present.sum(axis=1),
        "mcc": mcc,
        "f1_macro": (f1 * seen).sum(axis=1) / seen.sum(axis=1),
        "f1_micro": acc,
        "recall_macro": (recall * seen).sum(axis=1) / seen.sum(axis=1),
        "recall_micro": acc,
    }


def study_interval(values: np.ndarray) -> tuple[float, float, float, int]:
    """(mean, lower, upper, undefined) of resample values as the study's
    ``compute_cis``: the ``int(0.025 n) - 1``-th and ``int(0.975 n) - 1``-th sorted
    values. Undefined (NaN) resamples are left out and counted."""
    finite = np.sort(values[np.isfinite(values)])
    undefined = int(len(values) - len(finite))
    m = len(finite)
    if m == 0:
        return float("nan"), float("nan"), float("nan"), undefined
    # Below 40 resamples the study's lower index would be -1 (the maximum); clamp it.
    lo = max(int(0.025 * m) - 1, 0)
    hi = max(int(0.975 * m) - 1, 0)
    return float(finite.mean()), float(finite[lo]), float(finite[hi]), undefined


def evaluate_study(
    task: str,
    labels: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray | None,
    *,
    resamples: int = STUDY_RESAMPLES,
    chunk: int = 50,
) -> dict[str, MetricValue]:
    """The study's numbers: value = mean of the resamples (the point estimate when
    ``resamples`` is 0), with the study's percentile bounds."""
    n = len(labels)
    point = study_values(task, labels, scores, thresholds, np.ones((1, n)))
    if resamples <= 0:
        return {m: MetricValue(float(point[m][0]), point=float(point[m][0])) for m in STUDY_METRICS}
    parts: dict[str, list[np.ndarray]] = {m: [] for m in STUDY_METRICS}
    for start in range(0, resamples, chunk):
        w = resample_weights(n, start, min(chunk, resamples - start))
        for key, value in study_values(task, labels, scores, thresholds, w).items():
            parts[key].append(value)
    out = {}
    for m in STUDY_METRICS:
        mean, lo, hi, undefined = study_interval(np.concatenate(parts[m]))
        out[m] = MetricValue(mean, lo, hi, point=float(point[m][0]), undefined=undefined)
    return out


def evaluate_medmnist(task: str, labels: np.ndarray, scores: np.ndarray) -> dict[str, MetricValue]:
    """MedMNIST's ``Evaluator``: AUC as the study's, ACC with ``score > 0.5`` (argmax for
    multi-class). No intervals, no MCC, F1 or balanced accuracy: it computes none."""
    y = np.asarray(labels)
    width = 1 if task in ("binary", "multi-class") else y.shape[1]
    thr = None if task == "multi-class" else np.full(width, 0.5)
    point = study_values(task, labels, scores, thr, np.ones((1, len(y))))
    return {m: MetricValue(float(point[m][0]), point=float(point[m][0])) for m in MEDMNIST_METRICS}


def evaluate(
    convention: str,
    task: str,
    labels: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray | None,
    *,
    resamples: int = STUDY_RESAMPLES,
    seed: int = 0,
) -> dict[str, MetricValue]:
    """The metrics of one set of test predictions under ``convention``."""
    if convention == "study":
        return evaluate_study(task, labels, scores, thresholds, resamples=resamples)
    if convention == "medmnist":
        return evaluate_medmnist(task, labels, scores)
    if convention == "standard":
        return evaluate_predictions(
            task, labels, scores, thresholds, resamples=resamples, seed=seed
        )
    raise ValueError(f"unknown metric convention {convention!r}; one of {', '.join(CONVENTIONS)}")
