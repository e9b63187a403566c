"""What a shard folder holds, and how one image is stored in it.

A shard folder is a plain litdata dataset (``index.json`` plus ``chunk-*.bin``;
``litdata.StreamingDataset(folder)`` reads it with no biovfm installed) with two
files of ours beside it:

- ``biovfm-index.npz``: a ``SampleIndex`` whose row ``i`` is litdata item ``i``:
  the image's original uri (file and slice), source, modality, anatomy and label.
  Opening a shard set reads this one columnar file, never the chunks, so 21M
  images open in seconds and subsets are chosen without touching pixels.
- ``biovfm-shards.json``: the manifest (format version, encoding, what was packed,
  how many images). It is written last, so its presence means the set is complete.

One item is a dict: ``image`` (zstd-compressed array bytes, PNG bytes or a raw
array, per the manifest's ``encoding``), ``scale`` and ``offset`` (stored value × scale + offset gives the
reader's value back; 1 and 0 for data stored as it was), and the metadata columns
(``uri``, ``source``, ``modality``, ``anatomy``, ``label``: -1 none, a class, or a
multi-label bitmask) so the chunks are usable on their own.

Depth is kept: uint8 stays uint8; 16-bit data (CT in Hounsfield units, MR, X-ray)
is stored as uint16, signed integers shifted into range, and non-integer values
spread over the 16-bit range with their scale and offset recorded. Windowing is
left to the modality's augmentation recipe, as it is for the original files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from biovfm_core.errors import BadImageError, ConfigError

from .zstd_codec import decode_zstd, encode_zstd

FORMAT = "biovfm-shards"
VERSION = 1
MANIFEST = "biovfm-shards.json"
INDEX = "biovfm-index.npz"
LITDATA_INDEX = "index.json"
PROBLEMS = "pack_problems.csv"
ENCODINGS = ("zstd", "png", "raw")
# zstd reads back faster than every source kind at 2 loader workers, within ~1.5x of
# PNG's bytes (benchmarks/README.md, "Shard encodings"); PNG stays for the smallest sets.
DEFAULT_ENCODING = "zstd"


def to_stored(image: np.ndarray, keep_float: bool = False) -> tuple[np.ndarray, float, float]:
    """``(stored, scale, offset)`` with ``stored * scale + offset`` = ``image``.

    uint8 and uint16 are stored as they are. Integers that fit 16 bits (int16 CT,
    small int32) and whole-valued floats within a 16-bit range are shifted into
    uint16 exactly. Other values (float MR, wide integers) are spread linearly over
    0..65535: a relative error below 1/65535 of the image's range, far under any
    intensity augmentation; with ``keep_float`` (the zstd encoding, which stores any
    array) non-whole floats are kept as float32 instead, bit for bit.
    """
    if image.dtype in (np.uint8, np.uint16):
        return image, 1.0, 0.0
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255, 1.0, 0.0
    data = image
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise ValueError("image has NaN or infinite values")
        whole = np.array_equal(data, np.round(data))
    else:
        whole = True
    if keep_float and not whole and data.dtype == np.float32:
        return data, 1.0, 0.0
    lo, hi = float(data.min()), float(data.max())
    if whole and hi - lo <= 65535:
        # Exact: shift by the image's minimum (kept in offset).
        return (data - lo).astype(np.uint16), 1.0, lo
    scale = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.round((data.astype(np.float64) - lo) / scale).astype(np.uint16)
    return stored, scale, lo


def from_stored(stored: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """The reader's values back: the stored array itself, or float32 when rescaled."""
    if scale == 1.0 and offset == 0.0:
        return stored
    return stored.astype(np.float32) * np.float32(scale) + np.float32(offset)


def resize_stored(stored: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink so the longer side is ``max_side`` (area averaging), keeping the dtype."""
    h, w = stored.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return stored
    import cv2

    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    out = cv2.resize(stored, size, interpolation=cv2.INTER_AREA)
    if stored.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
        out = out[..., None]
    return out


def make_item(
    record: Any, label: int, image: np.ndarray, encoding: str, max_side: int | None = None
) -> dict[str, Any]:
    """The litdata item of one image: stored (depth kept, optionally shrunk) and
    encoded, with its metadata. ``label`` is the index's code (-1, class, bitmask)."""
    stored, scale, offset = to_stored(image, keep_float=encoding == "zstd")
    return {
        "image": encode(resize_stored(stored, max_side), encoding),
        "scale": float(scale),
        "offset": float(offset),
        "uri": record.uri,
        "source": record.source,
        "modality": record.modality,
        "anatomy": record.anatomy,
        "label": int(label),
    }


def encode(stored: np.ndarray, encoding: str) -> bytes | np.ndarray:
    if encoding == "raw":
        return np.ascontiguousarray(stored)
    if encoding == "zstd":
        return encode_zstd(stored)
    if encoding != "png":
        raise ConfigError(f"shard encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
    import cv2

    img = stored
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[:, :, ::-1]  # cv2 writes BGR
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, [2, 1, 0, 3]]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"PNG encoder refused a {stored.dtype} {stored.shape} image")
    return buf.tobytes()


def decode(data: Any, encoding: str, where: str) -> np.ndarray:
    """One stored image back to an array; ``where`` names it in the error."""
    if encoding == "raw":
        if not isinstance(data, np.ndarray):
            raise BadImageError(where, f"raw shard item is {type(data).__name__}, not an array")
        return data
    if encoding == "zstd":
        try:
            return decode_zstd(data)
        except (TypeError, ValueError) as exc:
            raise BadImageError(where, f"zstd item in shard does not decode: {exc}") from exc
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise BadImageError(where, "PNG in shard does not decode")
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[:, :, ::-1]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, [2, 1, 0, 3]]
    return np.ascontiguousarray(img)


def writer_serializers() -> dict[str, Any]:
    """``serializers=`` for litdata's ``BinaryWriter``: every ``str`` stored as text.

    By default litdata stores a string that names an existing file (or ends in .png,
    .jpg, .nii, ...) as that file's bytes: a folder image's ``uri`` would embed the
    original image and read back as a tensor. Registered as ``"str"``, so a reader
    decodes it with litdata's own string serializer and needs nothing of ours. A file
    name that is not UTF-8 is written with backslash escapes (litdata decodes strict
    UTF-8); ``biovfm-index.npz`` keeps its exact bytes.
    """
    from litdata.streaming.serializers import Serializer

    class Text(Serializer):
        def serialize(self, item: str) -> tuple[bytes, str | None]:
            return item.encode("utf-8", "backslashreplace"), None

        def deserialize(self, data: bytes) -> str:
            return bytes(data).decode("utf-8")

        def can_serialize(self, item: Any) -> bool:
            return isinstance(item, str)

    return {"str": Text()}


@dataclass(frozen=True)
class Manifest:
    encoding: str
    images: int
    sources: dict[str, int]
    options: dict[str, Any]
    litdata_version: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "encoding": self.encoding,
            "images": self.images,
            "sources": self.sources,
            "options": self.options,
            "litdata_version": self.litdata_version,
        }


def read_manifest(folder: str) -> Manifest:
    """The manifest of a complete shard set, or a ``ConfigError`` saying what is wrong."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isdir(folder):
        raise ConfigError(f"shards:{folder}: no such folder")
    if not os.path.exists(path):
        hint = (
            "a pack that has not finished (run the same `biovfm data pack` again to resume it)"
            if os.path.isdir(os.path.join(folder, ".pack"))
            else "not a biovfm shard set (make one with `biovfm data pack`)"
        )
        raise ConfigError(f"shards:{folder}: no {MANIFEST}: {hint}")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable manifest ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a biovfm shard manifest")
    if meta.get("version") != VERSION:
        raise ConfigError(
            f"{path}: shard format version {meta.get('version')}, this biovfm reads {VERSION}; "
            f"repack with this version's `biovfm data pack`"
        )
    return Manifest(
        encoding=meta["encoding"],
        images=int(meta["images"]),
        sources=dict(meta.get("sources", {})),
        options=dict(meta.get("options", {})),
        litdata_version=str(meta.get("litdata_version", "")),
    )
