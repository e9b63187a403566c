"""A tiny test-side shard writer following ``biovfm_core.data.shards.format``.

It writes what the packer writes (litdata chunks, ``biovfm-index.npz`` with row i ==
item i, the manifest last) from images the test hands it, so the training tests do
not depend on ``biovfm data pack``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from biovfm_core.data.index import IndexBuilder
from biovfm_core.data.shards import format as fmt
from biovfm_core.protocols import SampleRecord


def write_shards(
    folder: Path,
    items: Sequence[tuple[SampleRecord, np.ndarray]],
    *,
    encoding: str = "png",
    chunk_size: int = 8,
    sources_meta: dict[str, dict] | None = None,
) -> Path:
    """Pack ``(record, image)`` pairs, in order, into a shard folder; return it."""
    import litdata
    from litdata.streaming.writer import BinaryWriter

    folder.mkdir(parents=True, exist_ok=True)
    writer = BinaryWriter(str(folder), chunk_size=chunk_size, serializers=fmt.writer_serializers())
    builder = IndexBuilder()
    for name, meta in (sources_meta or {}).items():
        builder.add_source(name, **meta)
    counts: dict[str, int] = {}
    for i, (record, image) in enumerate(items):
        stored, scale, offset = fmt.to_stored(image)
        label = record.label
        if isinstance(label, tuple):
            label = sum(int(v) << b for b, v in enumerate(label))
        writer.add_item(
            i,
            {
                "image": fmt.encode(stored, encoding),
                "scale": float(scale),
                "offset": float(offset),
                "uri": record.uri,
                "source": record.source,
                "modality": record.modality,
                "anatomy": record.anatomy,
                "label": -1 if label is None else int(label),
            },
        )
        builder.add(record)
        counts[record.source] = counts.get(record.source, 0) + 1
    writer.done()
    writer.merge()
    builder.build().save(folder / fmt.INDEX)
    manifest = fmt.Manifest(
        encoding=encoding,
        images=len(items),
        sources=counts,
        options={"test_fixture": True},
        litdata_version=litdata.__version__,
    )
    (folder / fmt.MANIFEST).write_text(json.dumps(manifest.to_json()))
    return folder


def synthetic_items(
    n: int, *, sources: Sequence[str] = ("alpha", "beta"), size: int = 20
) -> list[tuple[SampleRecord, np.ndarray]]:
    """``n`` small random images spread over ``sources`` and three modalities:
    int16 CT (Hounsfield-like values) for every third image, uint8 RGB otherwise."""
    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        source = sources[i % len(sources)]
        if i % 3 == 0:
            image = rng.integers(-1000, 2000, (size, size)).astype(np.int16)
            modality = "ct"
        else:
            image = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
            modality = "dermoscopy" if i % 3 == 1 else "microscopy"
        record = SampleRecord(
            uri=f"/orig/{source}/img_{i:04d}.png",
            source=source,
            modality=modality,
            anatomy="skin",
            label=None,
        )
        out.append((record, image))
    return out
