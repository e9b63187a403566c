"""Scanning sources into an index, with a report of what was found and what was not."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from biovfm_core.errors import BiovfmError
from biovfm_core.protocols import SampleRecord, ScanProblem

from .catalog import SourceSpec
from .index import IndexBuilder, SampleIndex

# A source with fewer images than this share of its catalog count is "short".
SHORT_THRESHOLD = 0.99


@dataclass
class SourceStatus:
    name: str
    reader: str
    path: str
    status: str  # present, short, missing, empty, error
    found: int = 0
    expected: int | None = None
    problems: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class ScanReport:
    sources: list[SourceStatus] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (source, path, reason)

    @property
    def total(self) -> int:
        return sum(s.found for s in self.sources)

    def by_status(self, status: str) -> list[SourceStatus]:
        return [s for s in self.sources if s.status == status]

    def write_problems(self, path: str) -> None:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["source", "path", "reason"])
            w.writerows(self.problems)

    def as_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "sources": [asdict(s) for s in self.sources],
            "problems": [{"source": s, "path": p, "reason": r} for s, p, r in self.problems],
        }


def scan_sources(
    sources: Sequence[SourceSpec],
    *,
    progress: Callable[[str], None] | None = None,
) -> tuple[SampleIndex, ScanReport]:
    """Scan every source; missing or failing sources are reported, not fatal."""
    builder = IndexBuilder()
    report = ScanReport()
    for spec in sources:
        status = SourceStatus(
            spec.name, spec.reader, spec.path, "present", expected=spec.expected_count
        )
        report.sources.append(status)
        builder.add_source(
            spec.name,
            reader=spec.reader,
            path=spec.path,
            options=dict(spec.options),
            modality=spec.modality,
            anatomy=spec.anatomy,
            expected_count=spec.expected_count,
            url=spec.url,
        )
        if not spec.exists:
            status.status = "missing"
            continue
        t0 = time.perf_counter()
        try:
            reader = spec.build_reader()
            for item in reader.scan():
                if isinstance(item, SampleRecord):
                    builder.add(item)
                    status.found += 1
                elif isinstance(item, ScanProblem):
                    status.problems += 1
                    report.problems.append((spec.name, item.path, item.reason))
        except (BiovfmError, OSError) as exc:
            status.status = "error"
            status.error = str(exc)
        status.seconds = time.perf_counter() - t0
        classes = getattr(reader, "classes", None) if status.status != "error" else None
        if classes:
            builder.sources_meta[spec.name]["classes"] = list(classes)
        if status.status == "present":
            if status.found == 0:
                status.status = "empty"
            elif spec.expected_count and status.found < SHORT_THRESHOLD * spec.expected_count:
                status.status = "short"
        if progress:
            progress(
                f"{spec.name}: {status.status}, {status.found} images, {status.problems} problems"
            )
    return builder.build(), report


def default_problem_path(index_path: str) -> str:
    base = index_path[:-4] if index_path.endswith(".npz") else index_path
    return base + ".problems.csv"


def open_reader(index: SampleIndex, source: str):  # type: ignore[no-untyped-def]
    """Rebuild the reader of a source recorded in the index."""
    meta = index.sources_meta.get(source)
    if not meta or "reader" not in meta:
        raise BiovfmError(f"index has no reader recorded for source {source!r}")
    spec = SourceSpec(
        name=source,
        reader=meta["reader"],
        path=meta.get("path", ""),
        modality=meta.get("modality", "auto"),
        anatomy=meta.get("anatomy", "unknown"),
        options=meta.get("options", {}),
        where=f"index source {source!r}",
    )
    if spec.reader != "demo" and not os.path.exists(spec.path):
        raise BiovfmError(f"source {source!r}: path {spec.path!r} no longer exists")
    return spec.build_reader()
