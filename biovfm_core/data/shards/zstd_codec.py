"""The ``zstd`` shard encoding: one stored array, byte-planed and zstandard-compressed.

Chosen because it reads back faster than every source kind the loader benchmark
covers (benchmarks/README.md, "Shard encodings"): a 512x512 uint16 CT slice
decompresses in a fraction of a millisecond, where its 16-bit PNG takes ~3.9 ms
and pydicom ~1.5 ms to read the slice itself.

Multi-byte samples are split into byte planes before compressing (all high bytes,
then all low bytes; the "shuffle" filter of Blosc and HDF5): the slowly varying
high bytes of 16-bit medical data then compress to almost nothing, which keeps a
set within ~1.5x of PNG's bytes. Undoing it is one numpy transpose.

An item's bytes: ``MAGIC``, one dtype character, the number of dimensions, each
dimension as little-endian uint32, then the zstd frame. Self-describing, so an item
decodes without the manifest's help. Each frame carries zstd's 4-byte checksum, so
a damaged item is refused (a bad image) rather than trained on.
"""

from __future__ import annotations

import struct
import threading

import numpy as np

MAGIC = b"BVZ1"
# Level 3 is zstd's default; decompression speed does not depend on the level, and
# higher levels cost packing time for a few percent of bytes (measured on CT slices).
LEVEL = 3
DTYPES = {"B": np.uint8, "H": np.uint16, "f": np.float32}
_CODES = {np.dtype(v): k for k, v in DTYPES.items()}

# zstd contexts are not thread-safe; one per thread (loader workers are processes,
# but litdata may read chunks from threads).
_local = threading.local()


def _compressor():  # type: ignore[no-untyped-def]
    c = getattr(_local, "compressor", None)
    if c is None:
        import zstandard

        c = _local.compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)
    return c


def _decompressor():  # type: ignore[no-untyped-def]
    d = getattr(_local, "decompressor", None)
    if d is None:
        import zstandard

        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def encode_zstd(stored: np.ndarray) -> bytes:
    """``stored`` (uint8, uint16 or float32) as one self-describing compressed item."""
    arr = np.ascontiguousarray(stored)
    code = _CODES.get(arr.dtype.newbyteorder("=") if arr.dtype.byteorder != "|" else arr.dtype)
    if code is None:
        raise ValueError(f"zstd shard items hold uint8, uint16 or float32, not {arr.dtype}")
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    width = arr.dtype.itemsize
    raw = _to_planes(arr.view(np.uint8).reshape(-1, width)) if width > 1 else arr.tobytes()
    header = MAGIC + code.encode() + struct.pack(f"<B{arr.ndim}I", arr.ndim, *arr.shape)
    return header + _compressor().compress(raw)


def decode_zstd(data: bytes | memoryview) -> np.ndarray:
    """An item of ``encode_zstd`` back to its array, bit for bit; ``ValueError`` if not one."""
    view = memoryview(data)
    if bytes(view[:4]) != MAGIC:
        raise ValueError("not a zstd shard item (bad magic)")
    dtype = DTYPES.get(chr(view[4]))
    if dtype is None:
        raise ValueError(f"zstd shard item has unknown dtype code {chr(view[4])!r}")
    ndim = view[5]
    shape = struct.unpack_from(f"<{ndim}I", view, 6)
    count = int(np.prod(shape, dtype=np.int64))
    width = np.dtype(dtype).itemsize
    try:
        raw = _decompressor().decompress(view[6 + 4 * ndim :], max_output_size=count * width)
    except Exception as exc:  # zstandard.ZstdError: a damaged frame
        raise ValueError(f"zstd frame does not decompress ({exc})") from exc
    if len(raw) != count * width:
        raise ValueError(
            f"zstd item holds {len(raw)} bytes, its shape {shape} needs {count * width}"
        )
    planes = np.frombuffer(raw, np.uint8).reshape(width, count)
    if width == 1:
        return planes[0].reshape(shape)
    # Column-by-column copies: 0.17 ms for a 512x512 uint16 slice, against 2.1 ms
    # for numpy's transpose of the (2, n) planes (measured on this project's host).
    out = np.empty((count, width), np.uint8)
    for j in range(width):
        out[:, j] = planes[j]
    little = np.dtype(dtype).newbyteorder("<")
    return out.view(little).reshape(shape).astype(dtype, copy=False)


def _to_planes(samples: np.ndarray) -> bytes:
    """``(n, width)`` bytes of little-endian samples as ``width`` planes of ``n``."""
    planes = np.empty((samples.shape[1], samples.shape[0]), np.uint8)
    for j in range(samples.shape[1]):
        planes[j] = samples[:, j]
    return planes.tobytes()
