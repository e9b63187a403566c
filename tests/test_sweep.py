"""`biovfm sweep`: grid cells over one shared index, resumable, local or as a SLURM array."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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


def test_tiny_real_sweep_end_to_end_with_interruption_and_report(tmp_path):
    """Two objectives x two data fractions, each cell trained and evaluated; the sweep
    is killed inside a cell, re-run, and its results feed `biovfm analyze report`."""
    bench = write_medmnist(tmp_path / "breastmnist.npz")
    text = (
        SWEEP.format(output=tmp_path / "out")
        .replace("checkpoint_every: 2", "checkpoint_every: 1")
        .replace("max_steps: 2", "max_steps: 4")
        .replace("objective: [dinov2]", "objective: [dinov2, mae]")
        .replace(
            "objective: {global_size: 32, local_size: 16, local_crops: 2, prototypes: 64}",
            "objective: {}",
        )
    ) + (
        "eval:\n  args: [--benchmark, 'medmnist:" + str(bench) + "', --epochs, '2', "
        "--bootstrap, '50', --cache, none, --device, cpu, --image-size, '64']\n"
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    cells = [c.id for c in S.load_sweep(path).cells()]
    assert len(cells) == 4

    # Kill the sweep once the second cell has written a checkpoint.
    # In its own session, so the kill takes its training child too (as a job
    # scheduler's would): an orphaned child would still own its run folder.
    victim = subprocess.Popen(
        [sys.executable, "-m", "biovfm_core.cli.main", "sweep", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    second = out / "cells" / cells[1] / "checkpoints"
    deadline = time.time() + 300
    while victim.poll() is None and time.time() < deadline and not any(second.glob("step_*")):
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert (out / "cells" / cells[0] / "DONE.json").is_file()
    assert not (out / "cells" / cells[1] / "DONE.json").is_file()

    result = biovfm("sweep", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("done, skipped") == 1
    assert "resumed from" in result.stderr  # the interrupted cell continued
    done = [json.loads((out / "cells" / c / "DONE.json").read_text()) for c in cells]
    assert sorted((d["objective"], d["images"]) for d in done) == [
        ("dinov2", 60), ("dinov2", 120), ("mae", 60), ("mae", 120)
    ]  # fmt: skip
    assert all(d["steps"] == 4 for d in done)
    assert "4 cells, 4 done" in biovfm("sweep", str(path), "--dry-run").stdout

    from biovfm_core.results import read_results

    rows = read_results(out / "results.csv")
    assert {r.model for r in rows} == set(cells)
    assert {r.metric for r in rows} >= {"auc", "mcc", "balanced_acc"}
    assert all(r.params_m and r.params_m > 5 and r.images in (60, 120) for r in rows)

    report = biovfm(
        "analyze", "report", "--results", str(out / "results.csv"),
        "--medmnist-root", str(tmp_path), "--output", str(tmp_path / "report"),
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert "## Data scaling" in (tmp_path / "report" / "report.md").read_text()
    fits = (tmp_path / "report" / "fits.csv").read_text().splitlines()
    # One data-scaling slope per objective over the two fractions (60 and 120 images).
    data_fits = [line for line in fits[1:] if line.startswith("data,benchmark,")]
    assert sorted(line.split(",")[2] for line in data_fits) == ["dinov2", "mae"]
    assert all(",60 120," in line for line in data_fits)
    pngs = list((tmp_path / "report" / "figures").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.parametrize("name", ["study.yaml", "demo.yaml"])
def test_shipped_example_sweeps_are_valid(name):
    sweep = S.load_sweep(Path(__file__).resolve().parents[1] / "examples" / "sweeps" / name)
    cells = sweep.cells()
    assert len(cells) == {"study.yaml": 24, "demo.yaml": 8}[name]
