"""Scanning sources into an index, with a report of what was found and what was not."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from biovfm_core.errors import BiovfmError, ConfigError
from biovfm_core.protocols import SampleRecord, ScanProblem

from .catalog import SourceSpec
from .index import IndexBuilder, SampleIndex


class SourceError(ConfigError):
    """A data source the run asked for is missing or failed while scanning."""


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
    optional: bool = False
    url: str = ""
    notes: list[str] = field(default_factory=list)


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
        # A file name that is not UTF-8 is written as its own bytes (surrogateescape),
        # so the listed path is the file's real path.
        with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            w = csv.writer(f)
            w.writerow(["source", "path", "reason"])
            w.writerows(self.problems)

    def as_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "sources": [asdict(s) for s in self.sources],
            "problems": [{"source": s, "path": p, "reason": r} for s, p, r in self.problems],
        }


def _failure(exc: BaseException) -> str:
    # Our own errors already read as a sentence; anything else (a third-party reader's
    # bug) keeps its type so the reason is not a bare "'auto'".
    return str(exc) if isinstance(exc, BiovfmError) else f"{type(exc).__name__}: {exc}"


def _listing(parts: Sequence[str], most: int = 5) -> str:
    more = f"; and {len(parts) - most} more (`biovfm data scan` lists them)"
    return "; ".join(parts[:most]) + (more if len(parts) > most else "")


def _failed(spec: SourceSpec, exc: BaseException) -> str:
    return f"data source {spec.name!r} (reader {spec.reader!r}) failed: {_failure(exc)}"


def missing_message(specs: Sequence[SourceSpec]) -> str:
    parts = []
    for s in specs:
        where = f" (download: {s.url})" if s.url else ""
        parts.append(f"{s.name}: path {s.path!r} does not exist{where}")
    return _listing(parts)


def scan_sources(
    sources: Sequence[SourceSpec],
    *,
    progress: Callable[[str], None] | None = None,
    stop_on_error: bool = False,
    stop_on_missing: bool = False,
) -> tuple[SampleIndex, ScanReport]:
    """Scan every source into one index.

    By default missing and failing sources are only reported (status ``missing`` /
    ``error``). ``stop_on_missing``: a missing non-optional source stops before anything
    is scanned. ``stop_on_error``: a reader that cannot be built (a typo in its
    options) stops before anything is scanned, and a source whose scan fails stops at
    once. Each error names the source and the reason.
    """
    if stop_on_missing:
        absent = [s for s in sources if not s.exists and not s.optional]
        if absent:
            raise SourceError(
                f"{len(absent)} data source(s) missing: {missing_message(absent)} "
                f"(set data.allow_missing_sources=true to train without them)"
            )
    # Build every reader before the first (possibly hours-long) scan, so a bad option
    # of the last source is reported at once.
    readers: dict[str, object] = {}
    build_errors: dict[str, str] = {}
    for spec in sources:
        if not spec.exists:
            continue
        try:
            readers[spec.name] = spec.build_reader()
        except Exception as exc:
            if stop_on_error:
                raise SourceError(_failed(spec, exc)) from exc
            build_errors[spec.name] = _failure(exc)

    builder = IndexBuilder()
    report = ScanReport()
    for spec in sources:
        status = SourceStatus(
            spec.name, spec.reader, spec.path, "present", expected=spec.expected_count
        )
        status.optional = spec.optional
        status.url = spec.url
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
        if spec.name in build_errors:
            status.status, status.error = "error", build_errors[spec.name]
            continue
        reader = readers[spec.name]
        t0 = time.perf_counter()
        # A source that fails halfway must not leave half its images in the index.
        mark = len(builder)
        problems: list[tuple[str, str, str]] = []
        try:
            for item in reader.scan():  # type: ignore[attr-defined]
                if isinstance(item, SampleRecord):
                    builder.add(item)
                    status.found += 1
                elif isinstance(item, ScanProblem):
                    status.problems += 1
                    problems.append((spec.name, item.path, item.reason))
        except Exception as exc:
            if stop_on_error:
                raise SourceError(_failed(spec, exc)) from exc
            status.status, status.error = "error", _failure(exc)
        status.seconds = time.perf_counter() - t0
        report.problems.extend(problems)
        if status.status == "error":
            builder.truncate(mark)
            status.found = 0
        else:
            status.notes = list(getattr(reader, "notes", ()))
            classes = getattr(reader, "classes", None)
            if classes:
                builder.sources_meta[spec.name]["classes"] = list(classes)
            # A reader whose records name other sources (a shard set holds many)
            # says how to reopen them.
            for name, meta in (getattr(reader, "sources_meta", None) or {}).items():
                builder.sources_meta.setdefault(name, {}).update(meta)
            if status.found == 0:
                status.status = "empty"
            elif spec.expected_count and status.found < SHORT_THRESHOLD * spec.expected_count:
                status.status = "short"
        if progress:
            progress(
                f"{spec.name}: {status.status}, {status.found} images, {status.problems} problems"
            )
    return builder.build(), report


def dropped_sources(report: ScanReport) -> list[SourceStatus]:
    """Sources that give the run no images although it asked for them: failed, empty,
    or missing (an absent ``optional: true`` catalog entry is not dropped)."""
    return [
        s
        for s in report.sources
        if s.status in ("error", "empty") or (s.status == "missing" and not s.optional)
    ]


def describe(status: SourceStatus) -> str:
    if status.status == "error":
        return f"{status.name} (failed: {status.error})"
    if status.status == "missing":
        url = f"; download: {status.url}" if status.url else ""
        return f"{status.name} (missing: {status.path!r}{url})"
    return f"{status.name} (no usable images, {status.problems} unusable files)"


def check_sources(
    report: ScanReport, *, allow_missing: bool, warn: Callable[[str], None] | None = None
) -> list[str]:
    """Stop when a requested source gave no images, unless ``allow_missing``; then warn
    with the list of dropped sources and return it (for the run's data report)."""
    if warn is not None:
        for note in (n for s in report.sources for n in s.notes):
            warn(note)
    dropped = [describe(s) for s in dropped_sources(report)]
    if dropped and report.total == 0:
        # Going on without them would leave nothing to train on: allow_missing_sources
        # only moves the error, so it is not the advice here.
        only = "it is the only source" if len(report.sources) == 1 else "no source gave one"
        raise SourceError(
            f"no images to train on: {_listing(dropped)}; {only}. Check the path and the "
            "reader options (`biovfm data scan --data ...` lists unusable files)"
        )
    if dropped and not allow_missing:
        raise SourceError(
            f"{len(dropped)} data source(s) gave no images: {_listing(dropped)} "
            f"(set data.allow_missing_sources=true to go on without them)"
        )
    if dropped and warn is not None:
        warn(f"training without {len(dropped)} data source(s): {_listing(dropped, 20)}")
    return dropped


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
    if not spec.exists:
        raise BiovfmError(f"source {source!r}: path {spec.path!r} no longer exists")
    return spec.build_reader()
