"""The worker side of a pack: decode one part's rows and write them as litdata chunks.

A part is written into a temporary folder that is renamed when complete, with its
``part.json`` (images written, rows that failed and why, chunk list, litdata config)
inside, so a part folder exists only once its every row is accounted for.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from biovfm_core.errors import BadImageError
from biovfm_core.files import write_atomic

from . import format as fmt

PART_META = "part.json"

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


def init_worker(counter: Any) -> None:
    global _COUNTER
    _COUNTER = counter
    # A forked worker keeps the parent's readers, whose open files it must not share.
    _READERS.clear()


def fresh_readers() -> None:
    """Forget cached readers: those of an earlier pack in this process may be stale."""
    _READERS.clear()


def pack_part(job: dict[str, Any], tick: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Decode and write one part; the part exists only once it is complete."""
    part, parts_dir = job["part"], job["parts_dir"]
    final = os.path.join(parts_dir, f"{part:06d}")
    tmp = f"{final}.tmp{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        n, failed, problems = _write_rows(job, tmp, tick)
        info = {"part": part, "images": n, "failed": failed, "problems": problems}
        info.update(_written_chunks(tmp))
        write_atomic(Path(tmp) / PART_META, json.dumps(info).encode("utf-8"))
    except BaseException:
        # A disk that filled up (or a stop) leaves no half-written chunk behind; a
        # killed worker's leftovers are removed by the next run instead.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, final)
    except OSError:
        # Another process (a worker orphaned by a killed pack) finished it first.
        shutil.rmtree(tmp, ignore_errors=True)
    return {"part": part, "images": n, "failed": len(failed)}


def _write_rows(
    job: dict[str, Any], tmp: str, tick: Callable[[int], None] | None
) -> tuple[int, list[int], list[list[str]]]:
    """``(images written, failed rows, problems)``; each row counts once on the progress."""
    import warnings
    from contextlib import redirect_stdout

    from litdata.streaming.writer import BinaryWriter

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
                item = fmt.make_item(
                    record, label, np.asarray(image), job["encoding"], job["max_side"]
                )
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
    return n, failed, problems


def _written_chunks(tmp: str) -> dict[str, Any]:
    """The chunk list, total bytes and litdata config of the chunks written in ``tmp``."""
    chunks: list[dict[str, Any]] = []
    config: dict[str, Any] | None = None
    for name in glob.glob(os.path.join(tmp, "*.index.json")):
        with open(name, encoding="utf-8") as f:
            meta = json.load(f)
        chunks, config = meta["chunks"], meta["config"]
    nbytes = sum(os.path.getsize(os.path.join(tmp, c["filename"])) for c in chunks)
    return {"bytes": nbytes, "chunks": chunks, "config": config}
