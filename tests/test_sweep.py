"""`biovfm sweep`: grid cells over one shared index, resumable, local or as a SLURM array."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from biovfm_core import sweep as S
from biovfm_core.errors import ConfigError

SWEEP = """
name: tiny
output: {output}
base:
  train: {{max_steps: 2, batch_size: 8, checkpoint_every: 2, device: cpu}}
  data: {{num_workers: 0}}
  options:
    objective: {{global_size: 32, local_size: 16, local_crops: 2, prototypes: 64}}
grid:
  objective: [dinov2]
  data.fraction: [0.5, 1.0]
  backbone: [vit_tiny]
"""


def write_sweep(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(output=tmp_path / "out") if text is None else text)
    return path


def biovfm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "biovfm_core.cli.main", *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_cells_are_the_product_of_the_grid(tmp_path):
    sweep = S.load_sweep(write_sweep(tmp_path))
    cells = sweep.cells()
    assert [c.id for c in cells] == [
        "objective=dinov2,fraction=0.5,backbone=vit_tiny",
        "objective=dinov2,fraction=1.0,backbone=vit_tiny",
    ]
    for cell in cells:
        assert cell.config.data.index == str(tmp_path / "out" / "index.npz")
        assert cell.config.resume == "auto" and cell.config.train.max_steps == 2
    assert cells[0].config.data.fraction == 0.5


def test_bad_sweep_files_fail_at_once(tmp_path):
    with pytest.raises(ConfigError, match=r"grid\.backbone must be a non-empty list"):
        S.load_sweep(write_sweep(tmp_path, "grid:\n  backbone: vit_tiny\n"))
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.max_step'"):
        S.load_sweep(write_sweep(tmp_path, "base: {train: {max_step: 3}}\ngrid: {backbone: [a]}\n"))
    with pytest.raises(ConfigError, match="unknown key"):
        S.load_sweep(write_sweep(tmp_path, "grdi: {}\n"))


def test_local_sweep_runs_skips_and_resumes(tmp_path):
    path = write_sweep(tmp_path)
    result = biovfm("sweep", str(path))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert len(cells) == 2
    done = [json.loads((out / "cells" / c / "DONE.json").read_text()) for c in cells]
    assert [d["images"] for d in done] == [60, 120]  # the fraction subsets the shared index
    assert all(d["steps"] == 2 and d["objective"] == "dinov2" for d in done)

    again = biovfm("sweep", str(path))
    assert again.returncode == 0
    assert again.stderr.count("done, skipped") == 2

    # A cell without DONE.json (interrupted after training) resumes, not restarts.
    (out / "cells" / cells[0] / "DONE.json").unlink()
    resumed = biovfm("sweep", str(path))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and resumed.stderr.count("done, skipped") == 1

    listing = biovfm("sweep", str(path), "--dry-run")
    assert "2 cells, 2 done" in listing.stdout


def test_slurm_array_lists_pending_cells_and_is_valid_bash(tmp_path):
    path = write_sweep(tmp_path)
    result = biovfm("sweep", str(path), "--scheduler", "slurm")
    assert result.returncode == 0, result.stderr
    script = (tmp_path / "out" / "slurm" / "array.sbatch").read_text()
    assert "#SBATCH --array=0-1%2" in script
    assert "torchrun --standalone --nproc_per_node 1 -m biovfm_core.cli.main train" in script
    assert "--finish-cell" in script
    assert (
        subprocess.run(["bash", "-n", str(tmp_path / "out" / "slurm" / "array.sbatch")]).returncode
        == 0
    )
    assert len(list((tmp_path / "out" / "configs").glob("*.yaml"))) == 2


def write_medmnist(path: Path) -> Path:
    """A small binary benchmark in the MedMNIST layout: bright vs dark squares."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 12), ("test", 12)):
        labels = np.arange(n) % 2
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        images[labels == 1, 8:20, 8:20] += 150
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)
    np.savez(path, **arrays)
    return path


def test_sweep_with_eval_collects_one_results_table(tmp_path):
    bench = write_medmnist(tmp_path / "breastmnist.npz")
    text = SWEEP.format(output=tmp_path / "out").replace(
        "data.fraction: [0.5, 1.0]", "data.fraction: [1.0]"
    ) + (
        "eval:\n  args: [--benchmark, 'medmnist:" + str(bench) + "', --epochs, '2', "
        "--bootstrap, '50', --cache, none, --device, cpu]\n"
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    result = biovfm("sweep", str(path))
    assert result.returncode == 0, result.stderr
    from biovfm_core.results import read_results

    rows = read_results(tmp_path / "out" / "results.csv")
    assert {r.metric for r in rows} >= {"auc", "mcc", "balanced_acc"}
    assert all(r.objective == "dinov2" and r.backbone == "vit_tiny" for r in rows)
    assert all(r.images == 120 and r.params_m and r.params_m > 5 for r in rows)
    assert all(r.model == "objective=dinov2,fraction=1.0,backbone=vit_tiny" for r in rows)


@pytest.mark.parametrize("name", ["study.yaml", "demo.yaml"])
def test_shipped_example_sweeps_are_valid(name):
    sweep = S.load_sweep(Path(__file__).resolve().parents[1] / "examples" / "sweeps" / name)
    cells = sweep.cells()
    assert len(cells) == {"study.yaml": 24, "demo.yaml": 8}[name]
