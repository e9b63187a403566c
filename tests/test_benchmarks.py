"""Benchmark scripts run on a tiny setting; their speed is never asserted here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_train_step_benchmark_runs_and_counts_flops(capsys):
    bench = _load("bench_train_step")
    results = bench.main(["--steps", "1", "--warmup", "1", "--batch-size", "2"])
    assert [(r.objective, r.backbone) for r in results] == [
        ("dinov2", "vit_tiny"),
        ("mae", "vit_tiny"),
    ]
    for r in results:
        assert r.images_s > 0 and r.gflop_step > 0 and r.mfu is None
    # DINOv2 runs 2 global + 4 local crops through student and teacher; MAE one crop
    # with 75% of patches dropped: DINOv2 must cost more per image.
    assert results[0].gflop_step > results[1].gflop_step
    out = capsys.readouterr().out
    assert "| dinov2 | vit_tiny |" in out and "| mae | vit_tiny |" in out
