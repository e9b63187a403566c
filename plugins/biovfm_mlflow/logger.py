"""An MLflow run per biovfm run: the config as params, every metrics.csv column as a
metric per step, config.yaml and the export as artifacts.

It talks to MLflow through ``MlflowClient`` with an explicit run id, never through
``mlflow.start_run``'s process-wide active run, so it cannot collide with MLflow use
elsewhere in the process. A resumed run continues the same MLflow run (its id is
kept in ``RUN/mlflow_run_id``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import RunInfo

_STATUS = {"done": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# MLflow rejects a param value over 6,000 characters (mlflow/utils/validation.py,
# MAX_PARAM_VAL_LENGTH); longer ones (a long list of sources) are cut.
_MAX_PARAM = 6000
_ID_FILE = "mlflow_run_id"


class MlflowLogger:
    """Log the run to MLflow.

    Args:
        tracking_uri: where runs go: a server (http://host:5000), a database
            (sqlite:///mlflow.db, needs the full mlflow package) or a folder (file:/path,
            MLflow's file store). Empty: MLFLOW_TRACKING_URI if set, else the folder
            mlruns/ beside the run folder.
        experiment: MLflow experiment name, created if missing.
        run_name: MLflow run name; empty: the run folder's name.
        log_export: upload the export folder (the backbone's weights) as an artifact at
            the end of the run.
        flush_every: send metrics every this many steps (one request per step slows a
            fast run on a remote server); the rest go at the end.
    """

    def __init__(
        self,
        *,
        tracking_uri: str = "",
        experiment: str = "biovfm",
        run_name: str = "",
        log_export: bool = True,
        flush_every: int = 10,
    ) -> None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError(
                "logger 'mlflow' needs MLflow: pip install 'biovfm[mlflow]' (or mlflow-skinny)"
            ) from None
        if flush_every < 1:
            raise ConfigError(f"logger.mlflow.flush_every must be at least 1, got {flush_every}")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.log_export = log_export
        self.flush_every = flush_every
        self.client = None
        self.run_id: str | None = None
        self._pending: list[Any] = []

    def start(self, run: RunInfo) -> None:
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            uri = (run.run_dir.parent / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 puts its file store in maintenance mode and refuses it unless
            # asked; a file: URI here is the user's (or this logger's default) choice.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        id_file = run.run_dir / _ID_FILE
        if run.resume_step and id_file.is_file():
            self.run_id = id_file.read_text(encoding="utf-8").strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = (
            found.experiment_id if found else self.client.create_experiment(self.experiment)
        )
        created = self.client.create_run(
            experiment_id,
            run_name=self.run_name or run.name,
            tags={"biovfm.run_dir": str(run.run_dir.resolve())},
        )
        self.run_id = created.info.run_id
        tmp = id_file.with_name(id_file.name + ".tmp")
        tmp.write_text(self.run_id + "\n", encoding="utf-8")
        tmp.replace(id_file)

    def log_config(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        held = self.client.get_run(self.run_id).data.params
        # A resumed run may change a value (a longer --max-steps): MLflow refuses to
        # overwrite a param, so the first value stays and config.json holds the new.
        params = [
            Param(key, text)
            for key, text in _flatten(config).items()
            if key not in held and len(key) <= 250
        ]
        for start in range(0, len(params), 100):  # MLflow's batch limit: 100 params
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        self.client.log_dict(self.run_id, dict(config), "config.json")

    def log_metrics(self, step: int, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in row.items():
            if _is_number(value):
                self._pending.append(Metric(key, float(value), now, step))
        if step % self.flush_every == 0:
            self._flush()

    def log_artifact(self, path: Path, name: str) -> None:
        self._flush()
        if name == "export" and not self.log_export:
            return
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path=name)
        else:
            self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str) -> None:
        if self.client is None or self.run_id is None:
            return
        try:
            self._flush()
        finally:
            self.client.set_terminated(self.run_id, _STATUS.get(status, "FAILED"))

    def _flush(self) -> None:
        # MLflow's batch limit is 1,000 metrics per request.
        while self._pending:
            batch, self._pending = self._pending[:1000], self._pending[1000:]
            self.client.log_batch(self.run_id, metrics=batch)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = str(value)[:_MAX_PARAM]
    return flat


def _is_number(value: Any) -> bool:
    """A finite int or float (a bool or a blank cell is not a metric value)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
