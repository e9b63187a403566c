"""What an output folder already holds, and whether a pack may write into it.

A folder is new, a complete shard set, an unfinished pack (its plan saved), a pack
killed while scanning, or something else; a pack with other data or options never
writes over the first two unless told to (``--overwrite``), and never over the last.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from biovfm_core.errors import ConfigError
from biovfm_core.locks import LOCK_NAME

from . import format as fmt
from .plan import PLAN, WORK


def _ours(name: str) -> bool:
    return (
        name in (fmt.MANIFEST, fmt.INDEX, fmt.LITDATA_INDEX, fmt.PROBLEMS, WORK, LOCK_NAME)
        or (name.startswith("chunk-") and name.endswith(".bin"))
        or name.startswith((f".{fmt.MANIFEST}.", f".{fmt.LITDATA_INDEX}.", ".index-"))
        or name.startswith(f".{fmt.PROBLEMS}.")
    )


def clear(out: str) -> None:
    """Remove a previous pack's files (``--overwrite``); anything else stays and refuses."""
    foreign = [n for n in os.listdir(out) if not _ours(n)]
    if foreign:
        raise ConfigError(
            f"{out}: --overwrite removes only a shard set, and this folder also holds "
            f"{', '.join(sorted(foreign)[:5])}; choose an empty or new folder"
        )
    for name in _entries(out):
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _entries(out: str) -> list[str]:
    """What ``out`` holds besides the lock of the pack now writing it (this one's)."""
    return [n for n in os.listdir(out) if n != LOCK_NAME]


def previous_fingerprint(out: str) -> tuple[str, str | None]:
    """``(state, fingerprint)``: state is ``new``, ``complete``, ``unfinished``,
    ``unplanned`` (killed while scanning) or ``foreign``."""
    if not os.path.isdir(out) or not _entries(out):
        return "new", None
    if os.path.exists(os.path.join(out, fmt.MANIFEST)):
        return "complete", fmt.read_manifest(out).options.get("fingerprint")
    plan = os.path.join(out, WORK, PLAN)
    if os.path.exists(plan):
        with open(plan, encoding="utf-8") as f:
            return "unfinished", json.load(f)["fingerprint"]
    if all(_ours(n) for n in _entries(out)) and os.path.isdir(os.path.join(out, WORK)):
        return "unplanned", None  # killed while scanning: nothing decoded yet
    return "foreign", None


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(keys) or "the sources' options"


def refuse_conflicts(
    out: str,
    state: str,
    previous: str | None,
    fingerprint: str,
    settings: dict[str, Any],
    overwrite: bool,
) -> None:
    """A ``ConfigError`` unless packing with ``settings`` may go on in ``out``."""
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


def prepare(out: str, state: str, overwrite: bool) -> None:
    """Empty ``out`` for ``--overwrite``, or drop the work folder a killed scan left."""
    if overwrite and os.path.isdir(out):
        clear(out)
    elif state == "unplanned":
        shutil.rmtree(os.path.join(out, WORK))
