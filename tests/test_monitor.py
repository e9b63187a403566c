"""The in-training monitor: its columns, its scores, and that it leaves the run alone."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from tiny_runs import tiny_dinov2

from biovfm_core.cli.main import cli
from biovfm_core.config import RunConfig
from biovfm_core.errors import ConfigError
from biovfm_core.eval.data import Benchmark
from biovfm_core.eval.monitor import TrainingMonitor, build_monitor, parse_spec
from biovfm_core.models import checkpoint as ckpt
from biovfm_core.registry import get_registry
from biovfm_core.train import metrics as metrics_module
from biovfm_core.train.loop import train
from biovfm_core.train.monitoring import monitor_columns
from biovfm_core.train.sentinels import COLUMNS as SENTINEL_COLUMNS


def rows_of(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_a_monitored_demo_run_logs_monitor_and_sentinel_columns_and_no_alarm(tmp_path):
    # The README's demo run (`biovfm train`, its CPU preset), shortened to 2 steps.
    code, log = invoke(
        "train", "--max-steps", "2", "--output", str(tmp_path), "--name", "demo",
        "--set", "train.log_every=1", "--set", "train.monitor=demo:24",
        "--set", "train.monitor_every=2",
    )  # fmt: skip
    assert code == 0, log
    assert "warning" not in log, log
    assert "monitor: kNN on demo_modality (24/24/24 train/val/test images" in log
    assert "kNN AUC" in log.splitlines()[-2]  # the progress line of the last step
    rows = rows_of(tmp_path / "demo")
    assert set(SENTINEL_COLUMNS) | set(monitor_columns(False)) <= set(rows[0])
    for row in rows:  # log_every=1: every step has its sentinels
        assert float(row["sentinel/rankme"]) >= 1.0
        assert 0.0 <= float(row["sentinel/teacher_entropy"]) <= 1.0
    assert [bool(r["monitor/knn_auc"]) for r in rows] == [False, True]
    for row in rows[1:]:
        auc, low, high = (float(row[f"monitor/knn_auc{b}"]) for b in ("", "_low", "_high"))
        assert 0.0 <= low <= auc <= high <= 1.0
        assert 0.0 <= float(row["monitor/knn_acc"]) <= 1.0


def _tiny(tmp_path: Path, name: str, **sets) -> RunConfig:
    return tiny_dinov2(
        tmp_path,
        name,
        **{
            "train.max_steps": 3,
            "train.checkpoint_every": 2,
            "options.backbone.drop_path_rate": 0.1,  # the student draws random numbers
            **sets,
        },
    )


class _Killed(Exception):
    pass


def test_a_monitored_run_killed_and_resumed_equals_an_unmonitored_uninterrupted_one(
    tmp_path, monkeypatch
):
    plain = train(_tiny(tmp_path, "plain"), get_registry(), progress=False)

    # Monitored at steps 2 and 3 (with the linear probe, which seeds torch), killed
    # after its step-2 checkpoint, resumed: the weights of the run without a monitor.
    monitored = _tiny(
        tmp_path,
        "monitored",
        **{
            "train.monitor": "demo:16",
            "train.monitor_every": 2,
            "train.monitor_linear": True,
        },
    )
    real_log = metrics_module.MetricsLog.log

    def dies_at_step_3(self, row):
        if row["step"] == 3:
            raise _Killed
        real_log(self, row)

    monkeypatch.setattr(metrics_module.MetricsLog, "log", dies_at_step_3)
    with pytest.raises(_Killed):
        train(monitored, get_registry(), progress=False, monitor_factory=build_monitor)
    monkeypatch.setattr(metrics_module.MetricsLog, "log", real_log)
    resumed = RunConfig.from_yaml(tmp_path / "monitored" / "config.yaml")
    resumed.resume = str(tmp_path / "monitored")
    train(resumed, get_registry(), progress=False, monitor_factory=build_monitor)

    a = load_file(str(ckpt.latest_checkpoint(plain.run_dir) / "model.safetensors"))
    b = load_file(str(ckpt.latest_checkpoint(tmp_path / "monitored") / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    plain_rows, rows = rows_of(plain.run_dir), rows_of(tmp_path / "monitored")
    assert [r["loss"] for r in rows] == [r["loss"] for r in plain_rows]
    assert [bool(r["monitor/linear_auc"]) for r in rows] == [False, True, True]


def _bench(rng: np.random.Generator) -> Benchmark:
    splits = {
        s: (rng.integers(0, 255, (12, 16, 16), dtype=np.uint8), np.arange(12) % 2)
        for s in ("train", "val", "test")
    }
    return Benchmark("toy", "toy.npz", "binary", 2, 16, splits, "toy")


def test_measure_puts_every_mode_back_and_leaves_the_random_streams_alone():
    backbone = get_registry().build("backbones", "vit_tiny", options={"image_size": 16})
    backbone.train()
    next(iter(backbone.children())).eval()  # a mixed state must come back as it was
    modes = [m.training for m in backbone.modules()]
    monitor = TrainingMonitor(
        _bench(np.random.default_rng(0)),
        image_size=16,
        device=torch.device("cpu"),
        linear=True,
        resamples=20,
    )
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    row = monitor.measure(backbone)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert [m.training for m in backbone.modules()] == modes
    assert set(row) == set(monitor_columns(True))
    assert 0.0 <= row["monitor/knn_auc"] <= 1.0 and 0.0 <= row["monitor/linear_acc"] <= 1.0


def test_monitor_specs_are_parsed_or_refused_in_one_line(tmp_path, monkeypatch):
    assert parse_spec("demo") == ("demo_benchmark", "modality", 1000)
    assert parse_spec("demo:plane:50") == ("demo_benchmark", "plane", 50)
    assert parse_spec("medmnist:/data/pathmnist_64.npz:300") == (
        "medmnist",
        "/data/pathmnist_64.npz",
        300,
    )
    (tmp_path / "pathmnist_64.npz").touch()
    monkeypatch.setenv("BIOVFM_MEDMNIST_ROOT", str(tmp_path))
    assert parse_spec("medmnist:pathmnist:10")[1] == str(tmp_path / "pathmnist_64.npz")
    monkeypatch.delenv("BIOVFM_MEDMNIST_ROOT")
    with pytest.raises(ConfigError, match="BIOVFM_MEDMNIST_ROOT"):
        parse_spec("medmnist:pathmnist")
    with pytest.raises(ConfigError, match=r"train\.monitor='nonsense'"):
        parse_spec("nonsense")
    config = RunConfig()
    # A folder without the train/val/test layout says which folder is missing.
    config.train.monitor = f"folder:{tmp_path}"
    with pytest.raises(ConfigError, match=r"train is missing; a labelled folder needs"):
        build_monitor(config, get_registry(), torch.device("cpu"), 32)
    config.train.monitor = "demo"
    with pytest.raises(ConfigError, match="monitor_factory"):
        train(config, get_registry(), progress=False)
