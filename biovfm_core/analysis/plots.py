"""PNG figures of the report. matplotlib is imported here only, with the Agg backend,
so plotting works on machines without a display and the CLI starts fast."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from biovfm_core.analysis.correlate import Correlation, slope_families
from biovfm_core.analysis.fits import ScalingFit, benchmark_key
from biovfm_core.analysis.properties import TaskProperties
from biovfm_core.results import ResultRow


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def slug(*parts: str) -> str:
    text = "_".join(re.sub(r"[^A-Za-z0-9.+_-]+", "-", p).strip("-") for p in parts if p)
    return text or "all"


def _points(
    rows: Sequence[ResultRow], fit: ScalingFit
) -> tuple[list[float], list[float], list[tuple[float, float] | None]]:
    """The points of one benchmark's fit (x, 100 × value) and each one's 95% interval
    from the table's ``ci_low``/``ci_high`` (None where the table has none)."""
    from biovfm_core.analysis.fits import FIXED, fixed_text

    xs, ys, cis = [], [], []
    for row in rows:
        if (
            row.objective == fit.objective
            and row.protocol == fit.protocol
            and row.metric.lower() == fit.metric
            and (fit.benchmark == "MEAN" or benchmark_key(row.benchmark) == fit.benchmark)
            and fixed_text(row, FIXED[fit.kind]) == fit.fixed
            and getattr(row, fit.x) is not None
        ):
            xs.append(float(getattr(row, fit.x)))
            ys.append(100.0 * row.value)
            has_ci = row.ci_low is not None and row.ci_high is not None
            cis.append((100.0 * row.ci_low, 100.0 * row.ci_high) if has_ci else None)
    return xs, ys, cis


# A y-axis spans at least this much of the metric's 0-100 range: autoscaled to the
# data, 0.005 AUC of noise fills the panel and reads as a trend.
MIN_Y_SPAN = 10.0


def _y_range(ax, values: Sequence[float]) -> None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    pad = max(MIN_Y_SPAN - (hi - lo), 0.0) / 2 + 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if hi > 100.0:  # keep the span, inside the metric's range
        lo, hi = lo - (hi - 100.0), 100.0
    if lo < 0.0:
        lo, hi = 0.0, min(100.0, hi - lo)
    ax.set_ylim(lo, hi)


def _x_label(value: float) -> str:
    """Tick labels people read: 5.53, 22.1, 86.6 (M parameters), 1.2e+04 images."""
    return f"{value:.3g}"


def _log_axes(ax, xs: Sequence[float]) -> None:
    """Log x labelled with the measured values. y stays linear: it spans a few
    AUC points, within one decade, where a log axis would show no tick labels."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ticks = sorted(set(xs))
    ax.set_xticks(ticks, [_x_label(v) for v in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    # Saturated curves (AUC 100 everywhere) would get an offset label like "1e-6+1e2".
    ax.ticklabel_format(axis="y", useOffset=False)


def _fit_line(ax, fit: ScalingFit, xs: Sequence[float], color: str, label: str) -> None:
    grid = np.geomspace(min(xs), max(xs), 50)
    ax.plot(grid, np.exp(fit.intercept + fit.slope * np.log(grid)), color=color, label=label)


def scaling_curves(
    rows: Sequence[ResultRow], fits: Sequence[ScalingFit], out_dir: Path
) -> list[Path]:
    """One figure per (kind, objective, protocol, metric, fixed): a panel per
    benchmark with its points and fitted line, and a last panel with the mean curve."""
    plt = _pyplot()
    written = []
    families: dict[tuple, list[ScalingFit]] = defaultdict(list)
    for fit in fits:
        families[(fit.kind, fit.objective, fit.protocol, fit.metric, fit.fixed)].append(fit)
    for (kind, objective, protocol, metric, fixed), group in sorted(families.items()):
        panels = [f for f in group if f.aggregate == "benchmark"]
        panels += [f for f in group if f.aggregate == "mean_curve"]
        if not panels:
            continue
        cols = min(4, len(panels))
        nrows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.7 * nrows), squeeze=False)
        for ax, fit in zip(axes.flat, panels, strict=False):
            if fit.aggregate == "mean_curve":
                xs = [float(v) for v in fit.x_values.split()]
                ys = _mean_points(rows, fit, xs)
                cis = [None] * len(xs)
            else:
                xs, ys, cis = _points(rows, fit)
            _draw_points(ax, xs, ys, cis)
            _fit_line(ax, fit, xs, "C3", f"slope {fit.slope:.4f}")
            _log_axes(ax, xs)
            _y_range(ax, ys + [v for ci in cis if ci for v in ci])
            ax.set_title(
                "mean over benchmarks" if fit.benchmark == "MEAN" else fit.benchmark, fontsize=9
            )
            ax.legend(fontsize=7, loc="lower right")
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        xlabel = "parameters (M)" if kind == "model" else group[0].x
        fig.supxlabel(f"{xlabel} (log)", fontsize=9)
        fig.supylabel(f"100 × {metric}", fontsize=9)
        fig.suptitle(
            f"{kind} scaling: {objective or '-'} / {protocol} / {metric}  {fixed}", fontsize=10
        )
        has_ci = any(
            ci for f in panels if f.aggregate != "mean_curve" for ci in _points(rows, f)[2]
        )
        fig.text(
            0.01, 0.005,
            ("bars: 95% bootstrap intervals (results table); " if has_ci else
             "no intervals in the results table; ")
            + f"each y-axis spans at least {MIN_Y_SPAN:g} points (0.1 of the metric's range)",
            fontsize=6, color="0.35", ha="left", va="bottom",
        )  # fmt: skip
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = out_dir / f"scaling_{slug(kind, objective, protocol, metric, fixed)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _draw_points(ax, xs, ys, cis) -> None:
    """Markers, with the 95% interval as an error bar where the table has one."""
    ax.scatter(xs, ys, s=16, color="C0", zorder=3)
    with_ci = [(x, y, ci) for x, y, ci in zip(xs, ys, cis, strict=True) if ci is not None]
    if with_ci:
        x, y, ci = zip(*with_ci, strict=True)
        below = [max(v - c[0], 0.0) for v, c in zip(y, ci, strict=True)]
        above = [max(c[1] - v, 0.0) for v, c in zip(y, ci, strict=True)]
        ax.errorbar(
            x, y, yerr=[below, above], fmt="none", ecolor="C0", alpha=0.6, capsize=2, lw=0.8
        )


def _mean_points(rows: Sequence[ResultRow], fit: ScalingFit, xs: Sequence[float]) -> list[float]:
    from biovfm_core.analysis.fits import FIXED, fixed_text

    per: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        x = getattr(row, fit.x)
        if (
            x is not None
            and row.objective == fit.objective
            and row.protocol == fit.protocol
            and row.metric.lower() == fit.metric
            and fixed_text(row, FIXED[fit.kind]) == fit.fixed
        ):
            per[float(x)][benchmark_key(row.benchmark)].append(row.value)
    # The fit records its x values printed with 6 significant digits (5.52902 for
    # 5.529024 M parameters): match them to the table's by closeness, not equality.
    at = [next((k for k in per if math.isclose(k, x, rel_tol=1e-5)), None) for x in xs]
    common = (
        set.intersection(*(set(per[k]) if k is not None else set() for k in at)) if at else set()
    )
    if not common:  # no benchmark at every x: no mean (and no numpy empty-mean warning)
        return [math.nan] * len(xs)
    return [100.0 * float(np.mean([np.mean(per[k][b]) for b in common])) for k in at]


def slope_scatter(
    fits: Sequence[ScalingFit],
    properties: Sequence[TaskProperties],
    correlations: Sequence[Correlation],
    out_dir: Path,
) -> list[Path]:
    """Per slope family, slope against each property, with Pearson r and Spearman rho."""
    plt = _pyplot()
    by_name = {p.benchmark: p for p in properties}
    written = []
    for family, slopes in sorted(slope_families(fits).items()):
        kind, objective, protocol, metric, fixed = family
        names = sorted(b for b in slopes if b in by_name)
        rows = [
            c
            for c in correlations
            if (c.kind, c.objective, c.protocol, c.metric, c.fixed) == family
        ]
        if len(names) < 2 or not rows:
            continue
        fig, axes = plt.subplots(1, len(rows), figsize=(3.0 * len(rows), 2.9), squeeze=False)
        for ax, corr in zip(axes[0], rows, strict=True):
            x = [by_name[b].value(corr.property) for b in names]
            y = [slopes[b] for b in names]
            ax.scatter(x, y, s=18)
            for xi, yi, b in zip(x, y, names, strict=True):
                ax.annotate(b.replace("mnist", ""), (xi, yi), fontsize=6, alpha=0.7)
            if corr.property == "n_train":
                from matplotlib.ticker import NullFormatter, ScalarFormatter

                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(corr.property, fontsize=8)
            ax.set_title(f"r={corr.pearson_r:.2f}  ρ={corr.spearman_rho:.2f}", fontsize=9)
            ax.tick_params(labelsize=7)
        axes[0][0].set_ylabel(f"{kind}-scaling slope", fontsize=8)
        fig.suptitle(f"{objective or '-'} / {protocol} / {metric}  {fixed}", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"slope_vs_property_{slug(kind, objective, protocol, metric, fixed)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def group_bars(
    rows: Sequence[ResultRow], column: str, out_dir: Path, *, metric: str = "auc"
) -> Path | None:
    """Mean ``100 × metric`` over benchmarks for each value of ``column``
    (``modalities``, ``images``, ``data_fraction``), one bar group per objective.
    None when the column has fewer than two values."""
    values = {getattr(r, column) for r in rows if r.metric.lower() == metric}
    values.discard(None)
    values.discard("")
    if len(values) < 2:
        return None
    plt = _pyplot()
    order = sorted(values, key=lambda v: (isinstance(v, str), v))
    objectives = sorted(
        {r.objective for r in rows if r.metric.lower() == metric and getattr(r, column) in values}
    )
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.9 * len(order) * len(objectives)), 3.2))
    width = 0.8 / len(objectives)
    for k, objective in enumerate(objectives):
        heights = []
        for value in order:
            sel = [
                100.0 * r.value
                for r in rows
                if r.metric.lower() == metric
                and r.objective == objective
                and getattr(r, column) == value
            ]
            heights.append(float(np.mean(sel)) if sel else float("nan"))
        ax.bar(np.arange(len(order)) + k * width, heights, width, label=objective or "-")
    ax.set_xticks(np.arange(len(order)) + 0.4 - width / 2)
    ax.set_xticklabels(
        [f"{v:g}" if isinstance(v, float | int) else str(v) for v in order], fontsize=8
    )
    finite = [
        100.0 * r.value for r in rows if r.metric.lower() == metric and getattr(r, column) in values
    ]
    ax.set_ylim(max(0.0, min(finite) - 5.0), min(100.0, max(finite) + 2.0))
    ax.set_xlabel(column)
    ax.set_ylabel(f"mean 100 × {metric}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"bars_{slug(column, metric)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
