"""The ``standard`` metric convention: biovfm's own definitions (see
``biovfm_core.eval.conventions`` for the study's and MedMNIST's), with MCC thresholds
and bootstrap intervals.

Point estimates come from torchmetrics. The 1000-resample bootstrap would call
torchmetrics 1000 times per metric, so it is computed here from resample *weights*
(a multinomial count per test sample) in a few matrix operations; tests check that
these weighted formulas equal torchmetrics at unit weights.

Task types: ``multi-class`` (ordinal tasks are scored as multi-class, as MedMNIST
does), ``binary`` and ``multi-label``. Scores: ``(N, C)`` class probabilities for
multi-class, ``(N,)`` positive-class probabilities for binary, ``(N, L)`` per-label
probabilities for multi-label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional import classification as tmf

TASKS = ("multi-class", "binary", "multi-label")
METRICS = ("auc", "acc", "balanced_acc", "mcc", "f1_macro", "f1_micro")


@dataclass
class MetricValue:
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    point: float | None = None  # the full test set's value, when ``value`` is not it
    undefined: int = 0  # resamples where the metric is undefined (left out)

    def to_dict(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
        }
        if self.point is not None:
            out["point"] = self.point
        if self.undefined:
            out["undefined_resamples"] = self.undefined
        return out


# ----------------------------------------------------------------- thresholds


def best_mcc_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold ``t`` (predict positive when ``score >= t``) maximising MCC.

    Candidates are midpoints between consecutive distinct scores (plus one above
    the maximum), so the chosen cut separates validation samples the same way any
    threshold in its interval would. Ties in MCC go to the lowest threshold index.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s) - 1]
    # Predicting the first k+1 (highest) samples positive, for each distinct cut k.
    tp = np.cumsum(y_sorted)[distinct].astype(np.float64)
    fp = (distinct + 1) - tp
    pos, n = float(y.sum()), float(len(y))
    fn, tn = pos - tp, (n - pos) - fp
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = np.where(denom > 0, (tp * tn - fp * fn) / np.where(denom > 0, denom, 1.0), 0.0)
    # "Nothing positive" (threshold above the maximum) is a candidate too, with MCC 0.
    best = int(np.argmax(mcc))
    if mcc[best] <= 0:
        return float(s.max() + 1.0)
    k = distinct[best]
    if k + 1 < len(s):
        return float((s_sorted[k] + s_sorted[k + 1]) / 2)
    return float(s_sorted[k] - 1.0)


def select_thresholds(
    task: str, val_scores: np.ndarray, val_labels: np.ndarray, fixed: float | None
) -> np.ndarray | None:
    """Per-label thresholds for binary / multi-label tasks (None for multi-class).

    ``fixed`` (e.g. 0.5) skips the search. Multi-label tasks get one threshold per
    label, each maximising that label's validation MCC.
    """
    if task == "multi-class":
        return None
    if task == "binary":
        value = fixed if fixed is not None else best_mcc_threshold(val_scores, val_labels)
        return np.array([value], dtype=np.float64)
    labels = val_labels.shape[1]
    if fixed is not None:
        return np.full(labels, fixed, dtype=np.float64)
    return np.array([best_mcc_threshold(val_scores[:, j], val_labels[:, j]) for j in range(labels)])


# ---------------------------------------------------------------- point values


def _binary_point(scores: torch.Tensor, target: torch.Tensor, thr: float) -> dict[str, float]:
    preds = (scores >= thr).long()
    recall = tmf.multiclass_recall(preds, target, num_classes=2, average=None)
    return {
        "auc": float(tmf.binary_auroc(scores, target)),
        "acc": float(tmf.binary_accuracy(preds, target)),
        "balanced_acc": _present_mean(recall, target, 2),
        "mcc": float(tmf.binary_matthews_corrcoef(preds, target)),
        "f1_macro": float(tmf.multiclass_f1_score(preds, target, num_classes=2, average="macro")),
        "f1_micro": float(tmf.multiclass_f1_score(preds, target, num_classes=2, average="micro")),
    }


def compute_metrics(
    task: str,
    labels: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray | None = None,
) -> dict[str, float]:
    """The six ``standard`` metrics (``METRICS``) for one set of predictions."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    s = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if task == "multi-class":
        c = s.shape[1]
        preds = s.argmax(dim=1)
        out = {
            # Macro over the classes present in the test labels: torchmetrics scores an
            # absent class's AUC as 0, the bootstrap (and sklearn) leave it undefined.
            "auc": _present_mean(tmf.multiclass_auroc(s, y, num_classes=c, average=None), y, c),
            "acc": float(tmf.multiclass_accuracy(preds, y, num_classes=c, average="micro")),
            # Mean recall over the classes present in the targets, as sklearn's
            # balanced_accuracy_score (torchmetrics would count absent classes as 0).
            "balanced_acc": _present_mean(
                tmf.multiclass_recall(preds, y, num_classes=c, average=None), y, c
            ),
            "mcc": float(tmf.multiclass_matthews_corrcoef(preds, y, num_classes=c)),
            "f1_macro": float(tmf.multiclass_f1_score(preds, y, num_classes=c, average="macro")),
            "f1_micro": float(tmf.multiclass_f1_score(preds, y, num_classes=c, average="micro")),
        }
        return out
    thr = thresholds if thresholds is not None else np.full(max(1, s.ndim and s.shape[-1]), 0.5)
    if task == "binary":
        return _binary_point(s.ravel(), y.ravel(), float(thr[0]))
    num = s.shape[1]
    preds = (s >= torch.as_tensor(thr, dtype=torch.float32)).long()
    per_label = [_binary_point(s[:, j], y[:, j], float(thr[j])) for j in range(num)]
    mean = lambda key: float(np.mean([m[key] for m in per_label]))  # noqa: E731
    return {
        "auc": _defined_label_mean(tmf.multilabel_auroc(s, y, num_labels=num, average=None), y),
        "acc": mean("acc"),
        "balanced_acc": mean("balanced_acc"),
        "mcc": mean("mcc"),
        "f1_macro": float(tmf.multilabel_f1_score(preds, y, num_labels=num, average="macro")),
        "f1_micro": float(tmf.multilabel_f1_score(preds, y, num_labels=num, average="micro")),
    }


def _defined_label_mean(per_label: torch.Tensor, y: torch.Tensor) -> float:
    # A label's AUC is defined only when the test set has positives and negatives.
    positives = y.sum(dim=0)
    defined = (positives > 0) & (positives < y.shape[0])
    return float(per_label[defined].mean()) if bool(defined.any()) else float("nan")


def _present_mean(per_class: torch.Tensor, y: torch.Tensor, c: int) -> float:
    present = torch.bincount(y, minlength=c) > 0
    return float(per_class[present].mean())


# ------------------------------------------------------------------- bootstrap


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, w: torch.Tensor) -> torch.Tensor:
    """Mann-Whitney AUC (ties count half) under each row of sample weights ``w`` (B, N)."""
    uniq, group = np.unique(scores, return_inverse=True)
    g = torch.as_tensor(group)
    pos = torch.as_tensor(positive.astype(np.float64))
    b = w.shape[0]
    pos_g = torch.zeros(b, len(uniq), dtype=torch.float64).index_add_(1, g, w * pos)
    neg_g = torch.zeros(b, len(uniq), dtype=torch.float64).index_add_(1, g, w * (1 - pos))
    below = torch.cumsum(neg_g, dim=1) - neg_g
    num = (pos_g * (below + 0.5 * neg_g)).sum(dim=1)
    den = pos_g.sum(dim=1) * neg_g.sum(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.nan)


def _confusions(target: np.ndarray, preds: np.ndarray, c: int, w: torch.Tensor) -> torch.Tensor:
    """Weighted confusion matrices ``(B, C, C)`` (rows: target, cols: prediction)."""
    cell = torch.as_tensor(target * c + preds)
    out = torch.zeros(w.shape[0], c * c, dtype=torch.float64).index_add_(1, cell, w)
    return out.view(-1, c, c)


def _from_confusion(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """acc, balanced acc (present classes), MCC, F1 macro and micro from (B, C, C)."""
    n = cm.sum(dim=(1, 2))
    tp = torch.diagonal(cm, dim1=1, dim2=2)
    support = cm.sum(dim=2)  # per target class
    predicted = cm.sum(dim=1)
    correct = tp.sum(dim=1)
    present = support > 0
    recall = torch.where(present, tp / support.clamp_min(1e-300), 0.0)
    balanced = recall.sum(dim=1) / present.sum(dim=1).clamp_min(1)
    # Gorodkin's multi-class MCC, which torchmetrics and sklearn compute.
    cov_yp = correct * n - (support * predicted).sum(dim=1)
    cov_yy = n * n - (support * support).sum(dim=1)
    cov_pp = n * n - (predicted * predicted).sum(dim=1)
    den = torch.sqrt(cov_yy * cov_pp)
    mcc = torch.where(den > 0, cov_yp / den.clamp_min(1e-300), 0.0)
    f1_den = support + predicted
    f1 = torch.where(f1_den > 0, 2 * tp / f1_den.clamp_min(1e-300), 0.0)
    # torchmetrics' macro F1 averages over classes seen in targets or predictions.
    seen = f1_den > 0
    return {
        "acc": correct / n,
        "balanced_acc": balanced,
        "mcc": mcc,
        "f1_macro": f1.sum(dim=1) / seen.sum(dim=1).clamp_min(1),
        "f1_micro": correct / n,
    }


def weighted_metrics(
    task: str,
    labels: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray | None,
    weights: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Every metric under each row of sample weights ``(B, N)``; rows of ones give the
    point estimate (tests compare that to torchmetrics)."""
    w = weights.to(torch.float64)
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if task == "multi-class":
        c = scores.shape[1]
        out = _from_confusion(_confusions(labels, scores.argmax(axis=1), c, w))
        aucs = torch.stack([_weighted_auc(scores[:, k], labels == k, w) for k in range(c)], 1)
        out["auc"] = torch.nanmean(aucs, dim=1)
        return out
    if task == "binary":
        preds = (scores.ravel() >= thresholds[0]).astype(np.int64)
        out = _from_confusion(_confusions(labels.ravel(), preds, 2, w))
        out["auc"] = _weighted_auc(scores.ravel(), labels.ravel() == 1, w)
        return out
    per_label, tp_sum, fp_sum, fn_sum, f1s = [], 0.0, 0.0, 0.0, []
    for j in range(labels.shape[1]):
        preds = (scores[:, j] >= thresholds[j]).astype(np.int64)
        cm = _confusions(labels[:, j], preds, 2, w)
        m = _from_confusion(cm)
        m["auc"] = _weighted_auc(scores[:, j], labels[:, j] == 1, w)
        per_label.append(m)
        tp, fp, fn = cm[:, 1, 1], cm[:, 0, 1], cm[:, 1, 0]
        tp_sum, fp_sum, fn_sum = tp_sum + tp, fp_sum + fp, fn_sum + fn
        f1s.append(torch.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1e-300), 0))
    stack = lambda key: torch.stack([m[key] for m in per_label], 1)  # noqa: E731
    micro_den = 2 * tp_sum + fp_sum + fn_sum
    return {
        "auc": torch.nanmean(stack("auc"), dim=1),
        "acc": stack("acc").mean(dim=1),
        "balanced_acc": stack("balanced_acc").mean(dim=1),
        "mcc": stack("mcc").mean(dim=1),
        "f1_macro": torch.stack(f1s, 1).mean(dim=1),
        "f1_micro": torch.where(micro_den > 0, 2 * tp_sum / micro_den.clamp_min(1e-300), 0.0),
    }


def bootstrap_intervals(
    task: str,
    labels: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray | None,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    chunk: int = 100,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals over ``resamples`` bootstrap resamples of the test set.

    A resample is represented by how many times it draws each sample (multinomial
    counts), which makes every metric a weighted sum; resamples where a metric is
    undefined (a class absent) are left out of that metric's percentiles.
    """
    n = len(labels)
    gen = torch.Generator().manual_seed(seed)
    collected: dict[str, list[torch.Tensor]] = {m: [] for m in METRICS}
    # Many small ops: intra-op threads only add spin-wait contention (measured 7x
    # slower with 2 threads on a busy 2-core machine), so run them on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        done = 0
        while done < resamples:
            b = min(chunk, resamples - done)
            idx = torch.randint(0, n, (b, n), generator=gen)
            w = torch.zeros(b, n, dtype=torch.float64).scatter_add_(
                1, idx, torch.ones(b, n, dtype=torch.float64)
            )
            for key, value in weighted_metrics(task, labels, scores, thresholds, w).items():
                collected[key].append(value)
            done += b
    finally:
        torch.set_num_threads(threads)
    alpha = (1 - level) / 2
    out = {}
    for key, parts in collected.items():
        values = torch.cat(parts).numpy()
        values = values[np.isfinite(values)]
        if len(values) == 0:
            out[key] = (float("nan"), float("nan"))
        else:
            lo, hi = np.quantile(values, [alpha, 1 - alpha])
            out[key] = (float(lo), float(hi))
    return out


def evaluate_predictions(
    task: str,
    labels: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray | None,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, MetricValue]:
    """Point estimates (torchmetrics) with bootstrap intervals (``resamples=0``: none)."""
    point = compute_metrics(task, labels, scores, thresholds)
    cis = (
        bootstrap_intervals(task, labels, scores, thresholds, resamples=resamples, seed=seed)
        if resamples > 0
        else {}
    )
    return {m: MetricValue(point[m], *(cis.get(m, (None, None)))) for m in METRICS}
