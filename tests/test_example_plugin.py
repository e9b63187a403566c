"""The example third-party plugin, installed as its own distribution into an isolated dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "biovfm-example-plugin"


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    """pip-install the example into its own target dir, as a user's pip would."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
        cwd=build,  # keep pip's build folders out of the source tree
        timeout=900,
    )
    assert list(target.glob("biovfm_example_plugin-*.dist-info"))
    return target


def _biovfm(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=str(site), **env)
    return subprocess.run(
        [sys.executable, "-m", "biovfm_core.cli.main", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=900,  # a hang guard only: generous, so a busy machine never trips it
    )


def test_plugins_lists_the_installed_example(example_site):
    result = _biovfm(example_site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["plugin"]: row for row in json.loads(result.stdout)}
    example = rows["example"]
    assert example["distribution"] == "biovfm-example-plugin"
    assert example["version"] == "0.1.0"
    assert example["builtin"] is False
    assert example["registered"]["objectives"] == ["barlow_twins"]


def test_train_selects_the_example_objective(example_site):
    result = _biovfm(
        example_site,
        "train",
        "--objective",
        "barlow_twins",
        "--backbone",
        "vit_tiny",
        "--opt",
        "objective.projection_dim=64",
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    assert "# objective: barlow_twins (plugin example)" in result.stdout
    assert "projection_dim: 64" in result.stdout


def test_autoload_switch_hides_the_example(example_site):
    result = _biovfm(
        example_site,
        "train",
        "--objective",
        "barlow_twins",
        "--dry-run",
        BIOVFM_DISABLE_PLUGIN_AUTOLOAD="1",
    )
    assert result.returncode == 2
    assert "unknown objective 'barlow_twins'" in result.stderr


def test_example_objective_trains_on_a_real_backbone(example_site, monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(example_site))
    from biovfm_core.protocols import Batch, StepInfo, TaskInfo
    from biovfm_core.registry import get_registry

    torch.manual_seed(0)
    registry = get_registry()
    backbone = registry.build("backbones", "vit_tiny", options={"image_size": 32})
    objective = registry.build(
        "objectives",
        "barlow_twins",
        backbone,
        TaskInfo(),
        options={"projection_dim": 64, "global_size": 32},
    )
    assert objective.views.global_crops == 2 and objective.views.global_size == 32
    images = torch.rand(8, 3, 32, 32)
    batch = Batch(global_views=[images, images.flip(-1)])
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3)
    losses = []
    for step in range(5):
        loss = objective.training_step(batch, StepInfo(step, 5, 5))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert objective.eval_backbone() is backbone


def test_example_passes_the_conformance_kit(example_site, monkeypatch):
    monkeypatch.syspath_prepend(str(example_site))
    from biovfm_core.testing import check_objective

    check_objective("barlow_twins")
