"""metrics.csv of a run, continued cleanly on resume (the ``csv`` logger writes it)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from biovfm_core.files import write_atomic


class MetricsLog:
    """One CSV row per optimizer step (rank 0 only).

    On resume, rows after the checkpoint's step (logged by the killed process after
    its last checkpoint) are dropped, so the curve continues exactly where the
    resumed state stands, with no duplicated steps.
    """

    def __init__(self, run_dir: Path, *, resume_step: int = 0, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.csv"
        self.columns: list[str] | None = None
        self._handle = None
        self._writer = None
        if not enabled:
            return
        if self.path.exists():
            self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        with open(self.path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
            columns = list(rows[0].keys()) if rows else None
        # Repeated header rows and steps (two writers before run folders were locked)
        # are dropped: one row per step, the last one written.
        by_step = {
            int(float(r["step"])): r
            for r in rows
            if r["step"] not in ("step", "", None) and int(float(r["step"])) <= step
        }
        kept = [by_step[s] for s in sorted(by_step)]
        if columns is None:
            self.path.unlink()
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(kept)
        write_atomic(self.path, buffer.getvalue().encode())
        self.columns = columns

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.columns is not None and any(k not in self.columns for k in row):
            self._widen([k for k in row if k not in self.columns])
        if self._writer is None:
            new_file = self.columns is None
            self.columns = self.columns or list(row)
            # Held open across steps (closed in close()); one open per step would cost more.
            self._handle = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
            self._writer = csv.DictWriter(
                self._handle, fieldnames=self.columns, extrasaction="ignore"
            )
            if new_file:
                self._writer.writeheader()
        self._writer.writerow({k: _cell(row.get(k)) for k in self.columns})
        self._handle.flush()  # a killed run keeps every step it logged

    def _widen(self, new: list[str]) -> None:
        """A column first seen mid-run (a monitor value every N steps): rewrite the
        file once with the wider header, earlier rows blank there, atomically."""
        self.close()
        rows: list[dict[str, str]] = []
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        self.columns = [*(self.columns or []), *new]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.path, buffer.getvalue().encode())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._writer = None


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value
