"""Scaling fits recover known slopes from synthetic tables; bad tables fail plainly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biovfm_core.analysis.fits import benchmark_key, fit_loglog, fit_scaling
from biovfm_core.analysis.report import read_reference
from biovfm_core.errors import ConfigError
from biovfm_core.results import ResultRow

SIZES = (31.2, 47.4, 111.66, 329.24)  # the study's four ViT sizes, in millions


def power(x, slope, intercept):
    """The metric on 0–1 whose log(100 · metric) is intercept + slope · log(x)."""
    return math.exp(intercept + slope * math.log(x)) / 100.0


def rows_for(slopes: dict[str, float], *, objective="dinov2", intercept=4.4, **extra):
    return [
        ResultRow(
            model=f"{objective}-{p}",
            benchmark=b,
            protocol="linear",
            metric="auc",
            value=power(p, s, intercept),
            objective=objective,
            params_m=p,
            **extra,
        )
        for b, s in slopes.items()
        for p in SIZES
    ]


def test_exact_on_noiseless_data():
    fit = fit_loglog(SIZES, [power(p, 0.0123, 4.3) for p in SIZES])
    assert fit.slope == pytest.approx(0.0123, abs=1e-12)
    assert fit.intercept == pytest.approx(4.3, abs=1e-12)
    assert fit.se_slope == pytest.approx(0.0, abs=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.predict(1000.0) == pytest.approx(power(1000.0, 0.0123, 4.3))


def test_ci_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    truth, covered, trials = 0.02, 0, 300
    x = np.repeat(SIZES, 3)
    for _ in range(trials):
        y = np.exp(4.4 + truth * np.log(x) + rng.normal(0, 0.01, len(x))) / 100
        fit = fit_loglog(x, y)
        covered += fit.ci_low <= truth <= fit.ci_high
        assert fit.n == 12 and fit.n_x == 4
    assert 0.90 <= covered / trials <= 0.99


def test_ci_matches_the_t_interval_formula():
    from scipy import stats

    x = np.array(SIZES)
    y = np.array([0.90, 0.915, 0.93, 0.94])
    fit = fit_loglog(x, y)
    ref = stats.linregress(np.log(x), np.log(100 * y))
    assert fit.slope == pytest.approx(ref.slope)
    assert fit.se_slope == pytest.approx(ref.stderr)
    assert fit.se_intercept == pytest.approx(ref.intercept_stderr)
    half = stats.t.ppf(0.975, 2) * ref.stderr
    assert (fit.ci_low, fit.ci_high) == pytest.approx((ref.slope - half, ref.slope + half))


def test_two_points_give_a_slope_but_no_interval():
    fit = fit_loglog([10, 100], [0.8, 0.9])
    assert fit.slope == pytest.approx(math.log(0.9 / 0.8) / math.log(10))
    assert math.isnan(fit.ci_low) and math.isnan(fit.se_slope)
    assert "n<3" in fit.note


def test_a_single_model_size_is_a_clear_error():
    with pytest.raises(ConfigError, match="two distinct x values"):
        fit_loglog([50, 50, 50], [0.8, 0.81, 0.82])
    rows = [r for r in rows_for({"pathmnist": 0.01}) if r.params_m == SIZES[0]]
    with pytest.raises(ConfigError, match=r"no model-scaling curve.*only one params_m value"):
        fit_scaling(rows, "model")


def test_non_positive_metric_is_refused():
    with pytest.raises(ConfigError, match="metric > 0"):
        fit_loglog([10, 100, 1000], [0.1, -0.05, 0.2])


def test_table_fits_per_benchmark_and_means():
    slopes = {"pathmnist": 0.01, "dermamnist": 0.03, "breastmnist": 0.02}
    fitset = fit_scaling(rows_for(slopes), "model")
    per = {f.benchmark: f for f in fitset.per_benchmark()}
    assert set(per) == set(slopes)
    for b, s in slopes.items():
        assert per[b].slope == pytest.approx(s, abs=1e-12)
        assert per[b].x == "params_m" and per[b].n == 4
    mean_of = next(f for f in fitset.fits if f.aggregate == "mean_of_slopes")
    assert mean_of.slope == pytest.approx(0.02)
    assert mean_of.ci_low < 0.02 < mean_of.ci_high
    curve = next(f for f in fitset.fits if f.aggregate == "mean_curve")
    # Same intercept everywhere: the mean curve's slope lies between the extremes.
    assert 0.01 < curve.slope < 0.03
    assert curve.benchmark == "MEAN" and curve.n_x == 4


def test_model_curves_hold_the_data_fixed():
    rows = rows_for({"pathmnist": 0.01}, data_fraction=1.0) + rows_for(
        {"pathmnist": 0.05}, data_fraction=0.1
    )
    fits = fit_scaling(rows, "model").per_benchmark()
    assert sorted((f.fixed, round(f.slope, 6)) for f in fits) == [
        ("data_fraction=0.1", 0.05),
        ("data_fraction=1", 0.01),
    ]


def test_data_scaling_on_images_or_fraction_gives_the_same_slope():
    total = 21_000_000
    rows, rows_frac = [], []
    for frac in (0.01, 0.1, 1.0):
        value = power(frac * total, 0.007, 4.4)
        common = dict(
            model=f"m{frac}",
            benchmark="pathmnist",
            protocol="linear",
            metric="auc",
            value=value,
            objective="dinov2",
            params_m=86.0,
        )
        rows.append(ResultRow(**common, images=int(frac * total)))
        rows_frac.append(ResultRow(**common, data_fraction=frac))
    a = fit_scaling(rows, "data").per_benchmark()[0]
    b = fit_scaling(rows_frac, "data").per_benchmark()[0]
    assert a.x == "images" and b.x == "data_fraction"
    assert a.slope == pytest.approx(0.007, abs=1e-6)
    assert b.slope == pytest.approx(a.slope, abs=1e-6)
    assert a.fixed == "params_m=86"


def test_negative_mcc_curves_are_skipped_with_a_reason():
    rows = rows_for({"pathmnist": 0.01})
    rows += [
        ResultRow("m", "pathmnist", "linear", "mcc", v, objective="dinov2", params_m=p)
        for p, v in zip(SIZES, (-0.1, 0.2, 0.3, 0.4), strict=True)
    ]
    fitset = fit_scaling(rows, "model", metrics=None)
    assert {f.metric for f in fitset.fits} == {"auc"}
    assert any("mcc" in s and "metric > 0" in s for s in fitset.skipped)


def test_benchmark_names_are_normalised():
    assert benchmark_key("medmnist:PathMNIST_224") == "pathmnist"
    assert benchmark_key("/data/dermamnist_64.npz") == "dermamnist"
    assert benchmark_key("octmnist") == "octmnist"


def test_study_mean_aucs_reproduce_its_reported_mean_slopes():
    reference = read_reference()
    for objective in ("dinov2", "mae"):
        means = sorted(
            (float(r["params_m"]), float(r["value"]) / 100)
            for r in reference
            if r["quantity"] == "mean_auc" and r["objective"] == objective
        )
        assert [p for p, _ in means] == list(SIZES)
        fit = fit_loglog(*zip(*means, strict=True))
        reported = next(
            float(r["value"])
            for r in reference
            if r["quantity"] == "mean_slope" and r["objective"] == objective
        )
        # The means are rounded to 0.1 AUC, so agreement is to the third decimal.
        assert fit.slope == pytest.approx(reported, abs=5e-4)
