"""Read back what an offline W&B run logged, without W&B's servers.

``history(RUN)`` returns every logged step of the offline run under ``RUN/wandb``:
what ``biovfm_core.testing.check_logger`` and biovfm's own tests compare with what
was sent. The ``.wandb`` file is a LevelDB-style log of protobuf ``Record`` messages
(wandb/sdk/internal/datastore.py in wandb < 0.19: 32 KiB blocks, a 7-byte file
header, 7-byte record headers, records split FIRST/MIDDLE/LAST across blocks).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> list[bytes]:
    """The raw records of one ``run-*.wandb`` file."""
    raw = Path(path).read_bytes()
    if raw[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (no :W&B header)")
    found: list[bytes] = []
    pending = b""
    pos = _HEADER
    while pos + _HEADER <= len(raw):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + _HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        data = raw[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            found.append(data)
        elif kind == _FIRST:
            pending = data
        elif kind == _MIDDLE:
            pending += data
        elif kind == _LAST:
            found.append(pending + data)
            pending = b""
    return found


def history(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Step -> the values logged at that step, over every offline run in ``RUN/wandb``."""
    from wandb.proto import wandb_internal_pb2 as pb

    steps: dict[int, dict[str, Any]] = {}
    for path in sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")):
        for data in records(path):
            record = pb.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") != "history":
                continue
            values = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.history.item
            }
            step = int(values.get("_step", record.history.step.num))
            steps.setdefault(step, {}).update(
                {k: v for k, v in values.items() if not k.startswith("_")}
            )
    return steps
