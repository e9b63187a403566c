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

This module runs those steps and reports; ``plan`` scans, ``folder_state`` judges
what the output folder already holds, ``part_writer`` is the worker side and
``finish`` merges the parts.

One pack at a time writes a folder: the first takes its lock (``.lock``, the lock a
run folder has), and a second is refused before it reads or writes anything there;
two at once lost one set, mixed rows of both, or crashed on each other's parts.
A folder that cannot be written (read-only, disk full) stops the pack with one line
naming it; what was finished stays, and the same command resumes after the fix.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biovfm_core.durations import format_duration
from biovfm_core.errors import BiovfmError, ConfigError
from biovfm_core.locks import RunLock

from . import format as fmt
from .finish import finish
from .folder_state import prepare, previous_fingerprint, refuse_conflicts
from .format import resize_stored
from .part_writer import PART_META, fresh_readers, init_worker, pack_part
from .plan import (
    PARTS,
    PLAN,
    WORK,
    fingerprint_of,
    load_plan,
    make_plan,
    parse_planes,
    plan_units,
    unit_dict,
)

__all__ = ["PackReport", "default_workers", "pack", "parse_planes", "resize_stored"]

DEFAULT_CHUNK_BYTES = 64 << 20  # litdata's recommended chunk size
DEFAULT_PART_SIZE = 4096  # images per part: the unit of work and of resume


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


class PackLock(RunLock):
    """One ``biovfm data pack`` per output folder: the run folder's lock, its own words."""

    what = "shard folder"

    def _busy_message(self, holder: dict) -> str:
        return (
            f"shard folder {self.run_dir} is being packed by {self.holder_text(holder)} (lock "
            f"file {self.path}); this pack stops without reading or writing there, since two "
            "packs in one folder would lose or mix images. Wait for that pack to end and run "
            "this command again (it finds the set complete or resumes it), or pack into "
            "another -o. If that process is gone (another host cannot be checked from here), "
            "delete the lock file."
        )


_FULL = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def _raise_write_error(out: str, exc: OSError) -> None:
    """The one-line error for a folder that cannot take the pack's files; returns for
    an ``OSError`` that is not about writing ``out`` (the caller re-raises it)."""
    name = os.fsdecode(exc.filename) if exc.filename is not None else None
    where = os.path.abspath(name) if name else out
    inside = where == out or where.startswith(out + os.sep)
    what = f"{exc.strerror or exc}" + (f": {name}" if name else "")
    if exc.errno in _FULL:
        raise BiovfmError(
            f"-o {out}: the disk is full ({what}). The parts finished so far are kept and "
            "the unfinished one is redone: free space there (or choose another -o) and run "
            "the same command again; it resumes after the last finished part"
        ) from exc
    if exc.errno in _READ_ONLY and inside:
        raise ConfigError(
            f"-o {out}: cannot write there ({what}); the folder or its file system is "
            "read-only or not yours. Choose a writable folder for -o"
        ) from exc


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def pack(
    data: Sequence[str],
    out: str,
    *,
    workers: int | None = None,
    encoding: str = fmt.DEFAULT_ENCODING,
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

    t0 = clock()
    say = progress
    _check_options(encoding, max_side, workers, part_size, chunk_bytes)
    planes = parse_planes(planes)
    workers = workers or default_workers()
    from biovfm_core.data.catalog import is_url

    if is_url(out):
        raise ConfigError(
            f"-o {out}: pack writes to a local folder (parts are renamed into place, which "
            "object stores cannot do atomically); pack locally, then upload the folder "
            "(e.g. `aws s3 sync`) and train with --data shards:URL"
        )
    out = os.path.abspath(os.path.expanduser(out))

    sources, _ = resolve_data(data, root=root, options=dataset_options)
    try:
        os.makedirs(out, exist_ok=True)  # the lock lives in it
        lock = PackLock(Path(out)).acquire(say or (lambda _: None))
    except OSError as exc:
        _raise_write_error(out, exc)
        raise
    try:
        return _pack_locked(
            data,
            out,
            sources,
            workers=workers,
            encoding=encoding,
            max_side=max_side,
            planes=planes,
            chunk_bytes=chunk_bytes,
            part_size=part_size,
            overwrite=overwrite,
            allow_failed_sources=allow_failed_sources,
            say=say,
            progress_every=progress_every,
            clock=clock,
            t0=t0,
        )
    except OSError as exc:
        _raise_write_error(out, exc)
        raise
    finally:
        lock.release()


def _pack_locked(
    data: Sequence[str],
    out: str,
    sources: Sequence[Any],
    *,
    workers: int,
    encoding: str,
    max_side: int | None,
    planes: tuple[str, ...],
    chunk_bytes: int,
    part_size: int,
    overwrite: bool,
    allow_failed_sources: bool,
    say: Callable[[str], None] | None,
    progress_every: float,
    clock: Callable[[], float],
    t0: float,
) -> PackReport:
    """The pack itself, run while this process holds ``out``'s lock."""
    units = plan_units(sources, planes)
    settings = {
        "data": list(data),
        "encoding": encoding,
        "max_side": max_side,
        "planes": list(planes),
        "part_size": part_size,
        "chunk_bytes": chunk_bytes,
    }
    fingerprint = fingerprint_of(
        {"format": fmt.VERSION, **settings, "units": [unit_dict(u) for u in units]}
    )
    state, previous = previous_fingerprint(out)
    if state == "complete" and previous == fingerprint and not overwrite:
        return _already_complete(out, clock, t0)
    refuse_conflicts(out, state, previous, fingerprint, settings, overwrite)
    prepare(out, state, overwrite)

    plan_index, plan = _plan_or_resume(
        out, sources, units, settings, fingerprint, not allow_failed_sources, say
    )
    n = plan["rows"]
    n_parts = math.ceil(n / part_size)
    parts_dir = os.path.join(out, WORK, PARTS)
    finished = _finished_parts(parts_dir)
    todo = [p for p in range(n_parts) if p not in finished]
    done_rows = sum(min(part_size, n - p * part_size) for p in finished)
    bar = _Progress(n, done_rows, say, progress_every, clock)
    job = _part_jobs(plan, plan_index, parts_dir, part_size, encoding, max_side, chunk_bytes)

    t_parts = clock()
    _run_parts(todo, job, workers, bar, done_rows, len(finished), part_size)
    decode_seconds = clock() - t_parts
    totals = finish(out, plan_index, plan, n_parts)
    return PackReport(
        out=out,
        images=totals["images"],
        problems=totals["problems"],
        bytes=totals["bytes"],
        chunks=totals["chunks"],
        seconds=clock() - t0,
        parts=n_parts,
        parts_resumed=len(finished),
        packed_now=n - done_rows,
        decode_seconds=decode_seconds,
        sources=plan["statuses"],
        problems_file=os.path.join(out, fmt.PROBLEMS),
    )


def _check_options(
    encoding: str, max_side: int | None, workers: int | None, part_size: int, chunk_bytes: int
) -> None:
    if encoding not in fmt.ENCODINGS:
        raise ConfigError(f"--encoding must be one of {', '.join(fmt.ENCODINGS)}, not {encoding!r}")
    if max_side is not None and max_side < 1:
        raise ConfigError(f"--max-side must be a positive number of pixels, not {max_side}")
    for flag, value in (("--workers", workers), ("--part-size", part_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, not {value}")
    if chunk_bytes < 1:
        raise ConfigError(f"--chunk-bytes must be positive, not {chunk_bytes}")


def _already_complete(out: str, clock: Callable[[], float], t0: float) -> PackReport:
    """The report of a finished set packed again with the same data and options."""
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


def _plan_or_resume(
    out: str,
    sources: Sequence[Any],
    units: Sequence[Any],
    settings: dict[str, Any],
    fingerprint: str,
    stop_on_error: bool,
    say: Callable[[str], None] | None,
) -> tuple[Any, dict[str, Any]]:
    """The plan an unfinished pack saved, or a new one; an error if it has no image."""
    work = os.path.join(out, WORK)
    if os.path.exists(os.path.join(work, PLAN)):
        plan_index, plan = load_plan(work)
        if say:
            say(f"resuming the unfinished pack in {out} ({plan['rows']} images planned)")
    else:
        plan_index, plan = make_plan(
            sources, units, settings, fingerprint, work, stop_on_error=stop_on_error, say=say
        )
    if plan["rows"] == 0:
        shutil.rmtree(work, ignore_errors=True)
        bad = [f"{s['name']} ({s['status']})" for s in plan["statuses"]]
        raise ConfigError(f"nothing to pack: no usable image in {', '.join(bad)}")
    return plan_index, plan


def _finished_parts(parts_dir: str) -> set[int]:
    """The parts complete on disk, after removing those a killed run left half-written."""
    os.makedirs(parts_dir, exist_ok=True)
    for name in os.listdir(parts_dir):
        if ".tmp" in name:  # a part a killed run had not finished
            shutil.rmtree(os.path.join(parts_dir, name), ignore_errors=True)
    return {
        int(name)
        for name in os.listdir(parts_dir)
        if name.isdigit() and os.path.exists(os.path.join(parts_dir, name, PART_META))
    }


def _part_jobs(
    plan: dict[str, Any],
    plan_index: Any,
    parts_dir: str,
    part_size: int,
    encoding: str,
    max_side: int | None,
    chunk_bytes: int,
) -> Callable[[int], dict[str, Any]]:
    """``job(part)``: what a worker needs to write that part, built only when submitted."""
    n = plan["rows"]
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

    return job


def _run_parts(
    todo: Sequence[int],
    job: Callable[[int], dict[str, Any]],
    workers: int,
    bar: _Progress,
    done_rows: int,
    n_finished: int,
    part_size: int,
) -> None:
    """Write the ``todo`` parts, in this process when one worker would do."""
    used = min(workers, len(todo))
    if bar.say and todo:
        # A part is written by one worker, so fewer parts than workers leave some idle.
        fewer = (
            f" (of {workers} asked: only {len(todo)} part(s) of up to {part_size} images "
            "to write, one worker each; a smaller --part-size spreads the work)"
            if used < workers
            else ""
        )
        bar.say(
            f"packing {bar.total - done_rows} images in {len(todo)} part(s) with {used} "
            f"worker{'s' if used != 1 else ''}{fewer}"
            + (f" ({n_finished} parts already done)" if n_finished else "")
        )
    if workers == 1 or len(todo) <= 1:
        count = [done_rows]

        def tick(k: int) -> None:
            count[0] += k
            bar.update(count[0])

        fresh_readers()  # readers of an earlier pack in this process may be stale
        for part in todo:
            pack_part(job(part), tick)
    else:
        _run_pool(todo, job, used, bar, done_rows)
    if todo:
        bar.update(bar.total, force=True)


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
        workers, mp_context=ctx, initializer=init_worker, initargs=(counter,)
    ) as ex:
        running = set()
        try:
            while queue or running:
                # Only a few parts' records are in flight: 21M records at once would
                # not fit in memory.
                while queue and len(running) < 2 * workers:
                    running.add(ex.submit(pack_part, job(queue.pop(0))))
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
