"""Experiment loggers: the built-in csv and tensorboard, the MLflow and W&B plugins
(offline: MLflow's file store, W&B's offline mode), the conformance check, the
config and CLI, and a failing logger that must not end the run."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner
from test_train_engine import TINY

from biovfm_core import hookimpl
from biovfm_core.config import RunConfig
from biovfm_core.errors import ConfigError
from biovfm_core.registry import get_registry
from biovfm_core.testing import ConformanceError, check_logger

TINY_RUN = [*TINY, "--max-steps", "3"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    # No network, nothing under ~: W&B offline, its settings, cache and artifact
    # staging under the test's tmp.
    home = tmp_path_factory.mktemp("wandb-home")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def read_csv(run_dir: Path) -> dict[int, dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {int(r["step"]): {k: _number(v) for k, v in r.items() if k != "step"} for r in rows}


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def read_tensorboard(run_dir: Path) -> dict[int, dict[str, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    steps: dict[int, dict[str, float]] = {}
    for tag in events.Tags()["scalars"]:
        for event in events.Scalars(tag):
            steps.setdefault(event.step, {})[tag.removeprefix("train/")] = event.value
    return steps


def mlflow_reader(uri: str):
    def read(run_dir: Path) -> dict[int, dict[str, float]]:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run_id = (run_dir / "mlflow_run_id").read_text().strip()
        steps: dict[int, dict[str, float]] = {}
        for key in client.get_run(run_id).data.metrics:
            for metric in client.get_metric_history(run_id, key):
                steps.setdefault(metric.step, {})[key] = metric.value
        return steps

    return read


def read_wandb(run_dir: Path) -> dict[int, dict[str, float]]:
    from biovfm_wandb.offline import history

    return history(run_dir)


# ------------------------------------------------------------ conformance, per logger


def test_csv_logger_conforms(tmp_path):
    # metrics.csv keeps 6 significant digits.
    run = check_logger("csv", tmp_path, read_back=read_csv, rel_tol=1e-5)
    # The resumed half dropped step 3 and wrote it again: one row per step.
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()] == [
        "step",
        "1",
        "2",
        "3",
    ]


def test_tensorboard_logger_conforms(tmp_path):
    check_logger("tensorboard", tmp_path, options={"flush_secs": 1}, read_back=read_tensorboard)


def test_mlflow_logger_conforms_offline_and_keeps_config_and_export(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    run = check_logger(
        "mlflow", tmp_path, options={"tracking_uri": uri}, read_back=mlflow_reader(uri)
    )
    client = MlflowClient(tracking_uri=uri)
    found = client.get_run((run / "mlflow_run_id").read_text().strip())
    assert found.info.status == "FINISHED"
    assert found.data.params["train.batch_size"] == "8"
    assert found.data.params["plan.lr"] == "0.0005"
    paths = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.json", "config.yaml", "export"} <= paths
    exported = client.list_artifacts(found.info.run_id, "export")
    assert [a.path for a in exported] == ["export/model.safetensors"]


def test_wandb_logger_conforms_offline(tmp_path):
    run = check_logger("wandb", tmp_path, options={"mode": "offline"}, read_back=read_wandb)
    assert list(run.glob("wandb/offline-run-*/run-*.wandb"))


def test_check_logger_names_a_logger_that_drops_monitor_columns(tmp_path):
    class Forgetful:
        def __init__(self) -> None:
            self.rows: dict[int, dict] = {}

        def start(self, run):
            pass

        def log_config(self, config):
            pass

        def log_metrics(self, step, row):
            # Keeps only the columns of the first row it saw: monitor values come later.
            keep = self.__dict__.setdefault("columns", [k for k, v in row.items() if v is not None])
            self.rows[step] = {k: row[k] for k in keep}

        def log_artifact(self, path, name):
            pass

        def finish(self, status):
            pass

    made: list[Forgetful] = []

    def factory() -> Forgetful:
        made.append(Forgetful())
        return made[-1]

    def read_back(run_dir):
        return {s: r for logger in made for s, r in logger.rows.items()}

    with pytest.raises(ConformanceError, match=r"step 2 column 'monitor/knn_acc'"):
        check_logger(factory, tmp_path, read_back=read_back)


def test_check_logger_names_a_logger_that_chokes_on_a_blank_cell(tmp_path):
    class Strict:
        def start(self, run):
            pass

        def log_config(self, config):
            pass

        def log_metrics(self, step, row):
            {k: float(v) for k, v in row.items()}  # None is not a number

        def log_artifact(self, path, name):
            pass

        def finish(self, status):
            pass

    with pytest.raises(ConformanceError, match=r"log_metrics\(\) at step 1 raised TypeError"):
        check_logger(Strict, tmp_path)


# --------------------------------------------------------------- config and CLI


def test_loggers_are_registered_through_entry_points():
    registry = get_registry()
    assert {"csv", "tensorboard", "mlflow", "wandb"} <= set(registry.names("loggers"))
    assert registry.get("loggers", "csv")[0].plugin == "builtin_loggers"
    assert registry.get("loggers", "mlflow")[0].plugin == "mlflow"


def test_logger_flags_combine_and_options_reach_their_logger(tmp_path):
    from biovfm_core.cli.common import resolve_config
    from biovfm_core.cli.train_cmd import train

    args = ["--logger", "mlflow", "--logger", "tensorboard"]
    args += ["--opt", "logger.mlflow.experiment=chest", "--opt", "logger.mlflow.flush_every=5"]
    flags = train.make_context("train", args).params
    config = resolve_config(None, (), flags["opts"], {"train.loggers": flags["loggers"]})
    assert config.train.loggers == ["mlflow", "tensorboard"]
    assert config.loggers_in_use() == ["csv", "mlflow", "tensorboard"]
    config.validate(get_registry())
    assert config.options["logger"]["mlflow"] == {"experiment": "chest", "flush_every": 5}
    assert config.options["logger"]["csv"] == {}
    # The validated form reloads to the same options (a run's config.yaml, --resume).
    again = RunConfig.from_yaml(config.save(tmp_path / "config.yaml"))
    again.validate(get_registry())
    assert again.options["logger"] == config.options["logger"]
    assert RunConfig().train.loggers == ["csv", "tensorboard"]


def test_logger_option_errors_name_the_option():
    config = RunConfig()
    config.set("train.loggers", ["mlflow"])
    config.apply_opts(["logger.mlflow.experimnt=x"])
    with pytest.raises(
        ConfigError,
        match=r"unknown option logger.mlflow.experimnt .*did you mean logger.mlflow.experiment\?",
    ):
        config.validate(get_registry())
    config = RunConfig()
    config.apply_opts(["logger.wandb.mode=offline"])
    with pytest.raises(
        ConfigError, match=r"logger 'wandb' is not in train.loggers.*--logger wandb"
    ):
        config.validate(get_registry())
    config = RunConfig()
    config.set("train.loggers", ["mlfow"])
    with pytest.raises(ConfigError, match=r"unknown logger 'mlfow'; did you mean 'mlflow'"):
        config.validate(get_registry())


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow-skinny were absent
    with pytest.raises(ConfigError, match=r"pip install 'biovfm\[mlflow\]'"):
        get_registry().build("loggers", "mlflow")


# ------------------------------------------------------------------ real runs


class _Flaky:
    """Fails at its second row, like a tracking server going away mid-run."""

    calls: ClassVar[list[str]] = []

    def start(self, run):
        _Flaky.calls.append("start")

    def log_config(self, config):
        _Flaky.calls.append("log_config")

    def log_metrics(self, step, row):
        _Flaky.calls.append(f"log_metrics {step}")
        if step == 2:
            raise ConnectionError("tracking server unreachable\nsecond line")

    def log_artifact(self, path, name):
        _Flaky.calls.append(f"log_artifact {name}")

    def finish(self, status):
        _Flaky.calls.append(f"finish {status}")


class _FlakyPlugin:
    @hookimpl
    def biovfm_register_loggers(self, register):
        register("flaky", _Flaky)


def test_a_failing_logger_is_switched_off_once_and_the_others_go_on(tmp_path, capsys):
    from biovfm_core.protocols import RunInfo
    from biovfm_core.train.loggers import RunLoggers

    registry = get_registry()
    registry.add_plugin(_FlakyPlugin(), name="flaky_plugin")
    _Flaky.calls = []
    config = RunConfig()
    config.set("train.loggers", ["flaky", "tensorboard"])
    config.validate(registry)
    loggers = RunLoggers(config, registry, RunInfo(tmp_path, "run"))
    loggers.log_config(config.to_dict())
    for step in (1, 2, 3):
        loggers.log({"step": step, "loss": 10.0 - step, "monitor/knn_acc": None})
    loggers.finish("done")
    assert _Flaky.calls == [
        "start",
        "log_config",
        "log_metrics 1",
        "log_metrics 2",
        "finish failed",  # let it release what it holds, then never again
    ]
    assert loggers.disabled == {"flaky": "ConnectionError: tracking server unreachable"}
    assert capsys.readouterr().err.splitlines() == [
        "warning: logger 'flaky' failed in log_metrics() (ConnectionError: tracking server "
        "unreachable); it is switched off for the rest of this run, training goes on"
    ]
    assert {s: r["loss"] for s, r in read_csv(tmp_path).items()} == {1: 9.0, 2: 8.0, 3: 7.0}
    assert {s: r["loss"] for s, r in read_tensorboard(tmp_path).items()} == {1: 9.0, 2: 8.0, 3: 7.0}


def test_csv_logger_errors_still_stop_the_run(tmp_path):
    """metrics.csv is what resume and the report read: a run that cannot write it stops."""
    from biovfm_core.protocols import RunInfo
    from biovfm_core.train.loggers import RunLoggers

    config = RunConfig()
    config.set("train.loggers", ["csv"])
    loggers = RunLoggers(config, get_registry(), RunInfo(tmp_path / "missing", "run"))
    with pytest.raises(OSError):
        loggers.log({"step": 1, "loss": 1.0})


@pytest.mark.slow
def test_a_real_run_reaches_every_logger_and_a_failing_one_does_not_stop_it(tmp_path, capsys):
    """One tiny CPU run: MLflow (file store) and W&B (offline) hold the metrics
    metrics.csv holds; a logger that fails at step 2 is warned about once and
    switched off, and the run finishes."""
    from mlflow.tracking import MlflowClient

    from biovfm_core.cli.main import cli

    get_registry().add_plugin(_FlakyPlugin(), name="flaky_plugin")
    _Flaky.calls = []
    uri = (tmp_path / "mlruns").as_uri()
    args = ["train", *TINY_RUN, "--output", str(tmp_path), "--name", "run"]
    args += ["--logger", "flaky", "--logger", "mlflow", "--logger", "wandb"]
    args += ["--logger", "tensorboard", "--opt", f"logger.mlflow.tracking_uri={uri}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert _Flaky.calls == [
        "start",
        "log_config",
        "log_artifact config.yaml",
        "log_metrics 1",
        "log_metrics 2",
        "finish failed",  # let it release what it holds, then never again
    ]
    warnings = [line for line in result.output.splitlines() if "flaky" in line]
    assert warnings == [
        "warning: logger 'flaky' failed in log_metrics() (ConnectionError: tracking server "
        "unreachable); it is switched off for the rest of this run, training goes on"
    ]
    written = read_csv(run)
    assert sorted(written) == [1, 2, 3]
    for stored in (mlflow_reader(uri)(run), read_wandb(run), read_tensorboard(run)):
        assert sorted(stored) == [1, 2, 3]
        for step, row in written.items():
            for column, value in row.items():
                if isinstance(value, float) and math.isfinite(value):
                    # metrics.csv rounds to 6 significant digits; TensorBoard keeps float32.
                    assert stored[step][column] == pytest.approx(value, rel=1e-5), column
    client = MlflowClient(tracking_uri=uri)
    run_id = (run / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).data.params["train.max_steps"] == "3"
    assert client.get_run(run_id).data.params["plan.total_steps"] == "3"
    exported = {a.path for a in client.list_artifacts(run_id, "export")}
    assert "export/model.safetensors" in exported
    # The run report of the same real run: its loss parts, schedules and config.
    report = CliRunner().invoke(cli, ["report", str(run)])
    assert report.exit_code == 0, report.output
    page = (run / "report.html").read_text()
    for title in ("Loss and its parts", "Schedules: lr", "Throughput and data wait"):
        assert f'<img alt="{title}' in page
    assert "<pre>objective: dinov2" in page
    assert "<td>state</td><td>finished</td>" in page


def test_metrics_csv_widens_for_a_column_first_seen_mid_run(tmp_path):
    """A monitor that first reports at step 2 still gets its column, earlier rows blank."""
    from biovfm_core.train.metrics import MetricsLog

    log = MetricsLog(tmp_path)
    log.log({"step": 1, "loss": 2.0})
    log.log({"step": 2, "loss": 1.5, "monitor/knn_acc": 0.25})
    log.log({"step": 3, "loss": 1.0})
    log.close()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "step,loss,monitor/knn_acc",
        "1,2,",
        "2,1.5,0.25",
        "3,1,",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.csv"]  # no temp file
