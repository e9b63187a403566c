from __future__ import annotations

import os

import numpy as np
import pytest

from biovfm_core.data.index import IndexBuilder, SampleIndex, build_index
from biovfm_core.errors import ConfigError
from biovfm_core.protocols import SampleRecord


def _records():
    return [
        SampleRecord("/d/a/x1.png", "A", "xray", "chest", 3),
        SampleRecord("/d/a/x2.png", "A", "xray", "chest", None),
        SampleRecord("/d/m.npz#train/17", "M", "xray", "chest", (1, 0, 1)),
        SampleRecord("/d/b/ü.dcm#frame=2", "B", "ct", "head", None),
        SampleRecord("rel.png", "B", "mr", "unknown", 0),
    ]


def test_roundtrip_columns_and_atomic_save(tmp_path):
    b = IndexBuilder()
    b.add_source("A", reader="folder", path="/d/a")
    for r in _records():
        b.add(r)
    index = b.build()
    assert list(index) == _records()
    path = index.save(tmp_path / "idx.npz")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    loaded = SampleIndex.load(path)
    assert list(loaded) == _records()
    assert loaded.sources_meta["A"]["reader"] == "folder"
    assert loaded.counts("modality") == {"xray": 3, "ct": 1, "mr": 1}
    assert loaded.counts("source") == {"A": 2, "B": 2, "M": 1}
    assert loaded._source.dtype == np.int16 and loaded._names.dtype == np.uint8

    view = loaded.select(np.array([4, 2]))
    assert [r.uri for r in view] == ["rel.png", "/d/m.npz#train/17"]
    assert list(SampleIndex.load(view.save(tmp_path / "v.npz"))) == [_records()[4], _records()[2]]


def test_load_rejects_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(ConfigError, match="not a biovfm index"):
        SampleIndex.load(tmp_path / "x.npz")


def test_hundred_thousand_entries_fast(tmp_path):
    b = IndexBuilder()
    for i in range(100_000):
        b.add(SampleRecord(f"/data/s{i % 7}/img_{i:07d}.png", f"s{i % 7}", "ct", "chest"))
    index = b.build()
    assert index.nbytes() <= 100_000 * 41  # ~17 bytes of name + 24 of columns
    loaded = SampleIndex.load(index.save(tmp_path / "big.npz"))
    assert loaded.uri(99_999) == "/data/s4/img_0099999.png"


def test_concatenated_indexes_keep_every_record_in_order_with_merged_tables():
    from biovfm_core.data.index import concat_indexes

    first = build_index(
        [
            SampleRecord("/a/x1.png", "s1", "ct", "chest", 1),
            SampleRecord("/b/x2.png", "s1", "mr", "head", None),
            SampleRecord("/b/x3.png", "s1", "mr", "knee", 2),
        ]
    )
    second = build_index(
        [
            SampleRecord("/b/y1.png", "s2", "xray", "chest", 0),
            SampleRecord("/c/y\udcff.png", "s3", "ct", "liver", 1),  # a non-UTF-8 name
        ]
    )
    second.sources_meta["s2"]["path"] = "/b"
    view = first.select(np.array([2, 0]))  # a subset view is taken as it stands
    joined = concat_indexes([view, second])
    assert list(joined) == list(view) + list(second)
    assert joined.sources == ["s1", "s2", "s3"] and joined.sources_meta["s2"]["path"] == "/b"
    assert joined.counts("anatomy") == {"chest": 2, "knee": 1, "liver": 1}
    assert joined.counts("modality") == {"ct": 2, "mr": 1, "xray": 1}
