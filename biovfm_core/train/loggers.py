"""The run's loggers (``train.loggers``): built once, fed every step, never fatal.

A tracking server that goes away on day three of a two-week run must not end the
run: a logger that raises is warned about once, naming it and the error, and is
switched off; the others and the training go on. The ``csv`` logger is the
exception: metrics.csv is what resume and ``biovfm report`` read, so its errors
(a full disk) stop the run as any write failure of the run folder does.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from biovfm_core.config import ALWAYS_LOGGED, RunConfig
from biovfm_core.protocols import RunInfo


class RunLoggers:
    """Every logger of one run, called together (rank 0 only; elsewhere a no-op)."""

    def __init__(
        self,
        config: RunConfig,
        registry: Any,
        run: RunInfo,
        *,
        enabled: bool = True,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.say = say or (lambda message: print(message, file=sys.stderr, flush=True))
        self.active: dict[str, Any] = {}
        self.disabled: dict[str, str] = {}
        """Logger name -> the one-line reason it was switched off."""
        self._finished = False
        if not enabled:
            return
        # Factories run before the first step: a missing extra or a bad option is a
        # ConfigError now, not a warning hours in.
        for name, options in config.logger_options().items():
            self.active[name] = _build(registry, name, options)
        for name in list(self.active):
            self._call(name, "start", run)

    def log_config(self, config: Mapping[str, Any]) -> None:
        for name in list(self.active):
            self._call(name, "log_config", config)

    def log(self, row: Mapping[str, Any]) -> None:
        """One step's row (``step`` plus every metrics.csv column)."""
        step = int(row["step"])
        values = {k: v for k, v in row.items() if k != "step"}
        for name in list(self.active):
            self._call(name, "log_metrics", step, values)

    def log_artifact(self, path: Path, name: str) -> None:
        for logger in list(self.active):
            self._call(logger, "log_artifact", path, name)

    def finish(self, status: str) -> None:
        """Once: ``done``, ``failed`` or ``interrupted``."""
        if self._finished:
            return
        self._finished = True
        for name in list(self.active):
            self._call(name, "finish", status)

    def _call(self, name: str, method: str, *args: Any) -> None:
        logger = self.active[name]
        if name == ALWAYS_LOGGED:
            getattr(logger, method)(*args)
            return
        try:
            getattr(logger, method)(*args)
        except Exception as exc:  # any failure of a logger is that logger's alone
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            self.disabled[name] = reason
            del self.active[name]
            self.say(
                f"warning: logger {name!r} failed in {method}() ({reason}); it is switched "
                "off for the rest of this run, training goes on"
            )
            if method != "finish":
                # Let it release what it holds (files, threads); its problem if not.
                with contextlib.suppress(Exception):
                    logger.finish("failed")


def _build(registry: Any, name: str, options: dict[str, Any]) -> Any:
    if not registry.names("loggers"):
        # A registry assembled by hand (tests) without biovfm's entry points: the
        # run still writes its own record.
        from biovfm_core.train import builtin_loggers

        fallback = {
            "csv": builtin_loggers.CsvLogger,
            "tensorboard": builtin_loggers.TensorBoardLogger,
        }
        if name in fallback:
            return fallback[name](**options)
    return registry.build("loggers", name, options=options)
