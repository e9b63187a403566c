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
    for record, _ in items:
        builder.add(record)
    index = builder.build()  # its label codes are what the items store
    for i, (record, image) in enumerate(items):
        writer.add_item(i, fmt.make_item(record, int(index.labels[i]), image, encoding))
    counts = index.counts("source")
    writer.done()
    writer.merge()
    index.save(folder / fmt.INDEX)
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
