from __future__ import annotations

import numpy as np
import pytest

from biovfm_core.data.index import IndexBuilder
from biovfm_core.data.subsets import fraction_rows, subset
from biovfm_core.errors import ConfigError
from biovfm_core.protocols import SampleRecord


@pytest.fixture(scope="module")
def index():
    b = IndexBuilder()
    sizes = {"big": 50_000, "mid": 8_000, "small": 2_000}
    mods = {"big": "xray", "mid": "ct", "small": "mr"}
    for name, n in sizes.items():
        for i in range(n):
            b.add(SampleRecord(f"/{name}/{i}.png", name, mods[name]))
    return b.build()


def test_fraction_is_stratified_nested_and_seeded(index):
    one = set(fraction_rows(index, 0.01, seed=0))
    ten = set(fraction_rows(index, 0.10, seed=0))
    assert one < ten  # nested
    assert len(one) == 500 + 80 + 20 and len(ten) == 5000 + 800 + 200
    counts = index.select(np.array(sorted(ten))).counts("source")
    assert counts == {"big": 5000, "mid": 800, "small": 200}  # each source keeps its share
    assert set(fraction_rows(index, 0.10, seed=0)) == ten
    assert set(fraction_rows(index, 0.10, seed=1)) != ten
    assert len(fraction_rows(index, 1.0)) == len(index)


def test_modality_subsets(index):
    assert subset(index, modalities="ct").counts("modality") == {"ct": 8000}
    mix = subset(index, modalities=["CT", "MRI"], fraction=0.5)
    assert mix.counts("source") == {"mid": 4000, "small": 1000}
    assert len(subset(index, modalities="all")) == len(index)
    with pytest.raises(ConfigError):
        subset(index, modalities="us")
    with pytest.raises(ConfigError):
        subset(index, fraction=0.0)
