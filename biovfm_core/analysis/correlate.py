"""Slopes against task properties: correlations, and leave-one-out prediction.

The study correlated per-benchmark slopes with each property (Pearson). We add
Spearman (12 benchmarks, skewed sample counts), p-values and n, and answer the
question the study left open: can a benchmark's slope be predicted from its
properties before paying for the large model? A linear model on standardised
properties is fitted on all benchmarks but one and scored on the one left out;
its mean absolute error is compared with predicting the mean of the other slopes,
and a seeded permutation test says how often shuffled slopes predict as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from biovfm_core.analysis.fits import ScalingFit
from biovfm_core.analysis.properties import TaskProperties
from biovfm_core.errors import ConfigError

# Sample counts span three orders of magnitude; the regression sees their log.
REGRESSION_FEATURES = ("n_classes", "log10_n_train", "compressibility", "dbi")


@dataclass
class Correlation:
    """One row of ``correlations.csv``."""

    kind: str
    objective: str
    protocol: str
    metric: str
    fixed: str
    property: str
    n: int
    pearson_r: float
    pearson_p: float
    spearman_rho: float
    spearman_p: float


def _constant(values: np.ndarray) -> bool:
    # Slopes of saturated benchmarks differ only by float round-off (1e-17); a
    # correlation of round-off is noise with a confident-looking p-value.
    scale = max(float(np.max(np.abs(values))), 1e-12)
    return float(np.ptp(values)) <= 1e-9 * scale or float(np.ptp(values)) < 1e-12


def pearson(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Pearson r and two-sided p (NaN when n < 3 or a side is constant)."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or _constant(x) or _constant(y):
        return float("nan"), float("nan")
    result = stats.pearsonr(x, y)
    return float(result.statistic), float(result.pvalue)


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman rho and two-sided p (NaN when n < 3 or a side is constant)."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or _constant(x) or _constant(y):
        return float("nan"), float("nan")
    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def slope_families(fits: Sequence[ScalingFit]) -> dict[tuple, dict[str, float]]:
    """Per-benchmark slopes grouped by (kind, objective, protocol, metric, fixed)."""
    out: dict[tuple, dict[str, float]] = {}
    for fit in fits:
        if fit.aggregate != "benchmark":
            continue
        family = (fit.kind, fit.objective, fit.protocol, fit.metric, fit.fixed)
        out.setdefault(family, {})[fit.benchmark] = fit.slope
    return out


def available_properties(properties: Sequence[TaskProperties]) -> list[str]:
    names = ["n_classes", "n_train", "compressibility", "dbi"]
    if properties and all(p.compressibility_png is not None for p in properties):
        names.append("compressibility_png")
    return names


def correlate(
    fits: Sequence[ScalingFit], properties: Sequence[TaskProperties]
) -> tuple[list[Correlation], list[str]]:
    """Pearson and Spearman of slopes with each property, per slope family.

    Returns the rows and the notes on benchmarks without properties."""
    by_name = {p.benchmark: p for p in properties}
    rows: list[Correlation] = []
    notes: list[str] = []
    names = available_properties(properties)
    for family, slopes in sorted(slope_families(fits).items()):
        kind, objective, protocol, metric, fixed = family
        common = sorted(b for b in slopes if b in by_name)
        lacking = sorted(set(slopes) - set(common))
        if lacking:
            notes.append(
                f"{kind}/{objective or '-'}/{protocol}/{metric}: no properties for "
                f"{', '.join(lacking)}"
            )
        y = [slopes[b] for b in common]
        for name in names:
            x = [by_name[b].value(name) for b in common]
            r, rp = pearson(x, y)
            rho, sp = spearman(x, y)
            rows.append(
                Correlation(
                    kind, objective, protocol, metric, fixed, name, len(common), r, rp, rho, sp
                )
            )
    return rows, notes


@dataclass
class LinearModel:
    """Least squares on standardised features; ``ridge`` > 0 shrinks the weights."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, *, ridge: float = 0.0) -> LinearModel:
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        # A property constant over the training fold carries no information.
        std = np.where(std > 0, std, 1.0)
        z = (x - mean) / std
        zc = z - z.mean(axis=0)
        yc = y - y.mean()
        gram = zc.T @ zc + ridge * np.eye(z.shape[1])
        weights = np.linalg.lstsq(gram, zc.T @ yc, rcond=None)[0]
        intercept = float(y.mean() - z.mean(axis=0) @ weights)
        return cls(mean, std, weights, intercept)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return ((np.atleast_2d(x) - self.mean) / self.std) @ self.weights + self.intercept


@dataclass
class LooResult:
    """Leave-one-benchmark-out prediction of slopes for one slope family."""

    kind: str
    objective: str
    protocol: str
    metric: str
    fixed: str
    features: tuple[str, ...]
    benchmarks: list[str]
    actual: list[float]
    predicted: list[float]
    baseline: list[float]  # the mean of the other benchmarks' slopes
    mae: float
    baseline_mae: float
    permutation_p: float  # share of shuffles whose LOO MAE ≤ ours
    permutations: int
    seed: int
    model: LinearModel  # fitted on every benchmark, for new tasks

    @property
    def skill(self) -> float:
        """1 − MAE / baseline MAE: > 0 when the properties beat the mean."""
        return 1.0 - self.mae / self.baseline_mae if self.baseline_mae > 0 else float("nan")


def _loo(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    n = len(y)
    predicted = np.empty(n)
    baseline = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        predicted[i] = LinearModel.fit(x[keep], y[keep], ridge=ridge).predict(x[i])[0]
        baseline[i] = y[keep].mean()
    return predicted, baseline


def loo_predict(
    slopes: dict[str, float],
    properties: Sequence[TaskProperties],
    *,
    features: Sequence[str] = REGRESSION_FEATURES,
    ridge: float = 0.0,
    permutations: int = 200,
    seed: int = 0,
    family: tuple = ("model", "", "", "", ""),
) -> LooResult:
    """Predict each benchmark's slope from the others' (see the module docstring)."""
    by_name = {p.benchmark: p for p in properties}
    names = sorted(b for b in slopes if b in by_name)
    features = tuple(features)
    # Each fold keeps n-1 points for len(features)+1 coefficients, plus one to spare.
    need = len(features) + 3
    if len(names) < need:
        raise ConfigError(
            f"leave-one-out prediction from {len(features)} properties needs at least "
            f"{need} benchmarks with slopes and properties, got {len(names)}"
        )
    x = np.array([[by_name[b].value(f) for f in features] for b in names], dtype=float)
    if not np.all(np.isfinite(x)):
        raise ConfigError(f"a property among {features} is missing for some benchmark")
    y = np.array([slopes[b] for b in names], dtype=float)
    predicted, baseline = _loo(x, y, ridge)
    mae = float(np.mean(np.abs(predicted - y)))
    baseline_mae = float(np.mean(np.abs(baseline - y)))
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        shuffled = rng.permutation(y)
        pred, _ = _loo(x, shuffled, ridge)
        hits += float(np.mean(np.abs(pred - shuffled))) <= mae + 1e-15
    p = (hits + 1) / (permutations + 1) if permutations else float("nan")
    kind, objective, protocol, metric, fixed = family
    return LooResult(
        kind,
        objective,
        protocol,
        metric,
        fixed,
        features,
        names,
        y.tolist(),
        predicted.tolist(),
        baseline.tolist(),
        mae,
        baseline_mae,
        float(p),
        permutations,
        seed,
        LinearModel.fit(x, y, ridge=ridge),
    )


@dataclass
class Prediction:
    """``biovfm analyze predict``'s answer for one slope family."""

    benchmark: str
    kind: str
    objective: str
    protocol: str
    metric: str
    slope: float
    loo_mae: float
    baseline_mae: float
    permutation_p: float
    n_train_benchmarks: int
    reference_auc: float
    gain_10x: float  # metric points (×100) from a 10× larger model at reference_auc
    gain_10x_low: float
    gain_10x_high: float
    baseline_slope: float  # mean slope of the training benchmarks: the no-skill answer
    baseline_gain_10x: float
    note: str = ""
    measured_slope: float | None = None  # when the table measured the target too


def gain_10x(slope: float, reference: float, *, scale: float = 100.0) -> float:
    """Points of ``scale × metric`` a 10× larger x adds at ``reference`` (0–1),
    capped at the metric's maximum: ``log(100·m)`` grows by ``slope·ln 10``."""
    now = scale * reference
    return min(now * 10.0**slope, scale) - now


def predict_slope(
    target: TaskProperties,
    loo: LooResult,
    *,
    reference: float,
    note: str = "",
) -> Prediction:
    """The slope predicted for ``target`` by the model fitted on every benchmark,
    with the LOO error as its uncertainty."""
    x = np.array([[target.value(f) for f in loo.features]], dtype=float)
    slope = float(loo.model.predict(x)[0])
    if not math.isfinite(slope):
        raise ConfigError(f"{target.benchmark}: a property is missing, cannot predict")
    return Prediction(
        benchmark=target.benchmark,
        kind=loo.kind,
        objective=loo.objective,
        protocol=loo.protocol,
        metric=loo.metric,
        slope=slope,
        loo_mae=loo.mae,
        baseline_mae=loo.baseline_mae,
        permutation_p=loo.permutation_p,
        n_train_benchmarks=len(loo.benchmarks),
        reference_auc=reference,
        gain_10x=gain_10x(slope, reference),
        gain_10x_low=gain_10x(slope - loo.mae, reference),
        gain_10x_high=gain_10x(slope + loo.mae, reference),
        baseline_slope=float(np.mean(loo.actual)),
        baseline_gain_10x=gain_10x(float(np.mean(loo.actual)), reference),
        note=note,
    )
