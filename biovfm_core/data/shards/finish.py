"""Finishing a pack: its complete parts merged into one litdata dataset.

The parts' chunk files are moved into the top folder (renames, never copies: a
21M-image set is terabytes) and litdata's ``index.json`` lists them in part order,
so litdata item ``i`` is row ``i`` of ``biovfm-index.npz``; then come the problem
list and the manifest, last, whose presence means the set is complete. Every step
can be run again after a kill: a rerun finds moved chunks already in place.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biovfm_core.errors import BiovfmError, ConfigError
from biovfm_core.files import write_atomic

from . import format as fmt
from .part_writer import PART_META
from .plan import PARTS, WORK


@dataclass
class _Parts:
    """What the finished parts hold together, their chunks renamed into the top folder."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    problems: list[list[str]] = field(default_factory=list)
    nbytes: int = 0


def merged_config(configs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
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


def finish(out: str, plan_index: Any, plan: dict[str, Any], n_parts: int) -> dict[str, Any]:
    """Merge the ``n_parts`` finished parts of ``out``'s pack; its totals for the report."""
    parts = _move_parts(out, plan, n_parts)
    config = merged_config(parts.configs)
    keep = np.ones(len(plan_index), dtype=bool)
    keep[np.asarray(parts.failed, dtype=np.int64)] = False
    final = plan_index.select(np.flatnonzero(keep))
    chunks, problems = parts.chunks, parts.problems
    items = sum(int(c["chunk_size"]) for c in chunks)
    if items != len(final):
        raise BiovfmError(f"{out}: chunks hold {items} images but {len(final)} are indexed")
    if not chunks:
        raise ConfigError(f"{out}: no image could be packed ({len(problems)} problems)")
    index_json = {"chunks": chunks, "config": config, "updated_at": str(time.time())}
    write_atomic(Path(out) / fmt.LITDATA_INDEX, json.dumps(index_json, sort_keys=True).encode())
    final.save(os.path.join(out, fmt.INDEX))
    _write_problems(out, problems)
    _write_manifest(out, final, plan, parts)
    shutil.rmtree(os.path.join(out, WORK), ignore_errors=True)
    return {
        "images": len(final),
        "problems": len(problems),
        "bytes": parts.nbytes,
        "chunks": len(chunks),
    }


def _move_parts(out: str, plan: dict[str, Any], n_parts: int) -> _Parts:
    parts_dir = os.path.join(out, WORK, PARTS)
    parts = _Parts(problems=[list(p) for p in plan["scan_problems"]])
    for part in range(n_parts):
        folder = os.path.join(parts_dir, f"{part:06d}")
        with open(os.path.join(folder, PART_META), encoding="utf-8") as f:
            info = json.load(f)
        parts.failed.extend(info["failed"])
        parts.problems.extend(info["problems"])
        parts.nbytes += info["bytes"]
        if info["config"]:
            parts.configs.append(info["config"])
        for j, chunk in enumerate(info["chunks"]):
            # Renamed, never copied; a rerun after a kill here finds it already moved.
            name = f"chunk-{part}-{j}.bin"
            src, dst = os.path.join(folder, chunk["filename"]), os.path.join(out, name)
            if os.path.exists(src):
                os.replace(src, dst)
            elif not os.path.exists(dst):
                raise BiovfmError(f"{out}: chunk {chunk['filename']} of part {part} is lost")
            parts.chunks.append({**chunk, "filename": name})
    return parts


def _write_problems(out: str, problems: Sequence[Sequence[str]]) -> None:
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["source", "path", "reason"])
    w.writerows(problems)
    write_atomic(Path(out) / fmt.PROBLEMS, text.getvalue().encode("utf-8", "surrogateescape"))


def _write_manifest(out: str, final: Any, plan: dict[str, Any], parts: _Parts) -> None:
    import litdata

    counts = final.counts("source")
    manifest = fmt.Manifest(
        encoding=plan["settings"]["encoding"],
        images=len(final),
        sources={s: counts.get(s, 0) for s in final.sources},
        options={
            **plan["settings"],
            "fingerprint": plan["fingerprint"],
            "problems": len(parts.problems),
            "bytes": parts.nbytes,
            "chunks": len(parts.chunks),
        },
        litdata_version=litdata.__version__,
    )
    write_atomic(Path(out) / fmt.MANIFEST, json.dumps(manifest.to_json(), indent=1).encode())
