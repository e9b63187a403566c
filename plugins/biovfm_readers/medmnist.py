"""MedMNIST v2 / MedMNIST+ ``.npz`` files.

Layout (https://medmnist.com): keys ``{train,val,test}_images`` uint8 ``(N, H, W)``
or ``(N, H, W, 3)`` with H = W in {28, 64, 128, 224}, and ``{split}_labels`` ints
``(N, 1)``, or ``(N, 14)`` 0/1 for ChestMNIST (multi-label). File names are
``{flag}.npz`` (28 px) or ``{flag}_{size}.npz``.

The same file serves pretraining (``scan``/``load``, records ``file.npz#train/17``)
and evaluation (``split_arrays(split) -> (images, labels)``). ``scan`` reads only
the array headers, so scanning a 13 GB ``pathmnist_224.npz`` is instant.
"""

from __future__ import annotations

import os
import re
import threading
import zipfile
from collections.abc import Iterator

import numpy as np

from biovfm_core.errors import BadImageError, ConfigError
from biovfm_core.protocols import SampleRecord, ScanProblem, SourceTags

from ._common import allowed_modalities, require_location, split_uri

SPLITS = ("train", "val", "test")

# Modality and anatomy of each MedMNIST 2D benchmark (from the MedMNIST v2 paper),
# used when a source is given as `medmnist:PATH` without tags.
FLAG_TAGS: dict[str, tuple[str, str]] = {
    "pathmnist": ("microscopy", "colon"),
    "chestmnist": ("xray", "chest"),
    "dermamnist": ("dermoscopy", "skin"),
    "octmnist": ("octa", "retina"),
    "pneumoniamnist": ("xray", "chest"),
    "retinamnist": ("fundus", "retina"),
    "breastmnist": ("us", "breast"),
    "bloodmnist": ("microscopy", "blood"),
    "tissuemnist": ("microscopy", "kidney"),
    "organamnist": ("ct", "abdomen"),
    "organcmnist": ("ct", "abdomen"),
    "organsmnist": ("ct", "abdomen"),
}


def flag_of(path: str) -> str:
    """``.../pathmnist_224.npz`` → ``pathmnist``."""
    stem = os.path.basename(path)
    stem = stem[:-4] if stem.lower().endswith(".npz") else stem
    return re.sub(r"_(28|64|128|224)$", "", stem).lower()


def _member_header(zf: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and header length of ``key`` in an npz, without reading its data."""
    with zf.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if fortran:
            raise ValueError(f"{key} is stored in Fortran order")
        return tuple(shape), np.dtype(dtype), f.tell()


# Per-process cache of decompressed arrays: MedMNIST ships np.savez_compressed files,
# whose members cannot be read one image at a time, so a worker inflates a split once.
_CACHE: dict[tuple[str, str], np.ndarray] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 4


def _array(path: str, key: str) -> np.ndarray:
    ck = (os.path.abspath(path), key)
    with _CACHE_LOCK:
        if ck in _CACHE:
            return _CACHE[ck]
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
        shape, dtype, hlen = _member_header(zf, key)
        if info.compress_type == zipfile.ZIP_STORED:
            # Uncompressed member: map it in place instead of reading it.
            with open(path, "rb") as raw:
                raw.seek(info.header_offset)
                local = raw.read(30)
                name_len = int.from_bytes(local[26:28], "little")
                extra_len = int.from_bytes(local[28:30], "little")
            offset = info.header_offset + 30 + name_len + extra_len + hlen
            arr = np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset)
        else:
            with zf.open(key + ".npy") as f:
                arr = np.lib.format.read_array(f)
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[ck] = arr
    return arr


class MedMNISTReader:
    """One MedMNIST ``.npz`` file (any size, gray or RGB).

    Options
    -------
    split: ``train``, ``val``, ``test`` or ``all`` — which images ``scan`` indexes
        (pretraining uses ``train`` so the benchmark's test images stay unseen).
    """

    def __init__(self, location: str, tags: SourceTags, *, split: str = "train") -> None:
        self.location = require_location(location, "medmnist")
        if split not in (*SPLITS, "all"):
            raise ConfigError(
                f"medmnist reader: split must be train, val, test or all, not {split!r}"
            )
        self.split = split
        self.flag = flag_of(self.location)
        guessed = FLAG_TAGS.get(self.flag)
        allowed = allowed_modalities(tags)
        if len(allowed) == 1:
            self.modality = allowed[0]
        elif guessed is not None:
            self.modality = guessed[0]
        else:
            raise ConfigError(
                f"medmnist:{location}: unknown MedMNIST flag {self.flag!r}; give the modality "
                f"('medmnist:{location}?modality=...') or list it in a catalog"
            )
        anatomy = tags.anatomy
        if anatomy == "unknown" and guessed is not None:
            anatomy = guessed[1]
        self.tags = SourceTags(source=tags.source, modality=self.modality, anatomy=anatomy)

    def _check(self, zf: zipfile.ZipFile, split: str) -> tuple[tuple[int, ...], np.ndarray]:
        names = set(zf.namelist())
        for key in (f"{split}_images", f"{split}_labels"):
            if key + ".npy" not in names:
                raise ValueError(
                    f"missing key {key!r} (has: {', '.join(sorted(n[:-4] for n in names))})"
                )
        shape, dtype, _ = _member_header(zf, f"{split}_images")
        ok = len(shape) in (3, 4) and shape[1] == shape[2] and (len(shape) == 3 or shape[3] == 3)
        if not ok:
            raise ValueError(
                f"{split}_images has shape {shape}, expected (N, H, H) or (N, H, H, 3)"
            )
        if dtype != np.uint8:
            raise ValueError(f"{split}_images has dtype {dtype}, expected uint8")
        with zf.open(f"{split}_labels.npy") as f:
            labels = np.lib.format.read_array(f)
        if len(labels) != shape[0]:
            raise ValueError(f"{split}: {shape[0]} images but {len(labels)} labels")
        return shape, labels

    def scan(self) -> Iterator[SampleRecord | ScanProblem]:
        splits = SPLITS if self.split == "all" else (self.split,)
        try:
            zf = zipfile.ZipFile(self.location)
        except (zipfile.BadZipFile, OSError) as exc:
            yield ScanProblem(self.location, f"not a readable .npz: {exc}")
            return
        with zf:
            for split in splits:
                try:
                    shape, labels = self._check(zf, split)
                except Exception as exc:
                    yield ScanProblem(self.location, f"not in MedMNIST layout: {exc}")
                    continue
                labels = labels.reshape(len(labels), -1)
                multi = labels.shape[1] > 1
                for i in range(shape[0]):
                    row = labels[i]
                    label = tuple(int(v) for v in row) if multi else int(row[0])
                    yield SampleRecord(
                        uri=f"{self.location}#{split}/{i}",
                        source=self.tags.source,
                        modality=self.modality,
                        anatomy=self.tags.anatomy,
                        label=label,
                    )

    def load(self, record: SampleRecord) -> np.ndarray:
        path, _ = split_uri(record.uri)
        frag = record.uri.partition("#")[2]
        try:
            split, idx = frag.split("/")
            arr = _array(path, f"{split}_images")
            return np.array(arr[int(idx)])
        except Exception as exc:
            raise BadImageError(
                record.uri, f"cannot read MedMNIST image: {type(exc).__name__}: {exc}"
            ) from exc

    def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of one split for evaluation: uint8 images as stored,
        labels int64 ``(N,)`` (single-label) or ``(N, L)`` 0/1 (multi-label)."""
        if split not in SPLITS:
            raise ConfigError(f"medmnist: split must be one of {SPLITS}, not {split!r}")
        try:
            with zipfile.ZipFile(self.location) as zf:
                self._check(zf, split)
                with zf.open(f"{split}_labels.npy") as f:
                    labels = np.lib.format.read_array(f).astype(np.int64)
            images = np.asarray(_array(self.location, f"{split}_images"))
        except (ValueError, zipfile.BadZipFile, KeyError, OSError) as exc:
            raise ConfigError(f"{self.location}: not a MedMNIST file: {exc}") from exc
        labels = labels.reshape(len(labels), -1)
        if labels.shape[1] == 1:
            labels = labels[:, 0]
        return images, labels

    @property
    def multilabel(self) -> bool:
        """True for multi-label files (ChestMNIST's 14 findings)."""
        with zipfile.ZipFile(self.location) as zf:
            shape, _, _ = _member_header(zf, "train_labels")
        return len(shape) == 2 and shape[1] > 1
