"""Registers ``mlflow``; the factory string keeps `biovfm plugins` free of mlflow."""

from __future__ import annotations

from biovfm_core import hookimpl
from biovfm_core.hookspecs import Register


@hookimpl
def biovfm_register_loggers(register: Register) -> None:
    register(
        "mlflow",
        "biovfm_mlflow.logger:MlflowLogger",
        description="MLflow runs: params, metrics per step, config and export as artifacts "
        "(extra: biovfm[mlflow])",
    )
