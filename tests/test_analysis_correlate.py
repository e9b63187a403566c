"""Correlations equal scipy's; leave-one-out prediction is exact on a linear relation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from biovfm_core.analysis.correlate import (
    correlate,
    gain_10x,
    loo_predict,
    pearson,
    predict_slope,
    spearman,
)
from biovfm_core.analysis.fits import fit_scaling
from biovfm_core.analysis.predict import describe, predict_benchmark
from biovfm_core.analysis.properties import TaskProperties
from biovfm_core.errors import ConfigError
from biovfm_core.results import ResultRow

SIZES = (31.2, 47.4, 111.66, 329.24)


def synthetic_properties(n: int = 9, seed: int = 0) -> list[TaskProperties]:
    rng = np.random.default_rng(seed)
    return [
        TaskProperties(
            benchmark=f"task{i}mnist",
            n_classes=int(rng.integers(2, 12)),
            n_train=int(rng.integers(500, 100_000)),
            compressibility=float(rng.uniform(1.1, 3.0)),
            dbi=float(rng.uniform(2.0, 15.0)),
        )
        for i in range(n)
    ]


def linear_slopes(props: list[TaskProperties]) -> dict[str, float]:
    """Slopes that are exactly linear in the regression's four features."""
    return {
        p.benchmark: 0.01
        + 0.001 * p.n_classes
        + 0.003 * math.log10(p.n_train)
        - 0.004 * p.compressibility
        + 0.0005 * p.dbi
        for p in props
    }


def results_from(slopes: dict[str, float], objective: str = "dinov2") -> list[ResultRow]:
    return [
        ResultRow(
            f"{objective}-{p}",
            b,
            "linear",
            "auc",
            math.exp(4.45 + s * math.log(p)) / 100,
            objective=objective,
            params_m=p,
        )
        for b, s in slopes.items()
        for p in SIZES
    ]


def test_pearson_and_spearman_equal_scipy():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=12), rng.normal(size=12)
    y += 0.5 * x
    assert pearson(x, y) == pytest.approx(tuple(stats.pearsonr(x, y)))
    assert spearman(x, y) == pytest.approx(tuple(stats.spearmanr(x, y)))
    assert all(math.isnan(v) for v in pearson([1, 2], [3, 4]))
    assert all(math.isnan(v) for v in spearman([1, 1, 1], [3, 4, 5]))


def test_correlate_uses_the_fitted_slopes_and_reports_n():
    props = synthetic_properties()
    slopes = linear_slopes(props)
    fits = fit_scaling(results_from(slopes), "model").fits
    rows, notes = correlate(fits, props[:-1])  # one benchmark lacks properties
    assert notes and "task8mnist" in notes[0]
    by_prop = {r.property: r for r in rows}
    assert set(by_prop) == {"n_classes", "n_train", "compressibility", "dbi"}
    x = [p.dbi for p in props[:-1]]
    y = [slopes[p.benchmark] for p in props[:-1]]
    r, p_value = stats.pearsonr(x, y)
    assert by_prop["dbi"].n == 8
    assert by_prop["dbi"].pearson_r == pytest.approx(r, abs=1e-8)
    assert by_prop["dbi"].pearson_p == pytest.approx(p_value, rel=1e-6)
    assert by_prop["dbi"].spearman_rho == pytest.approx(stats.spearmanr(x, y)[0])


def test_loo_is_exact_on_a_perfectly_linear_relation():
    props = synthetic_properties(9)
    slopes = linear_slopes(props)
    loo = loo_predict(slopes, props, permutations=50, seed=1)
    np.testing.assert_allclose(loo.predicted, loo.actual, atol=1e-10)
    assert loo.mae < 1e-10 < loo.baseline_mae
    assert loo.skill == pytest.approx(1.0)
    assert loo.permutation_p < 0.05
    again = loo_predict(slopes, props, permutations=50, seed=1)
    assert again.permutation_p == loo.permutation_p


def test_loo_needs_enough_benchmarks():
    props = synthetic_properties(6)
    with pytest.raises(ConfigError, match="at least 7 benchmarks"):
        loo_predict(linear_slopes(props), props)


def test_ten_times_larger_model_gain():
    # Worked by hand: a slope of log10(2) doubles 100·m per decade of x, so 40 → 80
    # points (+40); from 60 it would reach 120 but stops at 100 (+40).
    assert gain_10x(0.30103, 0.4) == pytest.approx(40.0, abs=1e-3)
    assert gain_10x(0.30103, 0.6) == pytest.approx(40.0)
    # Slope 0.01 at 90: 10^0.01 = 1.0232930 (log tables), so 90 × 0.0232930 = 2.09637.
    assert gain_10x(0.01, 0.9) == pytest.approx(2.09637, abs=1e-5)
    assert gain_10x(0.2, 0.95) == pytest.approx(5.0)  # 95 × 1.585 capped at 100
    assert gain_10x(0.0, 0.9) == 0.0


def test_predict_a_new_task_from_its_properties():
    props = synthetic_properties(10)
    slopes = linear_slopes(props)
    target = props[-1]
    loo = loo_predict(
        {b: s for b, s in slopes.items() if b != target.benchmark}, props[:-1], permutations=0
    )
    prediction = predict_slope(target, loo, reference=0.9)
    assert prediction.slope == pytest.approx(slopes[target.benchmark], abs=1e-10)
    assert prediction.gain_10x == pytest.approx(gain_10x(prediction.slope, 0.9))
    assert prediction.baseline_slope == pytest.approx(np.mean(loo.actual))


def test_predict_benchmark_leaves_the_measured_target_out():
    props = synthetic_properties(10)
    slopes = linear_slopes(props)
    target = props[3]
    (prediction,) = predict_benchmark(results_from(slopes), props, target, permutations=0)
    assert prediction.n_train_benchmarks == 9
    assert prediction.measured_slope == pytest.approx(slopes[target.benchmark])
    assert prediction.slope == pytest.approx(slopes[target.benchmark], abs=1e-8)
    # Reference metric: the target's own AUC at the largest model.
    expected = math.exp(4.45 + slopes[target.benchmark] * math.log(SIZES[-1])) / 100
    assert prediction.reference_auc == pytest.approx(expected)
    text = describe(prediction)
    assert "10× larger model" in text and "left out of training" in text
    with pytest.raises(ConfigError, match="no model-scaling slopes for objective=mae"):
        predict_benchmark(results_from(slopes), props, target, objective="mae")


def test_round_off_slopes_have_no_correlation():
    # Saturated benchmarks (AUC 1.0 at every size) give slopes of float noise.
    slopes = [0.0, 1e-17, -2e-17, 3e-17]
    prop = [1.0, 2.0, 3.0, 4.0]
    for fn in (pearson, spearman):
        r, p = fn(prop, slopes)
        assert np.isnan(r) and np.isnan(p)
    r, _ = pearson(prop, [0.01, 0.02, 0.015, 0.03])  # real, small slopes still count
    assert np.isfinite(r)
