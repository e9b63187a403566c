""" "Is scaling worth it for my task?": a new benchmark's model-scaling slope,
predicted from its properties by a model trained on the benchmarks that were
measured, with the leave-one-out error of that model as the honest uncertainty."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from biovfm_core.analysis.correlate import (
    REGRESSION_FEATURES,
    Prediction,
    loo_predict,
    predict_slope,
    slope_families,
)
from biovfm_core.analysis.fits import benchmark_key, fit_scaling
from biovfm_core.analysis.properties import TaskProperties
from biovfm_core.errors import ConfigError
from biovfm_core.results import ResultRow


def reference_metric(rows: Sequence[ResultRow], family: tuple, benchmark: str) -> tuple[float, str]:
    """The metric a 10× gain is measured from: the benchmark's own value at the
    largest model of the family if it was measured, else the mean over benchmarks."""
    from biovfm_core.analysis.fits import FIXED, fixed_text

    kind, objective, protocol, metric, fixed = family
    sel = [
        r
        for r in rows
        if r.params_m is not None
        and r.objective == objective
        and r.protocol == protocol
        and r.metric.lower() == metric
        and fixed_text(r, FIXED[kind]) == fixed
    ]
    largest = max(r.params_m for r in sel)
    at_largest = [r for r in sel if r.params_m == largest]
    own = [r.value for r in at_largest if benchmark_key(r.benchmark) == benchmark]
    if own:
        return float(np.mean(own)), f"{benchmark}'s measured {metric} at {largest:g}M params"
    return (
        float(np.mean([r.value for r in at_largest])),
        f"mean {metric} over benchmarks at {largest:g}M params",
    )


def predict_benchmark(
    rows: Sequence[ResultRow],
    properties: Sequence[TaskProperties],
    target: TaskProperties,
    *,
    objective: str | None = None,
    protocol: str | None = None,
    metric: str = "auc",
    reference: float | None = None,
    features: Sequence[str] = REGRESSION_FEATURES,
    permutations: int = 200,
    seed: int = 0,
) -> list[Prediction]:
    """One prediction per model-scaling family (objective × protocol × fixed data).

    The target benchmark is left out of training when the table measured it, so
    the prediction is the one the user would have got before measuring."""
    fits = fit_scaling(rows, "model", metrics=(metric,)).fits
    families = {
        f: s
        for f, s in slope_families(fits).items()
        if (objective is None or f[1] == objective) and (protocol is None or f[2] == protocol)
    }
    if not families:
        have = sorted({(f.objective, f.protocol) for f in fits})
        raise ConfigError(
            f"no model-scaling slopes for objective={objective or 'any'}, "
            f"protocol={protocol or 'any'}; the table has {have}"
        )
    others = [p for p in properties if p.benchmark != target.benchmark]
    out = []
    for family, slopes in sorted(families.items()):
        note = ""
        measured = slopes.get(target.benchmark)
        if measured is not None:
            slopes = {b: s for b, s in slopes.items() if b != target.benchmark}
            note = f"{target.benchmark} is in the table: left out of training"
        loo = loo_predict(
            slopes,
            others,
            features=features,
            permutations=permutations,
            seed=seed,
            family=family,
        )
        if reference is not None:
            ref, ref_note = reference, "given reference"
        else:
            ref, ref_note = reference_metric(rows, family, target.benchmark)
        prediction = predict_slope(
            target,
            loo,
            reference=ref,
            note="; ".join(filter(None, [note, f"gain from {ref_note}"])),
        )
        prediction.measured_slope = measured
        out.append(prediction)
    return out


def describe(prediction: Prediction) -> str:
    """A few plain lines answering "is scaling worth it?"."""
    p = prediction
    skill = 1.0 - p.loo_mae / p.baseline_mae if p.baseline_mae > 0 else float("nan")
    lines = [
        f"{p.benchmark} — {p.objective or '-'} / {p.protocol} / {p.metric}:",
        f"  predicted model-scaling slope {p.slope:.4f} ± {p.loo_mae:.4f} "
        f"(leave-one-out MAE over {p.n_train_benchmarks} benchmarks)",
        f"  a 10× larger model: {p.gain_10x:+.2f} {p.metric.upper()} points at "
        f"{100 * p.reference_auc:.2f} ({p.gain_10x_low:+.2f} to {p.gain_10x_high:+.2f} "
        "within ±1 LOO MAE of the slope)",
    ]
    if p.measured_slope is not None:
        lines.append(f"  measured slope {p.measured_slope:.4f}")
    if skill > 0:
        verdict = "the properties predict slopes better than the mean of the measured benchmarks"
    else:
        verdict = (
            "the properties predict no better than the mean of the measured benchmarks; "
            f"the mean slope {p.baseline_slope:.4f} ({p.baseline_gain_10x:+.2f} points for "
            "10×) is the safer answer"
        )
    lines.append(
        f"  {verdict} (LOO MAE {p.loo_mae:.4f} vs {p.baseline_mae:.4f} for the mean, "
        f"permutation p {p.permutation_p:.3f})"
    )
    if p.note:
        lines.append(f"  note: {p.note}")
    return "\n".join(lines)
