"""``biovfm data pack``: decode every image of some sources once into a shard folder.

The work is planned before any pixel is decoded: the sources are scanned (any
registered reader; volumes once per requested plane) and the resulting
``SampleIndex`` is saved under ``SHARDS/.pack/`` with a fingerprint of the options.
Its rows are cut into fixed *parts*; each part is decoded and written by one worker
process into a temporary folder that is renamed when the part is complete. A killed
pack therefore leaves complete parts and temporary leftovers only, and running the
same command again redoes exactly the unfinished parts (different options or data
are refused, so a resumed pack never mixes two plans).

Finishing moves the parts' chunk files into the top folder (renames, never copies:
a 21M-image set is terabytes), writes litdata's ``index.json`` listing them in part
order, so litdata item ``i`` is row ``i`` of ``biovfm-index.npz``, then the problem
list and the manifest last.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from biovfm_core.config import write_atomic
from biovfm_core.durations import format_duration
from biovfm_core.errors import BadImageError, BiovfmError, ConfigError

from . import format as fmt

# Planes of a volume and the `axis` option value that cuts it, for RAS-oriented
# data (NIfTI's convention): axis 0 runs left-right, 1 back-front, 2 foot-head.
PLANE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
DEFAULT_CHUNK_BYTES = 64 << 20  # litdata's recommended chunk size
DEFAULT_PART_SIZE = 4096  # images per part: the unit of work and of resume
WORK = ".pack"
PLAN_INDEX = "plan.npz"
PLAN = "plan.json"
PARTS = "parts"
PART_META = "part.json"


@dataclass
class PackReport:
    """What a pack did; ``images``/``problems`` count the whole set, also when resumed."""

    out: str
    images: int
    problems: int
    bytes: int
    chunks: int
    seconds: float
    parts: int = 0
    parts_resumed: int = 0
    packed_now: int = 0  # images decoded by this call (less than ``images`` on resume)
    decode_seconds: float = 0.0  # of ``seconds``: decoding and writing parts only
    sources: list[dict[str, Any]] = field(default_factory=list)
    problems_file: str = ""
    already_complete: bool = False

    @property
    def images_per_s(self) -> float:
        return self.packed_now / self.seconds if self.seconds > 0 else 0.0


# ----------------------------------------------------------------------- options


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


def _units(sources: Sequence[Any], planes: tuple[str, ...]) -> list[Any]:
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


def _unit_dict(spec: Any) -> dict[str, Any]:
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


def _fingerprint(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------ folder state


def _ours(name: str) -> bool:
    return (
        name in (fmt.MANIFEST, fmt.INDEX, fmt.LITDATA_INDEX, fmt.PROBLEMS, WORK)
        or (name.startswith("chunk-") and name.endswith(".bin"))
        or name.startswith((f".{fmt.MANIFEST}.", f".{fmt.LITDATA_INDEX}.", ".index-"))
        or name.startswith(f".{fmt.PROBLEMS}.")
    )


def _clear(out: str) -> None:
    """Remove a previous pack's files (``--overwrite``); anything else stays and refuses."""
    foreign = [n for n in os.listdir(out) if not _ours(n)]
    if foreign:
        raise ConfigError(
            f"{out}: --overwrite removes only a shard set, and this folder also holds "
            f"{', '.join(sorted(foreign)[:5])}; choose an empty or new folder"
        )
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _previous_fingerprint(out: str) -> tuple[str, str | None]:
    """``(state, fingerprint)``: state is ``new``, ``complete``, ``unfinished`` or ``foreign``."""
    if not os.path.isdir(out) or not os.listdir(out):
        return "new", None
    if os.path.exists(os.path.join(out, fmt.MANIFEST)):
        return "complete", fmt.read_manifest(out).options.get("fingerprint")
    plan = os.path.join(out, WORK, PLAN)
    if os.path.exists(plan):
        with open(plan, encoding="utf-8") as f:
            return "unfinished", json.load(f)["fingerprint"]
    if all(_ours(n) for n in os.listdir(out)) and os.path.isdir(os.path.join(out, WORK)):
        return "unplanned", None  # killed while scanning: nothing decoded yet
    return "foreign", None


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(keys) or "the sources' options"


# ------------------------------------------------------------------------ worker

_READERS: dict[str, Any] = {}
_COUNTER: Any = None


def _reader(unit: dict[str, Any]) -> Any:
    from biovfm_core.data.catalog import SourceSpec

    key = json.dumps(unit, sort_keys=True, default=str)
    reader = _READERS.get(key)
    if reader is None:
        fields = {k: v for k, v in unit.items() if k in SourceSpec.__dataclass_fields__}
        reader = _READERS[key] = SourceSpec(**fields).build_reader()
    return reader


def resize_stored(stored: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink so the longer side is ``max_side`` (area averaging), keeping the dtype."""
    h, w = stored.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return stored
    import cv2

    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    out = cv2.resize(stored, size, interpolation=cv2.INTER_AREA)
    if stored.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
        out = out[..., None]
    return out


def _item(record: Any, label: int, image: np.ndarray, encoding: str, max_side: int | None):
    stored, scale, offset = fmt.to_stored(image)
    stored = resize_stored(stored, max_side)
    return {
        "image": fmt.encode(stored, encoding),
        "scale": float(scale),
        "offset": float(offset),
        "uri": record.uri,
        "source": record.source,
        "modality": record.modality,
        "anatomy": record.anatomy,
        "label": int(label),
    }


def _init_worker(counter: Any) -> None:
    global _COUNTER
    _COUNTER = counter
    # A forked worker keeps the parent's readers, whose open files it must not share.
    _READERS.clear()


def _pack_part(job: dict[str, Any], tick: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Decode and write one part; the part exists only once it is complete."""
    import warnings
    from contextlib import redirect_stdout

    from litdata.streaming.writer import BinaryWriter

    part, parts_dir = job["part"], job["parts_dir"]
    final = os.path.join(parts_dir, f"{part:06d}")
    tmp = f"{final}.tmp{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    failed: list[int] = []
    problems: list[list[str]] = []
    n = 0
    # litdata prints the inferred item format once per writer and warns about items
    # larger than a chunk; neither concerns the user.
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", UserWarning)
        writer = BinaryWriter(
            tmp, chunk_bytes=job["chunk_bytes"], serializers=fmt.writer_serializers()
        )
        for row, record, label, unit in job["rows"]:
            try:
                image = _reader(job["units"][unit]).load(record)
                item = _item(record, label, np.asarray(image), job["encoding"], job["max_side"])
            except BadImageError as exc:
                failed.append(row)
                problems.append([record.source, exc.path, exc.reason])
            except Exception as exc:  # a reader's own bug on one file must not stop 21M
                failed.append(row)
                problems.append([record.source, record.uri, f"{type(exc).__name__}: {exc}"])
            else:
                writer.add_item(n, item)
                n += 1
            if tick is not None:
                tick(1)
            elif _COUNTER is not None:
                with _COUNTER.get_lock():
                    _COUNTER.value += 1
        writer.done()
    chunks: list[dict[str, Any]] = []
    config: dict[str, Any] | None = None
    for name in glob.glob(os.path.join(tmp, "*.index.json")):
        with open(name, encoding="utf-8") as f:
            meta = json.load(f)
        chunks, config = meta["chunks"], meta["config"]
    nbytes = sum(os.path.getsize(os.path.join(tmp, c["filename"])) for c in chunks)
    info = {
        "part": part,
        "images": n,
        "failed": failed,
        "problems": problems,
        "bytes": nbytes,
        "chunks": chunks,
        "config": config,
    }
    write_atomic(Path(tmp) / PART_META, json.dumps(info).encode("utf-8"))
    try:
        os.rename(tmp, final)
    except OSError:
        # Another process (a worker orphaned by a killed pack) finished it first.
        shutil.rmtree(tmp, ignore_errors=True)
    return {"part": part, "images": n, "failed": len(failed)}


# ----------------------------------------------------------------------- progress


class _Progress:
    """``packed N/M images (x%), R images/s, ETA ...`` every ``every`` seconds."""

    def __init__(
        self,
        total: int,
        done: int,
        say: Callable[[str], None] | None,
        every: float,
        clock: Callable[[], float],
    ) -> None:
        self.total, self.start_done, self.done = total, done, done
        self.say, self.every, self.clock = say, every, clock
        self.started = self.last = clock()

    def line(self) -> str:
        elapsed = self.clock() - self.started
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        share = self.done / self.total if self.total else 1.0
        return (
            f"packed {self.done}/{self.total} images ({share:.0%}), {rate:.1f} images/s, "
            f"ETA {format_duration(eta) if math.isfinite(eta) else '?'}"
        )

    def update(self, done: int, *, force: bool = False) -> None:
        self.done = done
        now = self.clock()
        if self.say is not None and (force or now - self.last >= self.every):
            self.last = now
            self.say(self.line())


# --------------------------------------------------------------------------- plan


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


def _make_plan(
    sources: Sequence[Any],
    units: Sequence[Any],
    settings: dict[str, Any],
    fingerprint: str,
    work: str,
    *,
    stop_on_error: bool,
    say: Callable[[str], None] | None,
) -> tuple[Any, dict[str, Any]]:
    from biovfm_core.data.index import IndexBuilder
    from biovfm_core.data.scan import describe, scan_sources

    index, report = scan_sources(units, progress=say, stop_on_error=stop_on_error)
    if any(u.name not in {s.name for s in sources} for u in units):
        # Rows of NAME@PLANE units go back under NAME (same order, rows contiguous).
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
        index = builder.build()
        for st in report.sources:
            st.name = _source_of(st.name)
        report.problems = [(_source_of(a), b, c) for a, b, c in report.problems]
    # Provenance keeps each source as the user gave it (not one plane's axis).
    for spec in sources:
        meta = index.sources_meta.get(spec.name)
        if meta is not None:
            meta["options"] = dict(spec.options)
            if any(
                u.options.get("axis") != spec.options.get("axis")
                for u in units
                if _source_of(u.name) == spec.name
            ):
                meta["planes"] = list(settings["planes"])
    starts = np.cumsum([0] + [s.found for s in report.sources]).tolist()
    statuses = _merge_statuses(report.sources)
    # Missing and failed sources are listed with the bad files, so the problem list
    # names everything the shards lack.
    problems = list(dict.fromkeys(tuple(p) for p in report.problems))
    by_name = {s.name: s for s in report.sources}
    for st in statuses:
        if st["status"] in ("missing", "error"):
            problems.append((st["name"], st["path"], describe(by_name[st["name"]])))
    plan = {
        "fingerprint": fingerprint,
        "settings": settings,
        "units": [_unit_dict(u) for u in units],
        "unit_starts": starts,
        "rows": len(index),
        "statuses": statuses,
        "scan_problems": [list(p) for p in problems],
    }
    os.makedirs(work, exist_ok=True)
    index.save(os.path.join(work, PLAN_INDEX))
    write_atomic(Path(work) / PLAN, json.dumps(plan, indent=1).encode("utf-8"))
    return index, plan


# ------------------------------------------------------------------------- finish


def _merged_config(configs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    base: dict[str, Any] | None = None
    for cfg in configs:
        if base is None:
            base = dict(cfg)
            continue
        body = {k: v for k, v in cfg.items() if k != "types"}
        if body != {k: v for k, v in base.items() if k != "types"}:
            raise BiovfmError(f"shard parts were written with different litdata settings: {cfg}")
        if cfg.get("types") != base.get("types"):
            from litdata.streaming.writer import fuse_schema_json

            base["types"] = fuse_schema_json(base.get("types"), cfg.get("types"))
    return base


def _finish(out: str, plan_index: Any, plan: dict[str, Any], n_parts: int) -> dict[str, Any]:
    parts_dir = os.path.join(out, WORK, PARTS)
    chunks: list[dict[str, Any]] = []
    configs: list[dict[str, Any]] = []
    failed: list[int] = []
    problems: list[list[str]] = [list(p) for p in plan["scan_problems"]]
    nbytes = 0
    for part in range(n_parts):
        folder = os.path.join(parts_dir, f"{part:06d}")
        with open(os.path.join(folder, PART_META), encoding="utf-8") as f:
            info = json.load(f)
        failed.extend(info["failed"])
        problems.extend(info["problems"])
        nbytes += info["bytes"]
        if info["config"]:
            configs.append(info["config"])
        for j, chunk in enumerate(info["chunks"]):
            # Renamed, never copied; a rerun after a kill here finds it already moved.
            name = f"chunk-{part}-{j}.bin"
            src, dst = os.path.join(folder, chunk["filename"]), os.path.join(out, name)
            if os.path.exists(src):
                os.replace(src, dst)
            elif not os.path.exists(dst):
                raise BiovfmError(f"{out}: chunk {chunk['filename']} of part {part} is lost")
            chunks.append({**chunk, "filename": name})
    config = _merged_config(configs)
    keep = np.ones(len(plan_index), dtype=bool)
    keep[np.asarray(failed, dtype=np.int64)] = False
    final = plan_index.select(np.flatnonzero(keep))
    items = sum(int(c["chunk_size"]) for c in chunks)
    if items != len(final):
        raise BiovfmError(f"{out}: chunks hold {items} images but {len(final)} are indexed")
    if not chunks:
        raise ConfigError(f"{out}: no image could be packed ({len(problems)} problems)")
    index_json = {"chunks": chunks, "config": config, "updated_at": str(time.time())}
    write_atomic(Path(out) / fmt.LITDATA_INDEX, json.dumps(index_json, sort_keys=True).encode())
    final.save(os.path.join(out, fmt.INDEX))
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["source", "path", "reason"])
    w.writerows(problems)
    write_atomic(Path(out) / fmt.PROBLEMS, text.getvalue().encode("utf-8", "surrogateescape"))
    import litdata

    counts = final.counts("source")
    manifest = fmt.Manifest(
        encoding=plan["settings"]["encoding"],
        images=len(final),
        sources={s: counts.get(s, 0) for s in final.sources},
        options={
            **plan["settings"],
            "fingerprint": plan["fingerprint"],
            "problems": len(problems),
            "bytes": nbytes,
            "chunks": len(chunks),
        },
        litdata_version=litdata.__version__,
    )
    write_atomic(Path(out) / fmt.MANIFEST, json.dumps(manifest.to_json(), indent=1).encode())
    shutil.rmtree(os.path.join(out, WORK), ignore_errors=True)
    return {"images": len(final), "problems": len(problems), "bytes": nbytes, "chunks": len(chunks)}


# --------------------------------------------------------------------------- pack


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def pack(
    data: Sequence[str],
    out: str,
    *,
    workers: int | None = None,
    encoding: str = "png",
    max_side: int | None = None,
    planes: str | Iterable[str] = ("axial",),
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    part_size: int = DEFAULT_PART_SIZE,
    dataset_options: dict[str, Any] | None = None,
    root: str | None = None,
    overwrite: bool = False,
    allow_failed_sources: bool = False,
    progress: Callable[[str], None] | None = None,
    progress_every: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
) -> PackReport:
    """Pack ``data`` (``--data`` strings: ``KIND:PATH``, a catalog YAML, ``biovfm21m``)
    into the shard folder ``out``; rerun the same call to resume a killed pack.

    Missing sources are reported and left out. A source whose reader fails stops the
    pack before anything is decoded, unless ``allow_failed_sources``.
    """
    from biovfm_core.data.catalog import resolve_data
    from biovfm_core.data.index import SampleIndex

    t0 = clock()
    say = progress
    if encoding not in fmt.ENCODINGS:
        raise ConfigError(f"--encoding must be one of {', '.join(fmt.ENCODINGS)}, not {encoding!r}")
    if max_side is not None and max_side < 1:
        raise ConfigError(f"--max-side must be a positive number of pixels, not {max_side}")
    for flag, value in (("--workers", workers), ("--part-size", part_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, not {value}")
    if chunk_bytes < 1:
        raise ConfigError(f"--chunk-bytes must be positive, not {chunk_bytes}")
    planes = parse_planes(planes)
    workers = workers or default_workers()
    out = os.path.abspath(os.path.expanduser(out))

    sources, _ = resolve_data(data, root=root, options=dataset_options)
    units = _units(sources, planes)
    settings = {
        "data": list(data),
        "encoding": encoding,
        "max_side": max_side,
        "planes": list(planes),
        "part_size": part_size,
        "chunk_bytes": chunk_bytes,
    }
    fingerprint = _fingerprint(
        {"format": fmt.VERSION, **settings, "units": [_unit_dict(u) for u in units]}
    )
    state, previous = _previous_fingerprint(out)
    if state == "complete" and previous == fingerprint and not overwrite:
        shutil.rmtree(os.path.join(out, WORK), ignore_errors=True)
        m = fmt.read_manifest(out)
        return PackReport(
            out=out,
            images=m.images,
            problems=int(m.options.get("problems", 0)),
            bytes=int(m.options.get("bytes", 0)),
            chunks=int(m.options.get("chunks", 0)),
            seconds=clock() - t0,
            problems_file=os.path.join(out, fmt.PROBLEMS),
            already_complete=True,
        )
    if state in ("complete", "unfinished") and previous != fingerprint and not overwrite:
        what = "a complete shard set" if state == "complete" else "an unfinished pack"
        old: dict[str, Any] = {}
        if state == "unfinished":
            with open(os.path.join(out, WORK, PLAN), encoding="utf-8") as f:
                old = json.load(f)["settings"]
        else:
            old = {k: v for k, v in fmt.read_manifest(out).options.items() if k in settings}
        raise ConfigError(
            f"{out} holds {what} made with other data or options (differs in: "
            f"{_differences(old, settings)}); rerun its own command to "
            f"{'resume it' if state == 'unfinished' else 'keep it'}, or pass --overwrite "
            f"to replace it"
        )
    if state == "foreign" and not overwrite:
        raise ConfigError(
            f"{out}: folder is not empty and holds no shard set; choose an empty or new "
            f"folder (or --overwrite to replace a shard set)"
        )
    if overwrite and os.path.isdir(out):
        _clear(out)
    elif state == "unplanned":
        shutil.rmtree(os.path.join(out, WORK))
    work = os.path.join(out, WORK)
    parts_dir = os.path.join(work, PARTS)
    os.makedirs(out, exist_ok=True)

    resumed = os.path.exists(os.path.join(work, PLAN))
    if resumed:
        with open(os.path.join(work, PLAN), encoding="utf-8") as f:
            plan = json.load(f)
        plan_index = SampleIndex.load(os.path.join(work, PLAN_INDEX))
        if say:
            say(f"resuming the unfinished pack in {out} ({plan['rows']} images planned)")
    else:
        plan_index, plan = _make_plan(
            sources,
            units,
            settings,
            fingerprint,
            work,
            stop_on_error=not allow_failed_sources,
            say=say,
        )
    n = plan["rows"]
    if n == 0:
        shutil.rmtree(work, ignore_errors=True)
        bad = [f"{s['name']} ({s['status']})" for s in plan["statuses"]]
        raise ConfigError(f"nothing to pack: no usable image in {', '.join(bad)}")
    n_parts = math.ceil(n / part_size)
    os.makedirs(parts_dir, exist_ok=True)
    for name in os.listdir(parts_dir):
        if ".tmp" in name:  # a part a killed run had not finished
            shutil.rmtree(os.path.join(parts_dir, name), ignore_errors=True)
    finished = {
        int(name)
        for name in os.listdir(parts_dir)
        if name.isdigit() and os.path.exists(os.path.join(parts_dir, name, PART_META))
    }
    todo = [p for p in range(n_parts) if p not in finished]
    done_rows = sum(min(part_size, n - p * part_size) for p in finished)
    bar = _Progress(n, done_rows, say, progress_every, clock)
    starts = plan["unit_starts"]
    unit_of = np.searchsorted(np.asarray(starts[1:]), np.arange(n), side="right")
    labels = plan_index.labels

    def job(part: int) -> dict[str, Any]:
        lo, hi = part * part_size, min(n, (part + 1) * part_size)
        return {
            "part": part,
            "parts_dir": parts_dir,
            "units": plan["units"],
            "encoding": encoding,
            "max_side": max_side,
            "chunk_bytes": chunk_bytes,
            "rows": [
                (r, plan_index.record(r), int(labels[r]), int(unit_of[r])) for r in range(lo, hi)
            ],
        }

    t_parts = clock()
    if say and todo:
        say(
            f"packing {n - done_rows} images in {len(todo)} part(s) with "
            f"{min(workers, len(todo))} worker(s)"
            + (f" ({len(finished)} parts already done)" if finished else "")
        )
    if workers == 1 or len(todo) <= 1:
        count = [done_rows]

        def tick(k: int) -> None:
            count[0] += k
            bar.update(count[0])

        _READERS.clear()  # readers of an earlier pack in this process may be stale
        for part in todo:
            _pack_part(job(part), tick)
    else:
        _run_pool(todo, job, min(workers, len(todo)), bar, done_rows)
    if todo:
        bar.update(n, force=True)
    decode_seconds = clock() - t_parts
    packed_now = n - done_rows
    totals = _finish(out, plan_index, plan, n_parts)
    seconds = clock() - t0
    return PackReport(
        out=out,
        images=totals["images"],
        problems=totals["problems"],
        bytes=totals["bytes"],
        chunks=totals["chunks"],
        seconds=seconds,
        parts=n_parts,
        parts_resumed=len(finished),
        packed_now=packed_now,
        decode_seconds=decode_seconds,
        sources=plan["statuses"],
        problems_file=os.path.join(out, fmt.PROBLEMS),
    )


def _run_pool(
    todo: Sequence[int],
    job: Callable[[int], dict[str, Any]],
    workers: int,
    bar: _Progress,
    done_rows: int,
) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # fork keeps readers registered in this process (a plugin added at run time);
    # elsewhere spawn re-imports them from their entry points.
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    # Imported once here: each forked worker would otherwise import litdata (and
    # torch, which it imports) again, seconds per worker.
    import litdata.streaming.writer  # noqa: F401

    counter = ctx.Value("q", 0)
    queue = list(todo)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(counter,)
    ) as ex:
        running = set()
        try:
            while queue or running:
                # Only a few parts' records are in flight: 21M records at once would
                # not fit in memory.
                while queue and len(running) < 2 * workers:
                    running.add(ex.submit(_pack_part, job(queue.pop(0))))
                finished, running = wait(
                    running, timeout=min(1.0, bar.every), return_when=FIRST_COMPLETED
                )
                for fut in finished:
                    fut.result()
                bar.update(done_rows + counter.value)
        except BrokenProcessPool as exc:
            raise BiovfmError(
                "a pack worker process died (out of memory, or a decoder crashed); the "
                "parts it finished are kept: run the same command again to resume"
            ) from exc
        except BaseException:
            for fut in running:
                fut.cancel()
            raise
