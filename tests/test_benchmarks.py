"""Benchmark scripts run on a tiny setting; their speed is never asserted here."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import pytest

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


def test_loader_benchmark_runs_and_reports_positive_rates(capsys):
    bench = _load("bench_loader")
    results = bench.main(
        [
            "--images", "6", "--batch-size", "2", "--workers", "1",
            "--global-size", "32", "--local-size", "16", "--local-crops", "2",
            "--steps", "1", "--warmup", "0",
        ]
    )  # fmt: skip
    rows = [(r.recipe, r.stage, r.setting) for r in results]
    assert rows == [
        ("default", "loader", "0 workers"),
        ("default", "loader", "1 workers"),
        ("default", "batch_transform", "cpu"),
        ("ct", "loader", "0 workers"),
        ("ct", "loader", "1 workers"),
        ("ct", "batch_transform", "cpu"),
    ]
    # The first batch is not timed (worker start-up): 2 of the 3 batches are.
    assert [r.images for r in results if r.stage == "loader"] == [4, 4, 4, 4]
    assert all(r.images_s > 0 for r in results)
    assert "| ct | loader | 1 workers | 2 | 4 |" in capsys.readouterr().out


@pytest.mark.parametrize("reference", ["matched", "plain"])
def test_reference_comparison_runs_both_sides(reference):
    bench = _load("bench_vs_reference")
    rows = bench.main(
        ["--rounds", "1", "--steps", "1", "--warmup", "1", "--batch-size", "2", "--size", "48",
         "--local-size", "16", "--local-crops", "1", "--prototypes", "64", "--hidden", "32",
         "--reference", reference]
    )  # fmt: skip
    assert [r["objective"] for r in rows] == ["dinov2", "mae"]
    assert all(r["ours"] > 0 and r["ref"] > 0 and r["ratio"] > 0 for r in rows)


def test_eval_extraction_benchmark_runs_on_the_twelve_shapes(capsys):
    bench = _load("bench_eval")
    results = bench.main(
        ["--backbone", "vit_tiny", "--input-size", "32", "--images", "3", "--batch-size", "2"]
    )
    assert len(results) == 12
    assert [r.channels for r in results][:3] == [3, 1, 3]  # pathmnist RGB, chestmnist gray
    assert all(r.images == 3 and r.images_s > 0 for r in results)
    # Projected wall time scales each rate to the benchmark's real size (MedMNIST v2).
    assert results[0].full_seconds == 107_180 / results[0].images_s
    out = capsys.readouterr().out
    assert "| organsmnist | 1 | 3 |" in out and "| all | | 36 |" in out and "707,962" in out


def test_step_profile_splits_the_step_into_phases(capsys):
    bench = _load("profile_step")
    rows = bench.main(["--batch-size", "2", "--steps", "1", "--warmup", "1", "--top", "3"])
    assert [r.name for r in rows] == list(bench.PHASES)
    by_name = {r.name: r for r in rows}
    # kornia's colour augmentation and the ViT forward are each hundreds of ops;
    # backward is one autograd call from Python.
    assert by_name["augment"].ops > 100 and by_name["forward"].ops > 100
    assert by_name["backward"].ops == 1
    assert all(r.host_ms > 0 and r.device_ms is None for r in rows)
    out = capsys.readouterr().out
    assert "| **step** |" in out
    # The op table has exactly --top rows; which ops fill them depends on the machine's
    # load (the optimizer step enters it on a busy host), so only the shape is checked.
    lines = out.splitlines()
    start = lines.index("| op | calls/step | self host ms/step |")
    assert lines[start + 1] == "|---|---:|---:|"
    op_rows = list(itertools.takewhile(lambda line: line.startswith("| "), lines[start + 2 :]))
    assert len(op_rows) == 3
    for row in op_rows:
        name, calls, ms = (cell.strip() for cell in row.strip("|").split("|"))
        assert name and int(calls) >= 1 and float(ms) >= 0
