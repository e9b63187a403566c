from __future__ import annotations

import os

import numpy as np
import pytest

from biovfm_core.data.index import IndexBuilder, SampleIndex
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
