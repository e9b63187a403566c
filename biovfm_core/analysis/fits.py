"""Scaling fits: least squares of log(100 × metric) on log(parameters) or log(images).

The study's slope is the coefficient ``b`` of ``log(100·AUC) = a + b·log(params_m)``
over its four model sizes; the base of the logarithm cancels in ``b`` (natural logs
here), so a model 10× larger multiplies the metric by ``10**b``.

A results table may hold a whole sweep, so a model-scaling curve is one
(objective, benchmark, protocol, metric) *with the data held fixed* (same
``images``, ``data_fraction``, ``modalities``), and a data-scaling curve holds the
model fixed (same ``params_m``, ``backbone``, ``modalities``). Replicates (seeds) at
one x stay separate points: they add residual degrees of freedom to the interval.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from biovfm_core.errors import ConfigError
from biovfm_core.results import ResultRow

KINDS = ("model", "data")
# The x column of each kind, then the columns that must not vary along one curve.
_X = {"model": "params_m", "data": "images"}
FIXED = {
    "model": ("images", "data_fraction", "modalities"),
    "data": ("params_m", "backbone", "modalities"),
}
UNDEFINED_CI = "n<3: no residual degrees of freedom, standard error and CI undefined"


@dataclass
class LogLogFit:
    """``log(scale·y) = intercept + slope·log(x)``; se and CI NaN when n < 3."""

    slope: float
    intercept: float
    se_slope: float
    se_intercept: float
    ci_low: float
    ci_high: float
    n: int
    n_x: int
    r2: float
    note: str = ""

    def predict(self, x: float, *, scale: float = 100.0) -> float:
        """The fitted metric (on the original 0–1 scale) at ``x``."""
        return math.exp(self.intercept + self.slope * math.log(x)) / scale


def t_quantile(level: float, dof: int) -> float:
    """Two-sided Student-t critical value for a ``level`` interval."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2.0, dof))


def fit_loglog(
    x: Sequence[float], y: Sequence[float], *, scale: float = 100.0, level: float = 0.95
) -> LogLogFit:
    """Ordinary least squares of ``log(scale·y)`` on ``log(x)`` with a t interval."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ConfigError(f"fit needs two equal-length 1-D sequences, got {xs.shape}, {ys.shape}")
    if not np.all(np.isfinite(xs)) or not np.all(np.isfinite(ys)):
        raise ConfigError("fit: x and y must be finite numbers")
    if np.any(xs <= 0):
        raise ConfigError(f"fit: log(x) needs x > 0, got {sorted(set(xs[xs <= 0].tolist()))}")
    if np.any(ys <= 0):
        raise ConfigError(
            f"fit: log({scale:g} × metric) needs metric > 0, got {ys[ys <= 0].tolist()} "
            "(MCC can be negative: fit AUC, accuracy or F1 instead)"
        )
    n_x = len(np.unique(xs))
    if n_x < 2:
        raise ConfigError(
            f"fit: a slope needs at least two distinct x values, got {n_x} ({xs[:1].tolist()})"
        )
    lx, ly = np.log(xs), np.log(scale * ys)
    n = len(lx)
    mx, my = lx.mean(), ly.mean()
    sxx = float(((lx - mx) ** 2).sum())
    slope = float(((lx - mx) * (ly - my)).sum() / sxx)
    intercept = float(my - slope * mx)
    resid = ly - (intercept + slope * lx)
    ssr = float((resid**2).sum())
    sst = float(((ly - my) ** 2).sum())
    r2 = 1.0 - ssr / sst if sst > 0 else 1.0
    if n < 3:
        nan = float("nan")
        return LogLogFit(slope, intercept, nan, nan, nan, nan, n, n_x, r2, UNDEFINED_CI)
    s2 = ssr / (n - 2)
    se_slope = math.sqrt(s2 / sxx)
    se_intercept = math.sqrt(s2 * (1.0 / n + mx**2 / sxx))
    half = t_quantile(level, n - 2) * se_slope
    return LogLogFit(
        slope, intercept, se_slope, se_intercept, slope - half, slope + half, n, n_x, r2
    )


@dataclass
class ScalingFit:
    """One fitted curve of a results table, as a row of ``fits.csv``."""

    kind: str  # "model" or "data"
    aggregate: str  # "benchmark", "mean_curve" or "mean_of_slopes"
    objective: str
    benchmark: str
    protocol: str
    metric: str
    x: str  # the column on the x axis
    fixed: str  # the held-fixed columns, "images=…; modalities=…"
    slope: float
    intercept: float
    se_slope: float
    ci_low: float
    ci_high: float
    n: int
    n_x: int
    r2: float
    x_values: str
    note: str = ""


@dataclass
class FitSet:
    """Every curve fitted from one table, and why the others were not."""

    fits: list[ScalingFit] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def per_benchmark(self) -> list[ScalingFit]:
        return [f for f in self.fits if f.aggregate == "benchmark"]


def benchmark_key(name: str) -> str:
    """One spelling per benchmark: ``medmnist:PathMNIST_224`` → ``pathmnist``."""
    import re

    key = name.strip().lower()
    key = key.rsplit(":", 1)[-1]
    key = key.rsplit("/", 1)[-1]
    key = key[:-4] if key.endswith(".npz") else key
    return re.sub(r"_(28|64|128|224)$", "", key)


def fixed_text(row: ResultRow, columns: Iterable[str]) -> str:
    parts = []
    for column in columns:
        value = getattr(row, column)
        if value not in (None, ""):
            parts.append(f"{column}={value:g}" if isinstance(value, float) else f"{column}={value}")
    return "; ".join(parts)


def data_x_column(rows: Sequence[ResultRow]) -> str:
    """``images`` if the table has image counts, else ``data_fraction``.

    The two give the same slope (log images = log fraction + a constant)."""
    if any(r.images is not None for r in rows):
        return "images"
    return "data_fraction"


def fit_scaling(
    rows: Sequence[ResultRow],
    kind: str = "model",
    *,
    metrics: Sequence[str] | None = ("auc",),
    scale: float = 100.0,
    level: float = 0.95,
    require: bool = True,
) -> FitSet:
    """Fit every curve of ``kind`` in ``rows``, plus the means over benchmarks.

    ``metrics=None`` fits every metric present (metrics with non-positive values
    are skipped and reported). With ``require``, a table where no curve has two
    distinct x values is an error naming why.
    """
    if kind not in KINDS:
        raise ConfigError(f"scaling kind must be one of {KINDS}, not {kind!r}")
    x_column = _X[kind] if kind == "model" else data_x_column(rows)
    fixed_columns = FIXED[kind]
    wanted = None if metrics is None else {m.lower() for m in metrics}
    result = FitSet()
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    missing_x = 0
    for row in rows:
        if wanted is not None and row.metric.lower() not in wanted:
            continue
        x = getattr(row, x_column)
        if x is None:
            missing_x += 1
            continue
        key = (
            row.objective,
            benchmark_key(row.benchmark),
            row.protocol,
            row.metric.lower(),
            fixed_text(row, fixed_columns),
        )
        groups[key].append((float(x), row.value))
    if missing_x:
        result.skipped.append(f"{kind} scaling: {missing_x} row(s) without {x_column}")
    single: dict[tuple, list[str]] = defaultdict(list)
    for key, points in sorted(groups.items()):
        objective, benchmark, protocol, metric, fixed = key
        xs, ys = zip(*points, strict=True)
        label = f"{kind} scaling {objective or '-'}/{benchmark}/{protocol}/{metric}"
        if fixed:
            label += f" ({fixed})"
        if len(set(xs)) < 2:
            # One line per curve family, not per benchmark: a sweep's other axes
            # produce many such single-point groups.
            single[(objective, protocol, metric, fixed, xs[0])].append(benchmark)
            continue
        try:
            fit = fit_loglog(xs, ys, scale=scale, level=level)
        except ConfigError as exc:
            result.skipped.append(f"{label}: {exc}")
            continue
        result.fits.append(_row(kind, "benchmark", key, x_column, fit, xs))
    for (objective, protocol, metric, fixed, x), names in sorted(single.items()):
        where = f" ({fixed})" if fixed else ""
        result.skipped.append(
            f"{kind} scaling {objective or '-'}/{protocol}/{metric}{where}: only one "
            f"{x_column} value ({x:g}) on {len(names)} benchmark(s); a slope needs two or more"
        )
    if not result.fits:
        if require:
            reasons = "; ".join(result.skipped[:5]) or f"no rows for metrics {sorted(wanted or [])}"
            raise ConfigError(f"no {kind}-scaling curve can be fitted: {reasons}")
        return result
    result.fits.extend(_means(kind, groups, x_column, result.per_benchmark(), scale, level))
    return result


def _row(
    kind: str, aggregate: str, key: tuple, x_column: str, fit: LogLogFit, xs: Iterable[float]
) -> ScalingFit:
    objective, benchmark, protocol, metric, fixed = key
    return ScalingFit(
        kind=kind,
        aggregate=aggregate,
        objective=objective,
        benchmark=benchmark,
        protocol=protocol,
        metric=metric,
        x=x_column,
        fixed=fixed,
        slope=fit.slope,
        intercept=fit.intercept,
        se_slope=fit.se_slope,
        ci_low=fit.ci_low,
        ci_high=fit.ci_high,
        n=fit.n,
        n_x=fit.n_x,
        r2=fit.r2,
        x_values=" ".join(f"{v:g}" for v in sorted(set(xs))),
        note=fit.note,
    )


def _means(
    kind: str,
    groups: dict[tuple, list[tuple[float, float]]],
    x_column: str,
    fitted: list[ScalingFit],
    scale: float,
    level: float,
) -> list[ScalingFit]:
    """The study's mean curve (mean metric over benchmarks at each x, then fitted)
    and the mean of the per-benchmark slopes with a t interval across benchmarks."""
    out: list[ScalingFit] = []
    families: dict[tuple, dict[str, dict[float, list[float]]]] = defaultdict(dict)
    for (objective, benchmark, protocol, metric, fixed), points in groups.items():
        by_x: dict[float, list[float]] = defaultdict(list)
        for x, y in points:
            by_x[x].append(y)
        families[(objective, protocol, metric, fixed)][benchmark] = by_x
    for family, benchmarks in sorted(families.items()):
        objective, protocol, metric, fixed = family
        key = (objective, "MEAN", protocol, metric, fixed)
        # Only x values every benchmark has, so the mean compares like with like.
        common = set.intersection(*(set(b) for b in benchmarks.values()))
        if len(common) >= 2 and len(benchmarks) >= 2:
            xs = sorted(common)
            ys = [float(np.mean([np.mean(b[x]) for b in benchmarks.values()])) for x in xs]
            try:
                fit = fit_loglog(xs, ys, scale=scale, level=level)
            except ConfigError:
                fit = None
            if fit is not None:
                row = _row(kind, "mean_curve", key, x_column, fit, xs)
                row.note = "; ".join(
                    filter(None, [f"mean over {len(benchmarks)} benchmarks", fit.note])
                )
                out.append(row)
        slopes = [f.slope for f in fitted if (f.objective, f.protocol, f.metric, f.fixed) == family]
        if len(slopes) >= 2:
            k = len(slopes)
            mean = float(np.mean(slopes))
            se = float(np.std(slopes, ddof=1) / math.sqrt(k))
            half = t_quantile(level, k - 1) * se
            out.append(
                ScalingFit(
                    kind=kind,
                    aggregate="mean_of_slopes",
                    objective=objective,
                    benchmark="MEAN",
                    protocol=protocol,
                    metric=metric,
                    x=x_column,
                    fixed=fixed,
                    slope=mean,
                    intercept=float("nan"),
                    se_slope=se,
                    ci_low=mean - half,
                    ci_high=mean + half,
                    n=k,
                    n_x=0,
                    r2=float("nan"),
                    x_values="",
                    note=f"mean of {k} per-benchmark slopes; CI across benchmarks",
                )
            )
    return out
