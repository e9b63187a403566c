"""What a run folder holds so far, read so that a run still writing it is no problem.

The training loop appends one metrics.csv line per step and flushes it; a reader can
meet the last line half-written. That line (no newline yet) is left out, as are
repeated header lines and earlier copies of a step (a resumed run writes the steps
after its checkpoint again; the last copy is the one the run kept).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biovfm_core.errors import ConfigError


@dataclass
class RunRecord:
    """A run's metrics by column, one value per logged step (NaN where blank)."""

    run_dir: Path
    steps: list[int]
    columns: dict[str, list[float]]
    config_text: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    skipped_partial_line: bool = False

    def has(self, column: str) -> bool:
        """The column exists and holds at least one number."""
        values = self.columns.get(column)
        return values is not None and any(math.isfinite(v) for v in values)

    @property
    def finished(self) -> bool:
        return self.summary is not None


def read_run(run_dir: str | Path) -> RunRecord:
    """Read ``RUN/metrics.csv``, ``config.yaml`` and ``summary.json`` (if there yet)."""
    run = Path(run_dir)
    path = run / "metrics.csv"
    if not run.is_dir():
        raise ConfigError(f"biovfm report {run}: no such run folder")
    if not path.is_file():
        raise ConfigError(
            f"biovfm report {run}: no metrics.csv there (not a run folder, or the run "
            "has not finished its first step yet)"
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    partial = bool(text) and not text.endswith("\n")
    if partial:
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(io.StringIO(text)))
    by_step: dict[int, dict[str, str]] = {}
    for row in rows:
        step = _float(row.get("step"))
        if math.isfinite(step):  # a repeated header line reads step "step"
            by_step[int(step)] = row
    steps = sorted(by_step)
    names = [n for n in (rows[0].keys() if rows else []) if n and n != "step"]
    columns = {n: [_float(by_step[s].get(n)) for s in steps] for n in names}
    config_path = run / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else ""
    config: dict[str, Any] = {}
    if config_text:
        import yaml

        try:
            config = yaml.safe_load(config_text) or {}
        except yaml.YAMLError:
            config = {}
    summary = None
    if (run / "summary.json").is_file():
        try:
            summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            summary = None
    return RunRecord(run, steps, columns, config_text, config, summary, partial)


def _float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
