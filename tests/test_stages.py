"""A second training stage (`--init RUN --recipe dinov2-highres`): it carries the whole
objective of the first, anchors to its teacher, and resumes bit-identically inside."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from biovfm_core.cli.main import cli
from biovfm_core.models import checkpoint as ckpt

COMMON = [
    "--batch-size", "4",
    "--set", "data.num_workers=0",
    "--set", "data.fraction=0.2",
    "--set", "train.checkpoint_every=1",
    "--set", "train.log_every=1",
    "--device", "cpu",
]  # fmt: skip
FIRST = [
    "--backbone", "vit_tiny",
    "--opt", "objective.prototypes=64",
    "--opt", "objective.head_hidden_dim=32",
    "--opt", "objective.head_bottleneck_dim=16",
    "--opt", "objective.local_crops=2",
    "--opt", "objective.global_size=32",
    "--opt", "objective.local_size=16",
]  # fmt: skip
# The stage's crops: larger than the first stage's, the Gram teacher's larger still
# (the recipe's 512 / 768 scaled down for a CPU).
SECOND = [
    "--recipe", "dinov2-highres",
    "--opt", "objective.global_size=48",
    "--opt", "objective.local_size=16",
    "--opt", "objective.local_crops=2",
    "--opt", "objective.gram_crop_size=64",
]  # fmt: skip


def biovfm(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def weights(run: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    folder = (
        ckpt.latest_checkpoint(run) if step is None else run / "checkpoints" / f"step_{step:08d}"
    )
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow  # three short runs: about a minute of CPU
def test_highres_stage_carries_the_objective_and_resumes_bit_identically(tmp_path) -> None:
    out = str(tmp_path)
    biovfm("train", *COMMON, *FIRST, "--max-steps", "1", "--output", out, "--name", "s1")
    first = weights(tmp_path / "s1")

    log = biovfm(
        "train", *COMMON, *SECOND, "--init", str(tmp_path / "s1"), "--max-steps", "3",
        "--output", out, "--name", "s2",
    )  # fmt: skip
    assert "starting from the whole dinov2 objective of" in log
    assert "backbone=vit_tiny" in log and "options.objective.prototypes=64" in log  # inherited
    second = weights(tmp_path / "s2", step=1)
    # The Gram teacher is the first stage's EMA teacher, frozen (no refresh in the recipe).
    final = weights(tmp_path / "s2")
    for key, value in first.items():
        if key.startswith("teacher.backbone."):
            gram_key = "gram_teacher.backbone." + key.removeprefix("teacher.backbone.")
            assert torch.equal(final[gram_key], value), gram_key
    # The heads came along: the stage's first step moved them from the first stage's
    # values (not from a fresh initialisation), by a small step at the stage's low lr.
    head = "student.dino_head.layers.0.weight"
    assert not torch.equal(second[head], first[head])
    assert (second[head] - first[head]).abs().max() < 1e-3

    # Resume inside the stage: from its step-1 checkpoint to step 3 again.
    shutil.copytree(tmp_path / "s2", tmp_path / "cut")
    log = biovfm("train", "--resume", str(tmp_path / "cut" / "checkpoints" / "step_00000001"))
    assert "resumed from" in log
    resumed = weights(tmp_path / "cut")
    assert resumed.keys() == final.keys()
    for key in final:
        assert torch.equal(resumed[key], final[key]), key


def test_init_mode_objective_needs_a_run_folder(tmp_path) -> None:
    weights_file = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, weights_file)
    result = CliRunner().invoke(
        cli,
        ["train", *COMMON, "--init", str(weights_file), "--set", "init_mode=objective",
         "--dry-run"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "init_mode=objective needs a biovfm run folder" in result.output
