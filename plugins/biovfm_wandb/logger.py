"""A Weights & Biases run per biovfm run: the config, every metrics.csv column per
step, the export as a model artifact.

The W&B files go under ``RUN/wandb/`` (offline runs too: ``wandb sync RUN/wandb/
offline-run-*`` uploads them later). A resumed run continues the same W&B run: its id
is kept in ``RUN/wandb_run_id`` and passed with ``resume="allow"``.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import RunInfo

_EXIT_CODE = {"done": 0, "failed": 1, "interrupted": 255}
_MODES = ("", "online", "offline", "disabled")
_ID_FILE = "wandb_run_id"


class WandbLogger:
    """Log the run to Weights & Biases.

    Args:
        project: W&B project.
        entity: W&B team or user; empty: your default entity.
        mode: online, offline or disabled; empty: WANDB_MODE, else online.
        run_name: W&B run name; empty: the run folder's name.
        log_export: log the export folder (the backbone's weights) as a model artifact
            at the end of the run.
    """

    def __init__(
        self,
        *,
        project: str = "biovfm",
        entity: str = "",
        mode: str = "",
        run_name: str = "",
        log_export: bool = True,
    ) -> None:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("logger 'wandb' needs wandb: pip install 'biovfm[wandb]'") from None
        if mode not in _MODES:
            raise ConfigError(
                f"logger.wandb.mode must be one of online, offline, disabled, got {mode!r}"
            )
        self.project = project
        self.entity = entity
        self.mode = mode
        self.run_name = run_name
        self.log_export = log_export
        self.run = None

    def start(self, run: RunInfo) -> None:
        import wandb

        id_file = run.run_dir / _ID_FILE
        if id_file.is_file():
            run_id = id_file.read_text(encoding="utf-8").strip()
        else:
            run_id = secrets.token_hex(4)
            tmp = id_file.with_name(id_file.name + ".tmp")
            tmp.write_text(run_id + "\n", encoding="utf-8")
            tmp.replace(id_file)
        self.run = wandb.init(
            project=self.project,
            entity=self.entity or None,
            name=self.run_name or run.name,
            id=run_id,
            resume="allow",
            dir=str(run.run_dir),
            mode=self.mode or None,
            # Not wandb's own console capture and code saving: biovfm's log is on
            # stderr, and a run must not upload the user's source tree unasked.
            settings=wandb.Settings(console="off", save_code=False),
        )

    def log_config(self, config: Mapping[str, Any]) -> None:
        # allow_val_change: a resumed run may extend train.max_steps.
        self.run.config.update(dict(config), allow_val_change=True)

    def log_metrics(self, step: int, row: Mapping[str, Any]) -> None:
        values = {
            key: float(value)
            for key, value in row.items()
            if isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        }
        self.run.log(values, step=step)

    def log_artifact(self, path: Path, name: str) -> None:
        import wandb

        if name == "export" and not self.log_export:
            return
        kind = "model" if name == "export" else "file"
        artifact = wandb.Artifact(f"{self.run.id}-{name}".replace("/", "-"), type=kind)
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path), name=name)
        self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=_EXIT_CODE.get(status, 1))
            self.run = None
