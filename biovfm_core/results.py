"""The one results schema: what `biovfm eval` writes and `biovfm analyze` reads.

A results table is long-format CSV, one row per (model, benchmark, protocol,
metric). Tables produced elsewhere (published numbers) can be analysed as long as
they have the required columns; the optional ones describe the model for scaling
fits (parameter count, objective, data size, modality mix).

Required columns: ``model``, ``benchmark``, ``protocol``, ``metric``, ``value``.
Optional columns: ``ci_low``, ``ci_high`` (95% bootstrap interval), ``objective``,
``backbone``, ``params_m`` (parameters in millions), ``images`` (pretraining images),
``data_fraction``, ``modalities`` (``+``-joined ids, or ``all``), ``seed``, ``source``,
``convention`` (the metric definitions: ``study``, ``medmnist`` or ``standard``; see
``biovfm_core/eval/conventions.py``). A table without the column, or with it empty, was
written before conventions were recorded, when every number was ``standard``.

Metric names: ``auc``, ``acc``, ``balanced_acc``, ``mcc``, ``f1_macro``, ``f1_micro``,
``recall_macro``, ``recall_micro`` (values in [0, 1], or [-1, 1] for MCC).
Protocols: ``linear``, ``knn``, ``finetune``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from biovfm_core.errors import ConfigError
from biovfm_core.files import write_atomic

REQUIRED = ("model", "benchmark", "protocol", "metric", "value")
METRICS = (
    "auc", "acc", "balanced_acc", "mcc", "f1_macro", "f1_micro", "recall_macro", "recall_micro",
)  # fmt: skip
PROTOCOLS = ("linear", "knn", "finetune")
CONVENTIONS = ("study", "medmnist", "standard")
UNRECORDED = "standard"  # what a table without a convention holds


@dataclass
class ResultRow:
    model: str
    benchmark: str
    protocol: str
    metric: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    objective: str = ""
    backbone: str = ""
    params_m: float | None = None
    images: int | None = None
    data_fraction: float | None = None
    modalities: str = ""
    seed: int | None = None
    source: str = ""
    convention: str = ""  # empty: not recorded (an older table), i.e. standard


COLUMNS = tuple(f.name for f in fields(ResultRow))
_FLOATS = {"value", "ci_low", "ci_high", "params_m", "data_fraction"}
_INTS = {"images", "seed"}


def write_results(path: str | os.PathLike[str], rows: Iterable[ResultRow]) -> Path:
    """Write rows as CSV atomically, columns in schema order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    return write_atomic(Path(path), buffer.getvalue().encode())


def read_results(path: str | os.PathLike[str]) -> list[ResultRow]:
    """Read a results CSV (ours or one produced elsewhere), checking the schema."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read results table {path}: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ConfigError(
            f"{path}: results table lacks column(s) {', '.join(missing)}; "
            f"required: {', '.join(REQUIRED)} (see biovfm_core/results.py)"
        )
    rows = []
    for line, raw in enumerate(reader, start=2):
        values: dict = {}
        for name in COLUMNS:
            text = (raw.get(name) or "").strip()
            try:
                if name in _FLOATS:
                    values[name] = float(text) if text else None
                elif name in _INTS:
                    values[name] = int(float(text)) if text else None
                else:
                    values[name] = text
            except ValueError:
                raise ConfigError(
                    f"{path}:{line}: column {name!r} is not a number: {text!r}"
                ) from None
        if values["value"] is None:
            raise ConfigError(f"{path}:{line}: empty value")
        if values["convention"] and values["convention"] not in CONVENTIONS:
            raise ConfigError(
                f"{path}:{line}: convention {values['convention']!r} is not one of "
                f"{', '.join(CONVENTIONS)}"
            )
        rows.append(ResultRow(**values))
    return rows


def one_convention(tables: Iterable[tuple[str, Sequence[ResultRow]]]) -> str:
    """The one metric convention of some tables (``(name, rows)`` pairs); an error naming
    each table's convention when they differ, since their numbers do not compare."""
    found: dict[str, list[str]] = {}
    unrecorded = []
    for name, rows in tables:
        for conv in sorted({r.convention for r in rows}):
            found.setdefault(conv or UNRECORDED, []).append(name)
            if not conv:
                unrecorded.append(name)
    if len(found) <= 1:
        return next(iter(found), UNRECORDED)
    parts = "; ".join(f"{conv}: {', '.join(dict.fromkeys(names))}" for conv, names in found.items())
    note = (
        f" ({', '.join(dict.fromkeys(unrecorded))} record no convention: written before "
        "conventions were recorded, so treated as standard)"
        if unrecorded
        else ""
    )
    raise ConfigError(
        f"results computed under different metric conventions cannot be mixed: {parts}{note}; "
        "re-run `biovfm eval` with one --metrics for all of them"
    )
