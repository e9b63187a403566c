"""`biovfm analyze` end to end on synthetic results in the shared schema."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_analysis_properties import SPECS, medmnist_root, write_medmnist

from biovfm_core.cli.main import cli
from biovfm_core.results import ResultRow, write_results

SIZES = (31.2, 47.4, 111.66, 329.24)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_results(path: Path, seed: int = 0) -> Path:
    """Two objectives over the synthetic benchmarks and four sizes, plus a small
    data-scaling and modality grid for the bars."""
    rng = np.random.default_rng(seed)
    rows = []
    flags = [s[0] for s in SPECS]
    for objective, base in (("dinov2", 0.009), ("mae", 0.019)):
        for i, flag in enumerate(flags):
            slope = base + 0.002 * (i - 3.5) / 3.5
            for p in SIZES:
                value = math.exp(4.44 + slope * math.log(p) + rng.normal(0, 0.002)) / 100
                rows.append(
                    ResultRow(
                        model=f"{objective}-{p}",
                        benchmark=f"medmnist:{flag}",
                        protocol="linear",
                        metric="auc",
                        value=min(value, 0.999),
                        objective=objective,
                        params_m=p,
                        source="synthetic",
                    )
                )
    for frac, modalities in ((0.01, "all"), (0.1, "all"), (1.0, "all"), (1.0, "us")):
        for i, flag in enumerate(flags[:3]):
            rows.append(
                ResultRow(
                    model=f"dinov2-b-{frac}-{modalities}",
                    benchmark=flag,
                    protocol="linear",
                    metric="auc",
                    value=0.85 + 0.02 * math.log10(frac * 100) / 2 + 0.01 * i,
                    objective="dinov2",
                    params_m=86.0,
                    images=int(frac * 21_000_000),
                    data_fraction=frac,
                    modalities=modalities,
                )
            )
    write_results(path, rows)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    return {
        "results": synthetic_results(root / "results.csv"),
        "medmnist": medmnist_root(root / "medmnist"),
        "cache": root / "cache",
        "root": root,
    }


def invoke(*args: str):
    return CliRunner().invoke(cli, ["analyze", *args])


def test_report_writes_tables_figures_and_linked_markdown(workspace):
    out = workspace["root"] / "report"
    result = invoke(
        "report",
        "--results",
        str(workspace["results"]),
        "--medmnist-root",
        str(workspace["medmnist"]),
        "--cache-dir",
        str(workspace["cache"]),
        "--output",
        str(out),
        "--permutations",
        "20",
    )
    assert result.exit_code == 0, result.output
    for name in ("fits", "properties", "correlations", "predictions"):
        with (out / f"{name}.csv").open() as handle:
            assert list(csv.DictReader(handle)), name
    pngs = sorted((out / "figures").glob("*.png"))
    names = {p.name for p in pngs}
    assert any(n.startswith("scaling_model_dinov2_linear_auc") for n in names)
    assert any(n.startswith("scaling_model_mae") for n in names)
    assert any(n.startswith("scaling_data_dinov2") for n in names)
    assert any(n.startswith("slope_vs_property_model_dinov2") for n in names)
    assert {"bars_modalities_auc.png", "bars_images_auc.png"} <= names
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC, png
    report = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert {f"figures/{p.name}" for p in pngs} <= set(links)
    for link in links:
        assert not Path(link).is_absolute() and (out / link).is_file(), link
    assert "## Compared with the study" in report and "0.0191" in report
    assert "Leave one benchmark out" in report
    with (out / "fits.csv").open() as handle:
        fits = list(csv.DictReader(handle))
    mean = next(
        r
        for r in fits
        if r["aggregate"] == "mean_of_slopes" and r["objective"] == "mae" and r["kind"] == "model"
    )
    assert float(mean["slope"]) == pytest.approx(0.019, abs=0.002)
    assert float(mean["ci_low"]) < 0.019 < float(mean["ci_high"])


def test_properties_then_report_from_the_csv(workspace):
    props_csv = workspace["root"] / "props.csv"
    result = invoke(
        "properties",
        "--medmnist-root",
        str(workspace["medmnist"]),
        "--cache-dir",
        str(workspace["cache"]),
        "--output",
        str(props_csv),
    )
    assert result.exit_code == 0, result.output
    with props_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["benchmark"] for r in rows] == sorted(s[0] for s in SPECS)
    out = workspace["root"] / "report2"
    result = invoke(
        "report",
        "--results",
        str(workspace["results"]),
        "--properties",
        str(props_csv),
        "--output",
        str(out),
        "--permutations",
        "0",
    )
    assert result.exit_code == 0, result.output
    assert (out / "correlations.csv").is_file()


def test_properties_of_single_files(workspace, tmp_path):
    task = write_medmnist(tmp_path, "mytaskmnist", 3, 50, 45.0)
    out = tmp_path / "p.csv"
    result = invoke("properties", "--file", str(task), "--no-cache", "--png", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "mytaskmnist" in result.output
    with out.open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["n_train"] == "50" and float(row["compressibility_png"]) > 0
    result = invoke("properties", "--output", str(out))
    assert result.exit_code == 2 and "--medmnist-root DIR and/or --file" in result.output


def test_predict_answers_for_a_new_task(workspace, tmp_path):
    task = write_medmnist(tmp_path, "mytaskmnist", 3, 50, 45.0)
    result = invoke(
        "predict",
        "--benchmark",
        str(task),
        "--results",
        str(workspace["results"]),
        "--medmnist-root",
        str(workspace["medmnist"]),
        "--cache-dir",
        str(workspace["cache"]),
        "--objective",
        "mae",
        "--permutations",
        "10",
        "--json",
    )
    assert result.exit_code == 0, result.output
    (prediction,) = json.loads(result.stdout)
    assert prediction["benchmark"] == "mytaskmnist" and prediction["objective"] == "mae"
    assert prediction["n_train_benchmarks"] == 8
    assert math.isfinite(prediction["slope"]) and prediction["loo_mae"] > 0
    result = invoke(
        "predict",
        "--benchmark",
        str(task),
        "--results",
        str(workspace["results"]),
        "--medmnist-root",
        str(workspace["medmnist"]),
        "--cache-dir",
        str(workspace["cache"]),
        "--reference",
        "0.9",
        "--permutations",
        "0",
    )
    assert result.exit_code == 0, result.output
    assert "a 10× larger model" in result.output and "dinov2" in result.output


def test_fit_prints_and_writes_the_fits(workspace, tmp_path):
    result = invoke(
        "fit", "--results", str(workspace["results"]), "--output", str(tmp_path / "f.csv")
    )
    assert result.exit_code == 0, result.output
    assert "MEAN(curve)" in result.output and "alphamnist" in result.output
    assert (tmp_path / "f.csv").is_file()


def test_missing_columns_are_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("model,benchmark,metric,value\nm,pathmnist,auc,0.9\n")
    result = invoke("report", "--results", str(bad), "--output", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "lacks column(s) protocol" in result.output


def test_single_model_size_is_a_clear_error(tmp_path):
    rows = [
        ResultRow("m", b, "linear", "auc", 0.9, objective="dinov2", params_m=86.0)
        for b in ("pathmnist", "dermamnist")
    ]
    path = write_results(tmp_path / "one.csv", rows)
    result = invoke("report", "--results", str(path), "--output", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "no scaling curve can be fitted" in result.output
    assert "only one params_m value" in result.output


def test_fit_of_a_data_fraction_sweep_names_kind_data(tmp_path):
    rows = [
        ResultRow(
            f"m{f}", "pathmnist", "linear", "auc", 0.8 + f / 10, objective="mae",
            params_m=5.7, data_fraction=f,
        )
        for f in (0.25, 0.5, 1.0)
    ]  # fmt: skip
    path = write_results(tmp_path / "fractions.csv", rows)
    result = invoke("fit", "--results", str(path))
    assert result.exit_code == 2
    message = result.output.strip()
    assert message.count("\n") == 0, message
    assert message.endswith(
        "--kind model: no curve has two params_m values to fit; these results vary along "
        "the data axis: use --kind data"
    )
    assert invoke("fit", "--results", str(path), "--kind", "data").exit_code == 0


def test_table_without_sizes_is_a_clear_error(tmp_path):
    path = write_results(tmp_path / "t.csv", [ResultRow("m", "pathmnist", "linear", "auc", 0.9)])
    result = invoke("fit", "--results", str(path))
    assert result.exit_code == 2 and "without params_m" in result.output


def test_analyze_help_stays_light():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from biovfm_core.cli.main import cli\n"
        "for args in (['--help'], ['analyze', '--help'], ['analyze', 'report', '--help']):\n"
        "    r = CliRunner().invoke(cli, args); assert r.exit_code == 0, r.output\n"
        "print([m for m in ('torch', 'matplotlib', 'scipy', 'sklearn') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_demo_benchmark_report_has_intervals_a_caveat_and_no_numpy_warnings(tmp_path):
    import warnings

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from biovfm_core.analysis.plots import MIN_Y_SPAN, _draw_points, _x_label, _y_range
    from biovfm_core.analysis.report import run_report

    # What `biovfm sweep examples/sweeps/demo.yaml` collects: the three demo tasks,
    # two sizes, AUCs 0.002 apart with bootstrap intervals.
    rows = []
    # Real parameter counts: the fits print them to 6 digits (5.52902), which the mean
    # panel must still match to the table's values.
    for params, bump in ((5.529024, 0.0), (21.665431, 0.002)):
        for task, base in (("demo:modality", 0.9), ("demo:texture", 0.8), ("demo:plane", 0.85)):
            value = base + bump
            rows.append(
                ResultRow(
                    f"cell{params}", task, "linear", "auc", value, value - 0.03, value + 0.03,
                    objective="dinov2", backbone="vit_tiny", params_m=params, seed=0,
                    images=120, data_fraction=1.0, modalities="all", convention="study",
                )
            )  # fmt: skip
    write_results(tmp_path / "results.csv", rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "Mean of empty slice"
        report = run_report([tmp_path / "results.csv"], tmp_path / "out", permutations=10)
    text = report.read_text()
    assert "**Caveat:** these slopes are over modality, plane, texture, not the study's 12" in text
    figures = sorted((tmp_path / "out" / "figures").glob("scaling_model_*.png"))
    assert figures and all(p.read_bytes()[:8] == PNG_MAGIC for p in figures)
    from biovfm_core.analysis.fits import fit_scaling
    from biovfm_core.analysis.plots import _mean_points

    fits = fit_scaling(rows, kind="model").fits
    mean_fit = next(f for f in fits if f.aggregate == "mean_curve")
    xs = [float(v) for v in mean_fit.x_values.split()]
    assert _mean_points(rows, mean_fit, xs) == pytest.approx([85.0, 85.2])

    # The pieces the figures are drawn with: readable ticks, a y-axis of at least 10
    # points around 0.2 points of difference, intervals drawn as error bars.
    assert [_x_label(v) for v in (5.52902, 21.6654, 86.5, 12000)] == [
        "5.53", "21.7", "86.5", "1.2e+04"
    ]  # fmt: skip
    fig, ax = plt.subplots()
    _draw_points(ax, [5.5, 21.7], [80.0, 80.2], [(77.0, 83.0), None])
    _y_range(ax, [80.0, 80.2, 77.0, 83.0])
    low, high = ax.get_ylim()
    assert high - low >= MIN_Y_SPAN and low < 77.0 and high > 83.0
    assert len(ax.collections) == 2  # the markers and one error bar
    _y_range(ax, [99.9, 100.0])
    assert ax.get_ylim()[1] == 100.0 and ax.get_ylim()[0] <= 90.0  # inside the range
    plt.close(fig)
