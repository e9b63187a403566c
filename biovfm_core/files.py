"""Files that are whole or absent: a reader never sees a half-written config, index,
result table or export, whatever kills the writer."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def chmod_as_open(fd: int) -> None:
    """Give a ``mkstemp`` file (0600) the mode a plain ``open()`` would (0666 less the
    umask), so a team can read the configs, results, indexes and exports one member
    wrote."""
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        chmod_as_open(fd)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
