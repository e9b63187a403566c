"""The pack plan: the sources scanned into one ``SampleIndex``, saved before any decode.

Volumes are scanned once per requested plane (``NAME@PLANE`` units, put back under
``NAME``); the plan records the units, where each unit's rows start, the sources'
statuses and the scan's problems, with a fingerprint of the options so a resumed
pack never mixes two plans.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from biovfm_core.errors import BiovfmError, ConfigError
from biovfm_core.files import write_atomic

# Planes of a volume and the `axis` option value that cuts it, for RAS-oriented
# data (NIfTI's convention): axis 0 runs left-right, 1 back-front, 2 foot-head.
PLANE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
# An unfinished pack's work folder inside the shard folder: the plan and the parts.
WORK = ".pack"
PLAN_INDEX = "plan.npz"
PLAN = "plan.json"
PARTS = "parts"


def parse_planes(planes: str | Iterable[str]) -> tuple[str, ...]:
    items = planes.split(",") if isinstance(planes, str) else list(planes)
    out: list[str] = []
    for p in (str(x).strip().lower() for x in items):
        if not p:
            continue
        if p not in PLANE_AXES:
            raise ConfigError(f"--planes: unknown plane {p!r}; valid: axial, coronal, sagittal")
        if p not in out:
            out.append(p)
    if not out:
        raise ConfigError("--planes: give at least one of axial, coronal, sagittal")
    return tuple(out)


def _takes_axis(reader: str) -> bool:
    from biovfm_core.registry import get_registry

    try:
        return "axis" in get_registry().options("datasets", reader)
    except BiovfmError:
        return False


def plan_units(sources: Sequence[Any], planes: tuple[str, ...]) -> list[Any]:
    """One scan per source, or per (source, plane) for readers with an ``axis`` option.

    A source whose own options set ``axis`` keeps it: its catalog knows its volumes'
    orientation better than a global flag. A source cut in several planes is scanned
    as ``NAME@PLANE`` units (the scan builds one reader per name); the plan puts the
    rows back under ``NAME``.
    """
    units = []
    for spec in sources:
        if "axis" in spec.options or not _takes_axis(spec.reader):
            units.append(spec)
            continue
        for plane in planes:
            units.append(
                replace(
                    spec,
                    name=spec.name if len(planes) == 1 else f"{spec.name}@{plane}",
                    options={**spec.options, "axis": PLANE_AXES[plane]},
                )
            )
    return units


def _source_of(unit_name: str) -> str:
    return unit_name.rsplit("@", 1)[0] if "@" in unit_name else unit_name


def unit_dict(spec: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "reader": spec.reader,
        "path": spec.path,
        "modality": spec.modality,
        "anatomy": spec.anatomy,
        "expected_count": spec.expected_count,
        "url": spec.url,
        "options": dict(spec.options),
        "where": spec.where,
        "optional": spec.optional,
    }


def fingerprint_of(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _merge_statuses(statuses: Sequence[Any]) -> list[dict[str, Any]]:
    """One status per source when a volume source was scanned once per plane."""
    from biovfm_core.data.scan import SHORT_THRESHOLD

    merged: dict[str, dict[str, Any]] = {}
    for s in statuses:
        d = asdict(s)
        m = merged.get(s.name)
        if m is None:
            merged[s.name] = d
            continue
        m["found"] += d["found"]
        m["problems"] += d["problems"]
        m["seconds"] += d["seconds"]
        m["notes"] = list(dict.fromkeys(m["notes"] + d["notes"]))
        if "error" in (m["status"], d["status"]):
            m["status"] = "error"
            m["error"] = m["error"] or d["error"]
    for m in merged.values():
        if m["status"] in ("present", "short", "empty"):
            exp = m["expected"]
            m["status"] = (
                "empty"
                if m["found"] == 0
                else "short"
                if exp and m["found"] < SHORT_THRESHOLD * exp
                else "present"
            )
    return list(merged.values())


def make_plan(
    sources: Sequence[Any],
    units: Sequence[Any],
    settings: dict[str, Any],
    fingerprint: str,
    work: str,
    *,
    stop_on_error: bool,
    say: Callable[[str], None] | None,
) -> tuple[Any, dict[str, Any]]:
    """Scan ``units`` and save the plan in ``work``; ``(index, plan)``."""
    from biovfm_core.data.scan import scan_sources

    index, report = scan_sources(units, progress=say, stop_on_error=stop_on_error)
    if any(u.name not in {s.name for s in sources} for u in units):
        index = _under_source_names(index, report, sources, units)
    _keep_provenance(index, sources, units, settings["planes"])
    starts = np.cumsum([0] + [s.found for s in report.sources]).tolist()
    statuses = _merge_statuses(report.sources)
    plan = {
        "fingerprint": fingerprint,
        "settings": settings,
        "units": [unit_dict(u) for u in units],
        "unit_starts": starts,
        "rows": len(index),
        "statuses": statuses,
        "scan_problems": _scan_problems(report, statuses),
    }
    os.makedirs(work, exist_ok=True)
    index.save(os.path.join(work, PLAN_INDEX))
    write_atomic(Path(work) / PLAN, json.dumps(plan, indent=1).encode("utf-8"))
    return index, plan


def _under_source_names(
    index: Any, report: Any, sources: Sequence[Any], units: Sequence[Any]
) -> Any:
    """Rows of NAME@PLANE units go back under NAME (same order, rows contiguous)."""
    from biovfm_core.data.index import IndexBuilder

    builder = IndexBuilder()
    for spec in sources:
        builder.add_source(spec.name)
    for unit in units:
        meta = dict(index.sources_meta.get(unit.name, {}))
        meta.pop("label_width", None)
        builder.sources_meta[_source_of(unit.name)].update(meta)
    for i in range(len(index)):
        rec = index.record(i)
        builder.add(replace(rec, source=_source_of(rec.source)))
    for st in report.sources:
        st.name = _source_of(st.name)
    report.problems = [(_source_of(a), b, c) for a, b, c in report.problems]
    return builder.build()


def _keep_provenance(
    index: Any, sources: Sequence[Any], units: Sequence[Any], planes: Sequence[str]
) -> None:
    """Provenance keeps each source as the user gave it (not one plane's axis)."""
    for spec in sources:
        meta = index.sources_meta.get(spec.name)
        if meta is not None:
            meta["options"] = dict(spec.options)
            if any(
                u.options.get("axis") != spec.options.get("axis")
                for u in units
                if _source_of(u.name) == spec.name
            ):
                meta["planes"] = list(planes)


def _scan_problems(report: Any, statuses: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The scan's bad files, then each missing or failed source, so the problem list
    names everything the shards lack."""
    from biovfm_core.data.scan import describe

    problems = list(dict.fromkeys(tuple(p) for p in report.problems))
    by_name = {s.name: s for s in report.sources}
    for st in statuses:
        if st["status"] in ("missing", "error"):
            problems.append((st["name"], st["path"], describe(by_name[st["name"]])))
    return [list(p) for p in problems]


def load_plan(work: str) -> tuple[Any, dict[str, Any]]:
    """The index and plan an earlier run of the same pack saved in ``work``."""
    from biovfm_core.data.index import SampleIndex

    with open(os.path.join(work, PLAN), encoding="utf-8") as f:
        plan = json.load(f)
    return SampleIndex.load(os.path.join(work, PLAN_INDEX)), plan
