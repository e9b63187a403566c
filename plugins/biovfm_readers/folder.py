"""Image folders: PNG, JPEG, TIFF (8- and 16-bit), BMP.

Images are decoded as stored: 8-bit stays uint8, 16-bit PNG/TIFF stays uint16 (the
augmentation recipe maps the range later). Palette, alpha and CMYK images become
RGB; two-level images become 8-bit gray.

A folder in the ``PATH/{train,val,test}/<class>/`` layout is also a benchmark
(``--benchmark folder:PATH``, ``train.monitor=folder:PATH[:N]``): ``split_arrays``
builds it into a cached MedMNIST-layout ``.npz`` (``labelled_folder.py`` has the
rules). Pretraining (``scan``/``load``) never looks at that layout.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from biovfm_core.errors import BadImageError
from biovfm_core.protocols import DEFAULT_MAX_PIXELS, SampleRecord, ScanProblem, SourceTags

from ._common import SIDECAR_EXTENSIONS, ModalityGuess, require_location

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
_TIFF = frozenset({".tif", ".tiff"})
_PILLOW_LIMIT_LOCK = threading.Lock()


class FolderReader:
    """A folder tree of PNG / JPEG / TIFF / BMP images.

    Options
    -------
    labels_from_subfolders: the first-level sub-folder name is the class
        (``root/benign/x.png`` → class ``benign``); classes are numbered in sorted order.
    verify: open every file's header during ``scan`` so corrupt, zero-byte and
        oversized files are reported up front (turn off to scan millions of files
        faster; ``load`` still reports them).
    max_pixels: images with more pixels are refused (decompression-bomb guard); it
        replaces Pillow's own limit for this reader, above or below it.
    benchmark_side: used only as a benchmark (``split_arrays``): the side images are
        resized to; 0 (default) takes the median short side of the images, at most 224.
    """

    def __init__(
        self,
        location: str,
        tags: SourceTags,
        *,
        labels_from_subfolders: bool = False,
        verify: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        benchmark_side: int = 0,
    ) -> None:
        self.location = require_location(location, "folder")
        self.tags = tags
        self.labels_from_subfolders = labels_from_subfolders
        self.verify = verify
        self.max_pixels = max_pixels
        self.benchmark_side = benchmark_side
        self._benchmark_file: str | None = None
        self._modality = ModalityGuess("folder", self.location, tags)
        self.allowed = self._modality.allowed
        self.classes: list[str] = []
        if labels_from_subfolders and os.path.isdir(self.location):
            self.classes = sorted(
                d
                for d in os.listdir(self.location)
                if not d.startswith(".") and os.path.isdir(os.path.join(self.location, d))
            )

    @property
    def notes(self) -> list[str]:
        """What the last ``scan`` wants the user to know (an unnamed modality)."""
        return self._modality.notes

    # ------------------------------------------------------------------ scan
    def scan(self) -> Iterator[SampleRecord | ScanProblem]:
        from ._common import walk_files

        class_ids = {c: i for i, c in enumerate(self.classes)}
        self._modality.unnamed = 0
        for path in walk_files(self.location):
            if isinstance(path, ScanProblem):
                yield path
                continue
            ext = os.path.splitext(path)[1].lower()
            if ext not in IMAGE_EXTENSIONS:
                if ext not in SIDECAR_EXTENSIONS:
                    yield ScanProblem(path, f"unsupported file type {ext or '(none)'!r}")
                continue
            if os.path.getsize(path) == 0:
                yield ScanProblem(path, "zero-byte file")
                continue
            if self.verify:
                reason = self._check_header(path, ext)
                if reason:
                    yield ScanProblem(path, reason)
                    continue
            label = None
            if self.labels_from_subfolders:
                rel = os.path.relpath(path, self.location).replace("\\", "/")
                top = rel.split("/", 1)[0]
                if "/" not in rel or top not in class_ids:
                    yield ScanProblem(path, "not inside a class sub-folder")
                    continue
                label = class_ids[top]
            modality = self._modality(path)
            yield SampleRecord(
                uri=path,
                source=self.tags.source,
                modality=modality,
                anatomy=self.tags.anatomy,
                label=label,
            )

    def _check_header(self, path: str, ext: str) -> str | None:
        try:
            h, w = _image_size(path, ext)
        except Exception as exc:  # any decoder error means the file is unusable
            return f"cannot read image header: {exc}"
        if h * w > self.max_pixels:
            return f"{w}x{h} = {w * h} pixels exceeds the limit of {self.max_pixels}"
        return None

    # ------------------------------------------------------------------ load
    def load(self, record: SampleRecord) -> np.ndarray:
        return load_image_file(record.uri, self.max_pixels)

    # ------------------------------------------------------------- benchmark
    @property
    def benchmark_name(self) -> str:
        return os.path.basename(os.path.abspath(self.location).rstrip("/\\")) or "folder"

    @property
    def benchmark_file(self) -> str:
        """The folder's train/val/test arrays as a MedMNIST-layout ``.npz``, built on
        first use (``ConfigError`` when the folder lacks the layout)."""
        if self._benchmark_file is None:
            from .labelled_folder import benchmark_file

            path = benchmark_file(
                self.location,
                IMAGE_EXTENSIONS,
                load=lambda p: load_image_file(p, self.max_pixels),
                size_of=lambda p: _image_size(p, os.path.splitext(p)[1].lower()),
                side=self.benchmark_side,
            )
            self._benchmark_file = str(path)
        return self._benchmark_file

    def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of one split of a ``train/val/test/<class>/`` folder:
        uint8 ``(N, S, S)`` or ``(N, S, S, 3)`` images, int64 labels ``(N,)``."""
        from .labelled_folder import read_split

        return read_split(self.benchmark_file, split)


def _image_size(path: str, ext: str) -> tuple[int, int]:
    if ext in _TIFF:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
        return int(shape[0]), int(shape[1])
    with _open_pil(path) as im:
        w, h = im.size
    return h, w


def load_image_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one image file to ``(H, W)`` or ``(H, W, 3)`` keeping its bit depth."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(path, "zero-byte file")
        h, w = _image_size(path, ext)
        if h * w > max_pixels:
            raise BadImageError(path, f"{w}x{h} pixels exceeds the limit of {max_pixels}")
        arr = _decode_tiff(path) if ext in _TIFF else _decode_pil(path)
    except BadImageError:
        raise
    except Exception as exc:  # truncated, corrupt, or a format variant nobody decodes
        raise BadImageError(path, f"cannot decode image: {type(exc).__name__}: {exc}") from exc
    return _canonical(arr, path)


@contextmanager
def _open_pil(path: str) -> Iterator[Any]:
    """``Image.open`` with Pillow's own decompression-bomb guard off for this call.

    Pillow refuses (or warns about) images over its global ``MAX_IMAGE_PIXELS`` while
    opening them, before the reader's ``max_pixels`` is checked, so a reader set to
    allow more could never read them. The reader's limit is checked right after the
    header is read and before any pixel is decoded. Pillow's global is lifted only
    around the header read, under a lock, and restored, so other code keeps its guard.
    """
    from PIL import Image

    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with im:
        yield im


def _decode_pil(path: str) -> np.ndarray:
    with _open_pil(path) as im:
        im.load()
        mode = im.mode
        if mode in ("P", "PA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB")
        elif mode in ("LA", "1"):
            im = im.convert("L")
        arr = np.asarray(im)
    # 16-bit PNGs may come back as 32-bit "I"; keep them 16-bit when they fit.
    fits16 = arr.size and arr.min() >= 0 and arr.max() <= 65535
    if mode.startswith("I") and arr.dtype != np.uint16 and fits16:
        arr = arr.astype(np.uint16)
    return arr


def _decode_tiff(path: str) -> np.ndarray:
    import tifffile

    arr = tifffile.imread(path, key=0)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) layout
    return arr


def _canonical(arr: np.ndarray, path: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 2:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise BadImageError(path, f"unsupported image shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return np.ascontiguousarray(arr)
