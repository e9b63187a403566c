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


def _points(rows: Sequence[ResultRow], fit: ScalingFit) -> tuple[list[float], list[float]]:
    from biovfm_core.analysis.fits import FIXED, fixed_text

    xs, ys = [], []
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
    return xs, ys


def _log_axes(ax, xs: Sequence[float]) -> None:
    """Log x labelled with the measured values. y stays linear: it spans a few
    AUC points, within one decade, where a log axis would show no tick labels."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ticks = sorted(set(xs))
    ax.set_xticks(ticks, [f"{v:g}" if v < 1e4 else f"{v:.2g}" for v in ticks])
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
            else:
                xs, ys = _points(rows, fit)
            ax.scatter(xs, ys, s=16, color="C0", zorder=3)
            _fit_line(ax, fit, xs, "C3", f"slope {fit.slope:.4f}")
            _log_axes(ax, xs)
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
        fig.tight_layout()
        path = out_dir / f"scaling_{slug(kind, objective, protocol, metric, fixed)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


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
    common = set.intersection(*(set(per[x]) for x in xs)) if xs else set()
    return [100.0 * float(np.mean([np.mean(per[x][b]) for b in common])) for x in xs]


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
