"""Results on disk: per (model, benchmark, protocol) a JSON of metrics and an ``.npz``
of test labels and scores; the combined CSV (``biovfm_core.results`` schema) and a
Markdown table with the mean over benchmarks; and the comparison of two tables."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from biovfm_core.errors import ConfigError
from biovfm_core.files import write_atomic
from biovfm_core.results import (
    METRICS,
    UNRECORDED,
    ResultRow,
    one_convention,
    read_results,
    write_results,
)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def write_result(
    out_dir: Path,
    record: dict,
    test_labels: np.ndarray,
    test_scores: np.ndarray,
    val_labels: np.ndarray,
    val_scores: np.ndarray,
) -> Path:
    """``OUT/<model>/<benchmark>/<protocol>.json`` and ``.npz`` (the npz holds what is
    needed to recompute every metric: test labels/scores, plus validation ones and
    the thresholds chosen on them)."""
    folder = out_dir / slug(record["model"]) / slug(record["benchmark"])
    stem = folder / record["protocol"]
    thresholds = record.get("thresholds")
    buffer = io.BytesIO()
    np.savez(
        buffer,
        test_labels=test_labels,
        test_scores=test_scores,
        val_labels=val_labels,
        val_scores=val_scores,
        thresholds=np.asarray(thresholds if thresholds is not None else [], dtype=np.float64),
    )
    made = [p for p in (out_dir, folder.parent, folder) if not p.exists()]
    try:
        write_atomic(stem.with_suffix(".npz"), buffer.getvalue())
        write_atomic(stem.with_suffix(".json"), (json.dumps(record, indent=2) + "\n").encode())
    except OSError as exc:
        # write_atomic removed its temp file; an .npz without its .json (or beside an
        # older run's .json) is no result either, so the pair goes, and any folder made
        # for it, and the error says where, not a traceback.
        stem.with_suffix(".npz").unlink(missing_ok=True)
        stem.with_suffix(".json").unlink(missing_ok=True)
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()
        raise ConfigError(write_error(out_dir, exc)) from None
    return stem.with_suffix(".json")


def write_error(out_dir: Path, exc: OSError) -> str:
    """One line for a results write that failed (a full disk, no permission)."""
    reason = exc.strerror or str(exc)
    hint = "free space there" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "check it"
    return (
        f"--output {out_dir}: cannot write the results: {reason}; {hint} or pass another "
        "--output, and run the same command again (results already written are kept)"
    )


def _records(out_dir: Path):
    for path in sorted(out_dir.glob("*/*/*.json")):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(record, dict) and "metrics" in record and "protocol" in record:
            yield path, record


def check_folder_convention(out_dir: Path, convention: str) -> None:
    """An error when ``out_dir`` already holds results of another metric convention
    (a result without one predates conventions: standard)."""
    if not out_dir.is_dir():
        return
    for path, record in _records(out_dir):
        found = record.get("metrics_convention") or UNRECORDED
        if found != convention:
            how = "" if record.get("metrics_convention") else " (no convention recorded)"
            raise ConfigError(
                f"--output {out_dir}: holds results computed with --metrics {found}{how}, "
                f"e.g. {path}; its tables would mix them with --metrics {convention}. "
                f"Write to another --output, or pass --metrics {found}"
            )


def collect_rows(out_dir: Path) -> list[ResultRow]:
    """Every result JSON under ``out_dir`` as schema rows, so repeated ``biovfm eval``
    calls into one folder build up one table."""
    rows = []
    for _, record in _records(out_dir):
        for metric in METRICS:
            m = record["metrics"].get(metric)
            if m is None:
                continue
            rows.append(
                ResultRow(
                    model=record["model"],
                    benchmark=record["benchmark"],
                    protocol=record["protocol"],
                    metric=metric,
                    value=m["value"],
                    ci_low=m.get("ci_low"),
                    ci_high=m.get("ci_high"),
                    objective=record.get("objective", ""),
                    backbone=record.get("backbone", ""),
                    params_m=record.get("params_m"),
                    seed=record.get("seed"),
                    source=record.get("source", ""),
                    convention=record.get("metrics_convention", ""),
                )
            )
    return rows


def markdown_table(rows: list[ResultRow]) -> str:
    """Per protocol and metric: models × benchmarks, with the mean over benchmarks
    (the study compares models by mean AUC over the 12)."""
    lines: list[str] = []
    by_pm: dict[tuple[str, str], list[ResultRow]] = defaultdict(list)
    for r in rows:
        by_pm[(r.protocol, r.metric)].append(r)
    protocols = sorted({r.protocol for r in rows})
    for protocol in protocols:
        for metric in METRICS:
            group = by_pm.get((protocol, metric))
            if not group:
                continue
            benches = sorted({r.benchmark for r in group})
            models = list(dict.fromkeys(r.model for r in group))
            cell = {(r.model, r.benchmark): r for r in group}
            lines.append(f"### {protocol} — {metric} (×100, 95% CI)")
            lines.append("")
            lines.append("| model | " + " | ".join(benches) + " | mean |")
            lines.append("|---|" + "---:|" * (len(benches) + 1))
            for model in models:
                values, cells = [], []
                for b in benches:
                    r = cell.get((model, b))
                    if r is None:
                        cells.append("–")
                        continue
                    values.append(r.value)
                    ci = (
                        f" [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]"
                        if r.ci_low is not None and not math.isnan(r.ci_low)
                        else ""
                    )
                    cells.append(f"{100 * r.value:.1f}{ci}")
                # A mean over a subset would not be comparable to a full row.
                mean = f"{100 * np.mean(values):.2f}" if len(values) == len(benches) else "–"
                lines.append(f"| {model} | " + " | ".join(cells) + f" | {mean} |")
            lines.append("")
    return "\n".join(lines)


def write_tables(out_dir: Path) -> tuple[Path, Path]:
    rows = collect_rows(out_dir)
    convention = one_convention([(str(out_dir), rows)])
    md = (
        "# biovfm eval results\n\n"
        + f"Metric convention: **{convention}** (`biovfm eval --metrics {convention}`; "
        + "definitions in biovfm's docs/evaluation.md).\n\n"
        + markdown_table(rows)
    )
    try:
        csv_path = write_results(out_dir / "results.csv", rows)
        md_path = write_atomic(out_dir / "results.md", md.encode())
    except OSError as exc:  # each table is whole or absent (write_atomic)
        raise ConfigError(write_error(out_dir, exc)) from None
    return csv_path, md_path


def headline_tables(md_path: Path) -> str:
    """The AUC tables of ``results.md`` (one per protocol): what the console shows at the
    end of an eval; the other metrics stay in the file."""
    sections = md_path.read_text().split("\n### ")[1:]
    return "\n".join("### " + s.strip() + "\n" for s in sections if " — auc " in s.split("\n")[0])


def _overlap(a: ResultRow, b: ResultRow) -> str:
    if None in (a.ci_low, a.ci_high, b.ci_low, b.ci_high):
        return "no CI"
    return "overlap" if a.ci_low <= b.ci_high and b.ci_low <= a.ci_high else "DISJOINT"


def compare_tables(path_a: str | os.PathLike[str], path_b: str | os.PathLike[str]) -> str:
    """B − A per benchmark, protocol and metric, with both intervals and whether they
    overlap. Tables with one model each are matched by benchmark; otherwise by model
    too."""
    a_rows, b_rows = read_results(path_a), read_results(path_b)
    convention = one_convention([(f"A = {path_a}", a_rows), (f"B = {path_b}", b_rows)])
    single = len({r.model for r in a_rows}) == 1 and len({r.model for r in b_rows}) == 1

    def key(r: ResultRow) -> tuple:
        return (
            (r.benchmark, r.protocol, r.metric)
            if single
            else (r.model, r.benchmark, r.protocol, r.metric)
        )

    a_map = {key(r): r for r in a_rows}
    b_map = {key(r): r for r in b_rows}
    shared = [k for k in a_map if k in b_map]
    fmt = lambda r: (  # noqa: E731
        f"{r.value:.4f}" + (f" [{r.ci_low:.4f}, {r.ci_high:.4f}]" if r.ci_low is not None else "")
    )
    unrecorded = [
        name for name, rows in (("A", a_rows), ("B", b_rows)) if any(not r.convention for r in rows)
    ]
    lines = [
        f"A = {path_a}",
        f"B = {path_b}",
        f"metric convention: {convention}"
        + (
            f" ({' and '.join(unrecorded)} record no convention: treated as standard)"
            if unrecorded
            else ""
        ),
        "",
    ]
    header = ("" if single else "model\t") + "benchmark\tprotocol\tmetric\tA\tB\tB-A\tCIs"
    lines.append(header)
    diffs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for k in sorted(shared):
        a, b = a_map[k], b_map[k]
        diffs[(a.protocol, a.metric)].append(b.value - a.value)
        lines.append("\t".join([*k, fmt(a), fmt(b), f"{b.value - a.value:+.4f}", _overlap(a, b)]))
    if not shared:
        lines.append("(no benchmark/protocol/metric in common)")
    lines.append("")
    for (protocol, metric), values in sorted(diffs.items()):
        lines.append(
            f"mean B-A over {len(values)} benchmark(s), {protocol} {metric}: {np.mean(values):+.4f}"
        )
    only = len(a_map) - len(shared), len(b_map) - len(shared)
    if any(only):
        lines.append(f"rows only in A: {only[0]}, only in B: {only[1]}")
    return "\n".join(lines)
