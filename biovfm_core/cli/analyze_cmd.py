"""``biovfm analyze``: scaling fits, task properties and their correlations.

Every subcommand imports numpy/scipy/matplotlib when it runs, so ``biovfm --help``
stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import click

from biovfm_core.errors import ConfigError

_RESULTS_HELP = (
    "Results CSV in the schema of biovfm_core/results.py (what `biovfm eval` writes, or "
    "published numbers in the same columns); repeatable, tables are concatenated."
)

# Options shared by `fit`, `report` and `predict`.
_results_option = click.option(
    "--results",
    "results",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False),
    help=_RESULTS_HELP,
)
_properties_option = click.option(
    "--properties",
    "properties_csv",
    type=click.Path(dir_okay=False),
    help="Properties CSV of the measured benchmarks (from `biovfm analyze properties`).",
)
_medmnist_root_option = click.option(
    "--medmnist-root",
    type=click.Path(file_okay=False),
    help="Compute the measured benchmarks' properties from the MedMNIST files here instead.",
)


def _property_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """How properties are computed from MedMNIST files (shared by the subcommands)."""
    decorators = [
        click.option(
            "--size",
            type=click.Choice(["28", "64", "128", "224"]),
            default="28",
            show_default=True,
            help="MedMNIST image size to read under --medmnist-root.",
        ),
        click.option(
            "--seed",
            type=int,
            default=0,
            show_default=True,
            help="Seed of the image subsamples (and the permutation test).",
        ),
        click.option(
            "--max-images",
            type=int,
            default=5000,
            show_default=True,
            help="Training images whose gzip ratio enters the median (0: all).",
        ),
        click.option(
            "--dbi-samples",
            type=int,
            default=5000,
            show_default=True,
            help="Samples the Davies-Bouldin index is computed on (0: all).",
        ),
        click.option(
            "--dbi-side",
            type=int,
            default=28,
            show_default=True,
            help="Raw-pixel DBI: images are block-averaged to at most this side.",
        ),
        click.option(
            "--png", is_flag=True, help="Also compute compressibility as raw / PNG bytes."
        ),
        click.option(
            "--features",
            "features",
            multiple=True,
            metavar="BENCHMARK=NPZ",
            help="DBI on features from an .npz with 'features' and 'labels' "
            "instead of raw pixels (repeatable).",
        ),
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False),
            help="Property cache (default $BIOVFM_CACHE/properties or ~/.cache/biovfm/properties).",
        ),
        click.option("--no-cache", is_flag=True, help="Recompute and do not write the cache."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _options(kw: dict[str, Any]):
    from biovfm_core.analysis.fits import benchmark_key
    from biovfm_core.analysis.report import PropertyOptions

    features = {}
    for item in kw.pop("features"):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--features {item!r}: expected BENCHMARK=PATH.npz")
        features[benchmark_key(name)] = path
    return PropertyOptions(
        size=int(kw.pop("size")),
        seed=kw.pop("seed"),
        max_images=kw.pop("max_images"),
        dbi_samples=kw.pop("dbi_samples"),
        dbi_side=kw.pop("dbi_side"),
        png=kw.pop("png"),
        features=features,
        cache_dir=kw.pop("cache_dir"),
        use_cache=not kw.pop("no_cache"),
    )


@click.group("analyze")
def analyze() -> None:
    """Fit scaling laws and correlate them with task properties.

    \b
    biovfm analyze report --results R.csv --medmnist-root ~/medmnist --output out/
    biovfm analyze properties --medmnist-root ~/medmnist --output properties.csv
    biovfm analyze properties --file my_task.npz --output my_task.csv
    biovfm analyze predict --benchmark my_task.npz --results R.csv --properties P.csv
    biovfm analyze fit --results R.csv --output fits.csv
    """


@analyze.command("fit")
@_results_option
@click.option(
    "--kind",
    type=click.Choice(["model", "data"]),
    default="model",
    show_default=True,
    help="x = params_m (model: a model-size sweep) or images / data_fraction (data: a "
    "data-fraction sweep).",
)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    default=("auc",),
    show_default=True,
    help="Metric(s) to fit (repeatable).",
)
@click.option("--output", type=click.Path(dir_okay=False), help="Write the fits as CSV here.")
def fit_cmd(
    results: tuple[str, ...], kind: str, metrics: tuple[str, ...], output: str | None
) -> None:
    """Slope, intercept, standard error and 95% CI of every scaling curve."""
    from pathlib import Path

    from biovfm_core.analysis.fits import fit_scaling
    from biovfm_core.analysis.report import read_tables, write_table

    rows = read_tables(results)
    try:
        fitset = fit_scaling(rows, kind, metrics=metrics)
    except ConfigError:
        other = "data" if kind == "model" else "model"
        if not fit_scaling(rows, other, metrics=metrics, require=False).fits:
            raise
        # The commonest mistake: a data-fraction sweep fitted with the default kind.
        x = "params_m" if kind == "model" else "images / data_fraction"
        raise ConfigError(
            f"--kind {kind}: no curve has two {x} values to fit; these results vary "
            f"along the {other} axis: use --kind {other}"
        ) from None
    if output:
        write_table(Path(output), fitset.fits)
    click.echo(
        f"{'objective':<12} {'benchmark':<16} {'protocol':<9} {'metric':<7} "
        f"{'slope':>8} {'95% CI':>20} {'n':>3}  held fixed"
    )
    for f in fitset.fits:
        name = f.benchmark if f.aggregate == "benchmark" else f"MEAN({f.aggregate[5:]})"
        ci = f"[{f.ci_low:.4f}, {f.ci_high:.4f}]"
        click.echo(
            f"{f.objective or '-':<12} {name:<16} {f.protocol:<9} {f.metric:<7} "
            f"{f.slope:>8.4f} {ci:>20} {f.n:>3}  {f.fixed or '-'}"
        )
    for note in fitset.skipped:
        click.echo(f"skipped: {note}", err=True)


@analyze.command("properties")
@click.option(
    "--medmnist-root",
    type=click.Path(file_okay=False),
    help="Folder of MedMNIST .npz files ({flag}.npz or {flag}_{size}.npz).",
)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="A MedMNIST-layout .npz (repeatable; with or instead of --medmnist-root).",
)
@click.option(
    "--benchmark",
    "benchmarks",
    multiple=True,
    help="Only these benchmarks under --medmnist-root (flags, repeatable).",
)
@click.option(
    "--output", required=True, type=click.Path(dir_okay=False), help="Properties CSV to write."
)
@_property_options
def properties_cmd(
    medmnist_root: str | None,
    files: tuple[str, ...],
    benchmarks: tuple[str, ...],
    output: str,
    **kw: Any,
) -> None:
    """Classes, training samples, compressibility and Davies-Bouldin index per benchmark."""
    from biovfm_core.analysis.fits import benchmark_key
    from biovfm_core.analysis.properties import write_properties
    from biovfm_core.analysis.report import load_properties

    if not medmnist_root and not files:
        raise ConfigError("give --medmnist-root DIR and/or --file NPZ")
    options = _options(kw)
    only = {benchmark_key(b) for b in benchmarks} or None
    props = load_properties(None, medmnist_root, options, only=only) if medmnist_root else []
    props += [options.compute(f) for f in files]
    if not props:
        raise ConfigError(f"none of {sorted(only or [])} found under {medmnist_root}")
    write_properties(output, props)
    for p in props:
        click.echo(
            f"{p.benchmark:<16} classes {p.n_classes:>3}  train {p.n_train:>7}  "
            f"gzip {p.compressibility:6.3f}  DBI {p.dbi:7.3f} ({p.dbi_space})"
        )
    click.echo(f"wrote {output}")


@analyze.command("report")
@_results_option
@_properties_option
@_medmnist_root_option
@click.option(
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for the CSVs, figures/ and report.md.",
)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    default=("auc",),
    show_default=True,
    help="Metric(s) to fit (repeatable).",
)
@click.option(
    "--permutations",
    type=int,
    default=200,
    show_default=True,
    help="Shuffles in the leave-one-out permutation test (0: none).",
)
@_property_options
def report_cmd(
    results: tuple[str, ...],
    properties_csv: str | None,
    medmnist_root: str | None,
    output: str,
    metrics: tuple[str, ...],
    permutations: int,
    **kw: Any,
) -> None:
    """Fits, properties, correlations, predictions, figures and a Markdown report."""
    from biovfm_core.analysis.report import run_report

    options = _options(kw)
    path = run_report(
        results,
        output,
        properties_csv=properties_csv,
        medmnist_root=medmnist_root,
        property_options=options,
        metrics=metrics,
        permutations=permutations,
        seed=options.seed,
    )
    click.echo(f"wrote {path}")


@analyze.command("predict")
@click.option(
    "--benchmark",
    "benchmark",
    required=True,
    type=click.Path(dir_okay=False),
    help="Your task as a MedMNIST-layout .npz (train split is read).",
)
@_results_option
@_properties_option
@_medmnist_root_option
@click.option("--objective", help="Only this objective (default: every one in the table).")
@click.option("--protocol", help="Only this protocol (default: every one in the table).")
@click.option("--metric", default="auc", show_default=True)
@click.option(
    "--reference",
    type=float,
    help="Your current metric (0–1) to measure the 10× gain from "
    "(default: the table's mean at its largest model).",
)
@click.option("--permutations", type=int, default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
@_property_options
def predict_cmd(
    benchmark: str,
    results: tuple[str, ...],
    properties_csv: str | None,
    medmnist_root: str | None,
    objective: str | None,
    protocol: str | None,
    metric: str,
    reference: float | None,
    permutations: int,
    as_json: bool,
    **kw: Any,
) -> None:
    """Is scaling worth it for my task? Predicted slope, its error, and a 10× model's gain."""
    from pathlib import Path

    from biovfm_core.analysis.fits import benchmark_key
    from biovfm_core.analysis.predict import describe, predict_benchmark
    from biovfm_core.analysis.report import load_properties, read_tables

    if not properties_csv and not medmnist_root:
        raise ConfigError(
            "give --properties P.csv or --medmnist-root DIR for the measured benchmarks"
        )
    if reference is not None and not 0 < reference <= 1:
        raise ConfigError(f"--reference is a metric in (0, 1], got {reference}")
    options = _options(kw)
    rows = read_tables(results)
    wanted = {benchmark_key(r.benchmark) for r in rows}
    properties = load_properties(properties_csv, medmnist_root, options, only=wanted)
    target = options.compute(Path(benchmark))
    predictions = predict_benchmark(
        rows,
        properties,
        target,
        objective=objective,
        protocol=protocol,
        metric=metric,
        reference=reference,
        permutations=permutations,
        seed=options.seed,
    )
    if as_json:
        click.echo(json.dumps([asdict(p) for p in predictions], indent=1))
        return
    click.echo(
        f"{target.benchmark}: {target.n_classes} classes, {target.n_train} training images, "
        f"compressibility {target.compressibility:.3f}, DBI {target.dbi:.3f} ({target.dbi_space})"
    )
    for prediction in predictions:
        click.echo(describe(prediction))
