"""The whole analysis in one call: tables in, CSVs + PNGs + one Markdown report out.

Input tables are results CSVs in the schema of :mod:`biovfm_core.results` (what
``biovfm eval`` writes, or published numbers typed into the same columns); model
scaling needs ``params_m`` and data scaling ``images`` (or ``data_fraction``).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

from biovfm_core.analysis.correlate import (
    REGRESSION_FEATURES,
    Correlation,
    LooResult,
    correlate,
    loo_predict,
    slope_families,
)
from biovfm_core.analysis.fits import FitSet, ScalingFit, benchmark_key, fit_scaling
from biovfm_core.analysis.properties import (
    TaskProperties,
    benchmark_properties,
    find_medmnist,
    read_properties,
    write_properties,
)
from biovfm_core.errors import ConfigError
from biovfm_core.files import write_atomic
from biovfm_core.results import ResultRow, one_convention, read_results

REFERENCE_CSV = Path(__file__).with_name("reference") / "biovfm21m_reported.csv"


def read_tables(paths: Sequence[str | os.PathLike[str]]) -> list[ResultRow]:
    """Rows of every results table, in order; an error when the tables' metric
    conventions differ."""
    if not paths:
        raise ConfigError("give at least one results table (--results R.csv)")
    rows: list[ResultRow] = []
    tables = []
    for path in paths:
        table = read_results(path)
        if not table:
            raise ConfigError(f"{path}: results table has no rows")
        tables.append((str(path), table))
        rows.extend(table)
    # Scaling fits across metric definitions would fit the definitions' gap.
    one_convention(tables)
    return rows


# The study's 12 MedMNIST 2D benchmarks, as benchmark_key spells them.
STUDY_BENCHMARKS = frozenset(
    [
        "pathmnist",
        "chestmnist",
        "dermamnist",
        "octmnist",
        "pneumoniamnist",
        "retinamnist",
        "breastmnist",
        "bloodmnist",
        "tissuemnist",
        "organamnist",
        "organcmnist",
        "organsmnist",
    ]
)


def read_reference() -> list[dict[str, str]]:
    """The figures the study reports (mean AUCs, mean slopes, Pearson r), as rows."""
    with REFERENCE_CSV.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_table(path: Path, rows: Sequence, columns: Sequence[str] | None = None) -> Path:
    """Dataclass rows (or dicts) as CSV; floats in full precision, None as empty."""
    dicts = [asdict(r) if is_dataclass(r) else dict(r) for r in rows]
    names = list(columns or (dicts[0].keys() if dicts else []))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore")
    writer.writeheader()
    for row in dicts:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return write_atomic(path, buffer.getvalue().encode())


@dataclass
class PropertyOptions:
    """How task properties are computed when read from MedMNIST files."""

    size: int = 28
    seed: int = 0
    max_images: int = 5000
    dbi_samples: int = 5000
    dbi_side: int = 28
    png: bool = False
    features: dict[str, str] = field(default_factory=dict)  # benchmark → feature .npz
    cache_dir: str | None = None
    use_cache: bool = True

    def compute(self, npz: str | os.PathLike[str]) -> TaskProperties:
        return benchmark_properties(
            npz,
            features=self.features.get(benchmark_key(Path(npz).name)),
            seed=self.seed,
            max_images=self.max_images,
            dbi_samples=self.dbi_samples,
            dbi_side=self.dbi_side,
            png=self.png,
            cache_dir=self.cache_dir,
            use_cache=self.use_cache,
        )


def load_properties(
    properties_csv: str | os.PathLike[str] | None,
    medmnist_root: str | os.PathLike[str] | None,
    options: PropertyOptions | None = None,
    *,
    only: set[str] | None = None,
) -> list[TaskProperties]:
    """Properties from a CSV, or computed from the MedMNIST files under a root
    (restricted to ``only`` when given)."""
    if properties_csv and medmnist_root:
        raise ConfigError("give --properties or --medmnist-root, not both")
    if properties_csv:
        return read_properties(properties_csv)
    if medmnist_root:
        options = options or PropertyOptions()
        files = find_medmnist(medmnist_root, options.size)
        if only is not None:
            files = [f for f in files if benchmark_key(f.name) in only]
        return [options.compute(f) for f in files]
    return []


@dataclass
class Analysis:
    """Everything the report shows, for callers that want the numbers."""

    rows: list[ResultRow]
    model: FitSet
    data: FitSet
    properties: list[TaskProperties]
    correlations: list[Correlation]
    loo: list[LooResult]
    notes: list[str]


def analyse(
    rows: Sequence[ResultRow],
    properties: Sequence[TaskProperties],
    *,
    metrics: Sequence[str] = ("auc",),
    level: float = 0.95,
    features: Sequence[str] = REGRESSION_FEATURES,
    permutations: int = 200,
    seed: int = 0,
) -> Analysis:
    """Fits (model and data), correlations and LOO predictions of one table."""
    rows = list(rows)
    have_params = any(r.params_m is not None for r in rows)
    have_data = any(r.images is not None or r.data_fraction is not None for r in rows)
    if not have_params and not have_data:
        raise ConfigError(
            "the results table has neither params_m (model scaling) nor images / "
            "data_fraction (data scaling) filled in; see biovfm_core/results.py"
        )
    notes: list[str] = []
    model = fit_scaling(rows, "model", metrics=metrics, level=level, require=False)
    data = fit_scaling(rows, "data", metrics=metrics, level=level, require=False)
    if not model.fits and not data.fits:
        reasons = "; ".join((model.skipped + data.skipped)[:6])
        raise ConfigError(f"no scaling curve can be fitted: {reasons}")
    if have_params:
        notes += model.skipped
    if have_data:
        notes += data.skipped
    fits = model.fits + data.fits
    correlations, corr_notes = correlate(fits, properties) if properties else ([], [])
    notes += corr_notes
    loo: list[LooResult] = []
    if properties:
        for family, slopes in sorted(slope_families(fits).items()):
            try:
                loo.append(
                    loo_predict(
                        slopes,
                        properties,
                        features=features,
                        permutations=permutations,
                        seed=seed,
                        family=family,
                    )
                )
            except ConfigError as exc:
                notes.append(f"leave-one-out {'/'.join(str(f) for f in family[:4])}: {exc}")
    return Analysis(rows, model, data, list(properties), correlations, loo, notes)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _p(value: float) -> str:
    return (
        "–" if not math.isfinite(value) else (f"{value:.3f}" if value >= 0.001 else f"{value:.1e}")
    )


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return [*lines, ""]


def _loo_rows(loo: Sequence[LooResult]) -> list[dict]:
    out = []
    for result in loo:
        for b, a, p, m in zip(
            result.benchmarks, result.actual, result.predicted, result.baseline, strict=True
        ):
            out.append(
                {
                    "kind": result.kind,
                    "objective": result.objective,
                    "protocol": result.protocol,
                    "metric": result.metric,
                    "fixed": result.fixed,
                    "benchmark": b,
                    "slope": a,
                    "predicted": p,
                    "baseline": m,
                    "abs_error": abs(p - a),
                    "baseline_abs_error": abs(m - a),
                    "features": " ".join(result.features),
                    "loo_mae": result.mae,
                    "baseline_mae": result.baseline_mae,
                    "permutation_p": result.permutation_p,
                    "seed": result.seed,
                }
            )
    return out


def write_report(
    analysis: Analysis,
    output: str | os.PathLike[str],
    *,
    inputs: Sequence[str] = (),
    properties_from: str = "",
) -> Path:
    """Write fits/properties/correlations/predictions CSVs, the PNGs and report.md."""
    from biovfm_core.analysis import plots

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    fits: list[ScalingFit] = analysis.model.fits + analysis.data.fits
    tables = {"fits": write_table(out / "fits.csv", fits)}
    if analysis.properties:
        tables["properties"] = write_properties(out / "properties.csv", analysis.properties)
    if analysis.correlations:
        tables["correlations"] = write_table(out / "correlations.csv", analysis.correlations)
    if analysis.loo:
        tables["predictions"] = write_table(out / "predictions.csv", _loo_rows(analysis.loo))
    curves = plots.scaling_curves(analysis.rows, fits, figures)
    scatters = plots.slope_scatter(fits, analysis.properties, analysis.correlations, figures)
    rows = analysis.rows
    metric = "auc" if any(r.metric.lower() == "auc" for r in rows) else rows[0].metric
    # images and data_fraction tell the same story; draw the fraction only without counts.
    size_column = "images" if any(r.images is not None for r in rows) else "data_fraction"
    bars = [
        p
        for column in ("modalities", size_column)
        if (p := plots.group_bars(analysis.rows, column, figures, metric=metric.lower()))
    ]

    def link(path: Path) -> str:
        return path.relative_to(out).as_posix()

    lines = ["# Scaling analysis", ""]
    lines.append(
        f"{len(rows)} result rows from {', '.join(inputs) or 'the given tables'}: "
        f"objectives {', '.join(sorted({r.objective or '-' for r in rows}))}; "
        f"{len({benchmark_key(r.benchmark) for r in rows})} benchmarks; metrics "
        f"{', '.join(sorted({r.metric for r in rows}))}."
    )
    lines += [
        "",
        "Slope = least-squares coefficient of log(100 × metric) on log(x), x = parameters "
        "in millions (model scaling) or pretraining images (data scaling); a 10× larger x "
        "multiplies the metric by 10^slope. Intervals are 95% t intervals; with fewer than "
        "three points they are undefined (–).",
        "",
        "Tables: " + ", ".join(f"[{name}.csv]({link(p)})" for name, p in tables.items()) + ".",
        "",
    ]
    for title, fitset in (("Model scaling", analysis.model), ("Data scaling", analysis.data)):
        if not fitset.fits:
            continue
        lines += [f"## {title}", "", "Means over benchmarks:", ""]
        means = [f for f in fitset.fits if f.aggregate != "benchmark"]
        lines += _md_table(
            ["objective", "protocol", "metric", "held fixed", "mean of", "slope", "95% CI", "n"],
            [
                [
                    f.objective or "-",
                    f.protocol,
                    f.metric,
                    f.fixed or "-",
                    "curve" if f.aggregate == "mean_curve" else "slopes",
                    _fmt(f.slope),
                    f"[{_fmt(f.ci_low)}, {_fmt(f.ci_high)}]",
                    f.n,
                ]
                for f in means
            ],
        )
        lines += ["Per benchmark:", ""]
        lines += _md_table(
            [
                "objective",
                "benchmark",
                "protocol",
                "metric",
                "held fixed",
                "slope",
                "95% CI",
                "n",
                "R²",
            ],
            [
                [
                    f.objective or "-",
                    f.benchmark,
                    f.protocol,
                    f.metric,
                    f.fixed or "-",
                    _fmt(f.slope),
                    f"[{_fmt(f.ci_low)}, {_fmt(f.ci_high)}]",
                    f.n,
                    _fmt(f.r2, 3),
                ]
                for f in fitset.per_benchmark()
            ],
        )
        kind = "model" if title.startswith("Model") else "data"
        for path in curves:
            if path.name.startswith(f"scaling_{kind}"):
                lines += [f"![{path.stem}]({link(path)})", ""]
    lines += _reference_section(analysis.model)
    if analysis.properties:
        lines += ["## Task properties", "", f"From {properties_from or 'the given table'}.", ""]
        lines += _md_table(
            ["benchmark", "classes", "train samples", "compressibility (gzip)", "DBI", "DBI on"],
            [
                [
                    p.benchmark,
                    p.n_classes,
                    p.n_train,
                    _fmt(p.compressibility, 3),
                    _fmt(p.dbi, 3),
                    p.dbi_space,
                ]
                for p in analysis.properties
            ],
        )
    if analysis.correlations:
        lines += ["## Slopes against task properties", ""]
        lines += _md_table(
            [
                "scaling",
                "objective",
                "protocol",
                "metric",
                "property",
                "n",
                "Pearson r",
                "p",
                "Spearman ρ",
                "p",
            ],
            [
                [
                    c.kind,
                    c.objective or "-",
                    c.protocol,
                    c.metric,
                    c.property,
                    c.n,
                    _fmt(c.pearson_r, 2),
                    _p(c.pearson_p),
                    _fmt(c.spearman_rho, 2),
                    _p(c.spearman_p),
                ]
                for c in analysis.correlations
            ],
        )
        lines += [f"![{p.stem}]({link(p)})" for p in scatters] + [""]
    if analysis.loo:
        lines += [
            "## Predicting a benchmark's slope from its properties",
            "",
            "Leave one benchmark out, fit a linear model on the others' standardised "
            "properties, predict the one left out. The baseline predicts the mean of the "
            "others' slopes; skill = 1 − MAE / baseline MAE (> 0: the properties help). "
            "The permutation p is the share of seeded slope shuffles whose LOO MAE is as "
            "low as ours.",
            "",
        ]
        lines += _md_table(
            [
                "scaling",
                "objective",
                "protocol",
                "metric",
                "features",
                "n",
                "LOO MAE",
                "baseline MAE",
                "skill",
                "perm. p",
            ],
            [
                [
                    r.kind,
                    r.objective or "-",
                    r.protocol,
                    r.metric,
                    ", ".join(r.features),
                    len(r.benchmarks),
                    _fmt(r.mae, 5),
                    _fmt(r.baseline_mae, 5),
                    _fmt(r.skill, 2),
                    _p(r.permutation_p),
                ]
                for r in analysis.loo
            ],
        )
    if bars:
        lines += [
            "## Data size and modality mix",
            "",
            f"Mean 100 × {metric} over every row with each value (the other factors are "
            "not held fixed here; the data-scaling fits above do that).",
            "",
        ]
        lines += [f"![{p.stem}]({link(p)})" for p in bars] + [""]
    if analysis.notes:
        lines += ["## Not fitted", ""] + [f"- {n}" for n in analysis.notes] + [""]
    return write_atomic(out / "report.md", "\n".join(lines).encode())


def _reference_section(model: FitSet) -> list[str]:
    """Our mean slopes next to the study's, for objectives named like the study's."""
    reported = {
        r["objective"]: float(r["value"]) for r in read_reference() if r["quantity"] == "mean_slope"
    }
    ours = [
        f
        for f in model.fits
        if f.aggregate == "mean_curve" and f.metric == "auc" and f.objective.lower() in reported
    ]
    if not ours:
        return []
    lines = [
        "## Compared with the study",
        "",
        "The study's reported mean slopes (AUC, read from its analysis notebook, shipped "
        "in `biovfm_core/analysis/reference/biovfm21m_reported.csv`) next to ours:",
        "",
    ]
    fitted = {f.benchmark for f in model.fits if f.aggregate == "benchmark"}
    if fitted and fitted != STUDY_BENCHMARKS:
        # A slope is a property of the tasks it is measured on: the demo benchmark's
        # three tasks (or any subset) do not estimate the study's 12-task mean.
        lines += [
            f"**Caveat:** these slopes are over {', '.join(sorted(fitted))}, not the "
            "study's 12 MedMNIST 2D benchmarks (`--benchmark medmnist:all`); the study's "
            "number is for scale only, not a value ours should match.",
            "",
        ]
    lines += _md_table(
        ["objective", "protocol", "held fixed", "our slope", "study's slope"],
        [
            [
                f.objective,
                f.protocol,
                f.fixed or "-",
                _fmt(f.slope),
                _fmt(reported[f.objective.lower()]),
            ]
            for f in ours
        ],
    )
    return lines


def run_report(
    results: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    properties_csv: str | os.PathLike[str] | None = None,
    medmnist_root: str | os.PathLike[str] | None = None,
    property_options: PropertyOptions | None = None,
    metrics: Sequence[str] = ("auc",),
    permutations: int = 200,
    seed: int = 0,
) -> Path:
    """``biovfm analyze report``: read, analyse, write; returns report.md's path."""
    rows = read_tables(results)
    wanted = {benchmark_key(r.benchmark) for r in rows}
    properties = load_properties(properties_csv, medmnist_root, property_options, only=wanted)
    analysis = analyse(rows, properties, metrics=metrics, permutations=permutations, seed=seed)
    source = str(properties_csv or medmnist_root or "")
    return write_report(analysis, output, inputs=[str(p) for p in results], properties_from=source)
