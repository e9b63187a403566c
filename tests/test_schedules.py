"""Schedules give the values of their formulas at given steps."""

from __future__ import annotations

import math

import pytest

from biovfm_core.schedules import cosine_schedule, linear_warmup


def test_cosine_endpoints_and_midpoint() -> None:
    assert cosine_schedule(0, 100, 0.992, 1.0) == pytest.approx(0.992)
    assert cosine_schedule(50, 100, 0.992, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(100, 100, 0.992, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(1000, 100, 0.992, 1.0) == pytest.approx(1.0)


def test_cosine_matches_formula_at_quarter() -> None:
    expected = 0.0 + 0.5 * (1.0 - 0.0) * (1 + math.cos(math.pi * 0.25))
    assert cosine_schedule(25, 100, 1.0, 0.0) == pytest.approx(expected)


def test_cosine_with_warmup() -> None:
    # 10 warm-up steps from 0 to 1e-3, then cosine to 1e-6 over the remaining 90.
    assert cosine_schedule(0, 100, 1e-3, 1e-6, warmup_steps=10) == pytest.approx(0.0)
    # DINOv2's np.linspace(0, 1e-3, 10): 1e-3 / 9 per step, the peak at step 9.
    assert cosine_schedule(5, 100, 1e-3, 1e-6, warmup_steps=10) == pytest.approx(5e-3 / 9)
    assert cosine_schedule(9, 100, 1e-3, 1e-6, warmup_steps=10) == pytest.approx(1e-3)
    assert cosine_schedule(10, 100, 1e-3, 1e-6, warmup_steps=10) == pytest.approx(1e-3)
    # MAE's lr_sched: lr * step / warmup, the peak at step 10.
    linear = cosine_schedule(5, 100, 1e-3, 1e-6, warmup_steps=10, warmup="linear")
    assert linear == pytest.approx(5e-4)
    mid = 1e-6 + 0.5 * (1e-3 - 1e-6)
    assert cosine_schedule(55, 100, 1e-3, 1e-6, warmup_steps=10) == pytest.approx(mid)
    assert cosine_schedule(3, 100, 1.0, 0.0, warmup_steps=10, warmup_start=0.5) == pytest.approx(
        0.5 + 0.5 * 3 / 9
    )


def test_linear_warmup() -> None:
    assert linear_warmup(0, 30, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(30, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert linear_warmup(99, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert linear_warmup(0, 0, 0.04, 0.07) == pytest.approx(0.07)


def test_negative_step_rejected() -> None:
    with pytest.raises(ValueError):
        cosine_schedule(-1, 10, 1.0, 0.0)
    with pytest.raises(ValueError):
        linear_warmup(-1, 10, 1.0, 0.0)
