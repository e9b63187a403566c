"""The loggers biovfm ships: ``csv`` (metrics.csv) and ``tensorboard``.

They are registered through the ``biovfm`` entry-point group (``builtin_loggers`` in
pyproject.toml) exactly like a third party's, by ``"module:attr"`` strings, so
``biovfm plugins`` lists them without importing torch or tensorboard.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from biovfm_core import hookimpl
from biovfm_core.protocols import RunInfo
from biovfm_core.train.metrics import MetricsLog


@hookimpl
def biovfm_register_loggers(register) -> None:
    register(
        "csv",
        "biovfm_core.train.builtin_loggers:CsvLogger",
        description="metrics.csv in the run folder (always on: the run's own record)",
    )
    register(
        "tensorboard",
        "biovfm_core.train.builtin_loggers:TensorBoardLogger",
        description="TensorBoard events in RUN/tensorboard (tensorboard --logdir RUN)",
    )


class CsvLogger:
    """One row per optimizer step in ``RUN/metrics.csv``; on resume, rows after the
    checkpoint's step are dropped first, so the curve has no repeated steps."""

    def __init__(self) -> None:
        self._log: MetricsLog | None = None

    def start(self, run: RunInfo) -> None:
        self._log = MetricsLog(run.run_dir, resume_step=run.resume_step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass  # config.yaml beside metrics.csv already holds it

    def log_metrics(self, step: int, row: Mapping[str, Any]) -> None:
        assert self._log is not None, "start() first"
        self._log.log({"step": step, **row})

    def log_artifact(self, path: Path, name: str) -> None:
        pass  # the artifacts already live in the run folder

    def finish(self, status: str) -> None:
        if self._log is not None:
            self._log.close()


class TensorBoardLogger:
    """Scalars under ``train/<column>`` in ``RUN/tensorboard``; the config as text.

    Args:
        flush_secs: seconds between writes of the event file (TensorBoard's default 120).
    """

    def __init__(self, *, flush_secs: int = 120) -> None:
        self.flush_secs = flush_secs
        self._writer = None

    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events a killed run wrote after its last checkpoint.
        self._writer = SummaryWriter(
            str(run.run_dir / "tensorboard"),
            purge_step=run.resume_step + 1 if run.resume_step else None,
            flush_secs=self.flush_secs,
        )

    def log_config(self, config: Mapping[str, Any]) -> None:
        import yaml

        text = yaml.safe_dump(dict(config), sort_keys=False)
        # Markdown code block: TensorBoard's text tab renders the YAML as written.
        self._writer.add_text("config", "```\n" + text + "\n```", 0)

    def log_metrics(self, step: int, row: Mapping[str, Any]) -> None:
        for key, value in row.items():
            if _is_number(value):
                self._writer.add_scalar(f"train/{key}", value, step)

    def log_artifact(self, path: Path, name: str) -> None:
        pass  # TensorBoard has no artifact store; the files stay in the run folder

    def finish(self, status: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _is_number(value: Any) -> bool:
    """A finite int or float (a bool or a blank cell is not a metric value)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
