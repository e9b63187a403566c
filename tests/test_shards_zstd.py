"""The zstd shard encoding: every kind of image comes back bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from shards_fixture import write_shards

from biovfm_core.data.shards import format as fmt
from biovfm_core.data.shards.reader import ShardReader
from biovfm_core.data.shards.zstd_codec import MAGIC, decode_zstd, encode_zstd
from biovfm_core.errors import BadImageError
from biovfm_core.protocols import SampleRecord

RNG = np.random.default_rng(28)
IMAGES = {
    "uint8 gray": RNG.integers(0, 256, (9, 7)).astype(np.uint8),
    "uint8 rgb": RNG.integers(0, 256, (9, 7, 3)).astype(np.uint8),
    "uint16": RNG.integers(0, 65536, (6, 5)).astype(np.uint16),
    "int16 HU": RNG.integers(-1024, 3072, (8, 8)).astype(np.int16),
    "float32 MR": (RNG.random((5, 6)) * 100 - 20).astype(np.float32),
    "float32 whole HU": RNG.integers(-1024, 2000, (7, 4)).astype(np.float32),
}


def test_zstd_is_the_default_encoding():
    assert fmt.DEFAULT_ENCODING == "zstd" and fmt.ENCODINGS[0] == "zstd"


@pytest.mark.parametrize("kind", list(IMAGES))
def test_zstd_shards_round_trip_bit_exactly(tmp_path, kind):
    image = IMAGES[kind]
    record = SampleRecord(f"/o/{kind}.x", "s", "ct", "chest", None)
    folder = write_shards(tmp_path / "s", [(record, image)], encoding="zstd")
    got = ShardReader(str(folder)).load_row(0, record.uri)
    assert got.shape == image.shape
    if image.dtype == np.int16:
        # Shifted into uint16 on disk; the reader gives Hounsfield units back as float32.
        assert np.array_equal(got.astype(np.int64), image.astype(np.int64))
    else:
        assert got.dtype == image.dtype
        assert got.tobytes() == image.tobytes()


def test_whole_valued_floats_are_stored_as_uint16_and_other_floats_as_float32():
    whole, scale, offset = fmt.to_stored(IMAGES["float32 whole HU"], keep_float=True)
    assert whole.dtype == np.uint16 and (scale, offset) == (
        1.0,
        float(IMAGES["float32 whole HU"].min()),
    )
    kept, scale, offset = fmt.to_stored(IMAGES["float32 MR"], keep_float=True)
    assert kept.dtype == np.float32 and (scale, offset) == (1.0, 0.0)
    # Byte planes: the high bytes of 12-bit CT values are small, so the item shrinks.
    ct = RNG.integers(0, 4096, (64, 64)).astype(np.uint16)
    item = encode_zstd(ct)
    assert item.startswith(MAGIC) and len(item) < ct.nbytes * 0.9
    assert np.array_equal(decode_zstd(item), ct)


def test_a_damaged_zstd_item_is_a_bad_image_naming_its_file():
    item = bytearray(encode_zstd(IMAGES["uint16"]))
    item[-6:] = b"\0" * 6
    with pytest.raises(BadImageError, match="zstd item in shard does not decode") as exc:
        fmt.decode(bytes(item), "zstd", "/o/ct.dcm")
    assert "/o/ct.dcm" in str(exc.value)
    with pytest.raises(BadImageError, match="bad magic"):
        fmt.decode(b"\x89PNG....", "zstd", "/o/ct.dcm")
