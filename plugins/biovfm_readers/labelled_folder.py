"""A labelled image folder as a benchmark (``--benchmark folder:PATH``,
``train.monitor=folder:PATH[:N]``).

Layout::

    PATH/train/<class>/*.png|jpg|jpeg|tif|tiff|bmp   (sub-folders inside a class are read too)
    PATH/val/<class>/...
    PATH/test/<class>/...

Classes are the sub-folders of ``PATH/train``, numbered in sorted name order (label 0
is the first name). Every train class needs at least one image and there must be at
least two. ``val`` and ``test`` may lack some classes, but a class folder there that
``train`` does not have is an error naming it (no output of the probe could predict
it). Each split needs at least one image. Hidden files and the sidecar files dataset
downloads carry (``.txt``, ``.csv``, ...) are ignored; any other file, or an image
lying directly in a split folder, is an error naming it.

Images are decoded by the folder reader's ``load_image_file`` and put into one array
per split, in the MedMNIST ``.npz`` layout (``{split}_images`` uint8 ``(N, S, S)`` or
``(N, S, S, 3)``, ``{split}_labels`` int64 ``(N, 1)``, plus ``classes``, the class
names in label order):

- **Intensity.** 8-bit images are kept as they are. Anything else (16-bit PNG/TIFF,
  float or signed TIFF) is windowed per image to its 0.5th-99.5th percentile and
  scaled to 0-255, the range the augmentation recipes map such images to in training.
- **Colour.** If any image of the benchmark (any split) is RGB, gray images are
  repeated to 3 channels and every image is ``(S, S, 3)``; otherwise all stay gray.
  Palette, alpha and CMYK images are RGB (as the folder reader decodes them).
- **Size.** Each whole image is resized (bilinear, antialiased when shrinking) to
  ``S x S``; the aspect ratio is not kept, so nothing is cropped away. ``S`` is the
  reader option ``benchmark_side``, by default the median short side of all the
  benchmark's images, at most 224 (the study's evaluation size): small images are
  never upscaled in the file (evaluation resizes to ``--image-size`` anyway) and big
  ones do not make a huge file.
- **Bad images** (corrupt, truncated, zero-byte, over ``max_pixels``) stop the build
  with an error naming the file: a benchmark with silently dropped test images would
  not be the benchmark its name says. Remove or fix the file and run again.

The arrays are built once into ``$BIOVFM_CACHE/folder/`` (default
``~/.cache/biovfm/folder/``), written atomically, under a name holding the folder's
name and a digest of the sorted ``(relative path, size, mtime_ns)`` listing of its
files, the options and this module's build version: adding, removing or editing an
image (or changing ``benchmark_side``) builds a new file, and the stale one of the
same folder and ``benchmark_side`` is deleted.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biovfm_core.errors import BadImageError, ConfigError

from ._common import SIDECAR_EXTENSIONS, walk_files

SPLITS = ("train", "val", "test")
MAX_DEFAULT_SIDE = 224
# Bump when the arrays a listing builds into change (resizing, windowing, keys).
BUILD_VERSION = "1"
LAYOUT = "PATH/train/<class>/*.png, PATH/val/<class>/..., PATH/test/<class>/..."


def cache_root() -> Path:
    """``$BIOVFM_CACHE/folder`` (default ``~/.cache/biovfm/folder``), as the demo
    benchmark's ``$BIOVFM_CACHE/demo``."""
    base = os.environ.get("BIOVFM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "biovfm"
    )
    return Path(base) / "folder"


@dataclass(frozen=True)
class Listing:
    """The benchmark's files: per split, ``(path, label)`` in a stable order."""

    root: str
    classes: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]]

    def digest(self, side: int) -> str:
        h = hashlib.sha256(f"v{BUILD_VERSION}|side={side}|".encode())
        h.update("|".join(self.classes).encode("utf-8", "surrogateescape"))
        for split in SPLITS:
            for path, label in self.files[split]:
                st = os.stat(path)
                rel = os.path.relpath(path, self.root).replace("\\", "/")
                h.update(f"\n{rel}\t{st.st_size}\t{st.st_mtime_ns}\t{label}".encode(
                    "utf-8", "surrogateescape"))  # fmt: skip
        return h.hexdigest()[:16]


def _class_dirs(folder: str) -> list[str]:
    return sorted(
        d
        for d in os.listdir(folder)
        if not d.startswith(".") and os.path.isdir(os.path.join(folder, d))
    )


def list_folder(root: str, extensions: frozenset[str]) -> Listing:
    """Check the layout and list every image with its label (errors name the folder)."""
    for split in SPLITS:
        if not os.path.isdir(os.path.join(root, split)):
            raise ConfigError(
                f"folder:{root} as a benchmark: {os.path.join(root, split)} is missing; "
                f"a labelled folder needs the layout {LAYOUT} (class names sorted give "
                "the label ids)"
            )
    classes = tuple(_class_dirs(os.path.join(root, "train")))
    if len(classes) < 2:
        raise ConfigError(
            f"folder:{root} as a benchmark: {os.path.join(root, 'train')} has "
            f"{len(classes)} class sub-folder(s); a benchmark needs at least 2 ({LAYOUT})"
        )
    ids = {c: i for i, c in enumerate(classes)}
    files: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        folder = os.path.join(root, split)
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.startswith(".") or os.path.isdir(path):
                continue
            if os.path.splitext(name)[1].lower() not in SIDECAR_EXTENSIONS:
                raise ConfigError(
                    f"folder:{root} as a benchmark: {path} is not inside a class "
                    f"sub-folder ({LAYOUT})"
                )
        files[split] = []
        for name in _class_dirs(folder):
            if name not in ids:
                raise ConfigError(
                    f"folder:{root} as a benchmark: {os.path.join(folder, name)}: class "
                    f"{name!r} has no folder in {os.path.join(root, 'train')} (its classes: "
                    f"{', '.join(classes)}), so no probe could predict it"
                )
            found = _images(os.path.join(folder, name), extensions, root)
            if split == "train" and not found:
                raise ConfigError(
                    f"folder:{root} as a benchmark: {os.path.join(folder, name)} holds no "
                    "image; every train class needs at least one"
                )
            files[split].extend((p, ids[name]) for p in found)
        if not files[split]:
            raise ConfigError(f"folder:{root} as a benchmark: {folder} holds no image")
    return Listing(root, classes, files)


def _images(folder: str, extensions: frozenset[str], root: str) -> list[str]:
    out = []
    for path in walk_files(folder):
        if not isinstance(path, str):  # a ScanProblem: broken link, unreadable folder
            raise ConfigError(f"folder:{root} as a benchmark: {path.uri}: {path.reason}")
        ext = os.path.splitext(path)[1].lower()
        if ext in extensions:
            out.append(path)
        elif ext not in SIDECAR_EXTENSIONS:
            raise ConfigError(
                f"folder:{root} as a benchmark: {path}: unsupported file type "
                f"{ext or '(none)'!r} (images: {', '.join(sorted(extensions))})"
            )
    return out


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """8-bit as is; anything else windowed to its 0.5th-99.5th percentile → 0-255."""
    if arr.dtype == np.uint8:
        return arr
    flat = arr.reshape(-1).astype(np.float32)
    if flat.size > 65536:
        flat = flat[:: flat.size // 65536]
    lo, hi = (float(v) for v in np.percentile(flat, (0.5, 99.5)))
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
    hi = hi if hi > lo else lo + 1.0
    scaled = (arr.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _resize(img: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    if img.shape[0] == side and img.shape[1] == side:
        return img
    # Pillow's bilinear filter widens its support when shrinking (antialiased).
    out = Image.fromarray(img).resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(out)


def _bad(root: str, path: str, exc: Exception) -> ConfigError:
    if isinstance(exc, BadImageError):
        reason = exc.reason
    else:
        reason = f"cannot read image: {type(exc).__name__}: {exc}"
    return ConfigError(
        f"folder:{root} as a benchmark: {path}: {reason}; a benchmark must be complete, "
        "so remove or fix this file"
    )


def default_side(listing: Listing, size_of) -> int:  # type: ignore[no-untyped-def]
    """The median short side of all images (headers only), at most 224."""
    shorts = []
    for split in SPLITS:
        for path, _ in listing.files[split]:
            try:
                shorts.append(min(size_of(path)))
            except Exception as exc:  # any decoder error: the file is unusable
                raise _bad(listing.root, path, exc) from exc
    return int(min(MAX_DEFAULT_SIDE, max(1, int(np.median(shorts)))))


def build_arrays(listing: Listing, side: int, load) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """The six MedMNIST arrays (and ``classes``) of ``listing`` at ``side`` px."""
    images: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for split in SPLITS:
        for path, _ in listing.files[split]:
            try:
                image = load(path)
            except Exception as exc:  # BadImageError, or a decoder's own
                raise _bad(listing.root, path, exc) from exc
            images[split].append(_resize(to_uint8(image), side))
    rgb = any(im.ndim == 3 for split in SPLITS for im in images[split])
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        stack = [
            np.repeat(im[..., None], 3, axis=-1) if rgb and im.ndim == 2 else im
            for im in images[split]
        ]
        arrays[f"{split}_images"] = np.stack(stack).astype(np.uint8, copy=False)
        labels = [label for _, label in listing.files[split]]
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64).reshape(-1, 1)
    arrays["classes"] = np.asarray(listing.classes, dtype=str)
    return arrays


def benchmark_file(
    root: str,
    extensions: frozenset[str],
    load,  # type: ignore[no-untyped-def]
    size_of,  # type: ignore[no-untyped-def]
    side: int = 0,
    cache: str | os.PathLike[str] | None = None,
) -> Path:
    """The folder's ``.npz``, built (atomically) when its listing is new, reused after."""
    from biovfm_core.files import write_atomic

    root = os.path.abspath(root)
    listing = list_folder(root, extensions)
    if side < 0:
        raise ConfigError(f"folder:{root}: benchmark_side must be positive (0: automatic)")
    where = Path(cache) if cache else cache_root()
    name = os.path.basename(root.rstrip("/\\")) or "folder"
    where_key = hashlib.sha256(root.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    prefix = f"{name}_{where_key}_{side or 'auto'}_"
    # The digest needs the side, and the automatic side needs the headers: the
    # option's value (0 for automatic) is hashed, the listing fixes what 0 gives.
    path = where / f"{prefix}{listing.digest(side)}.npz"
    if path.is_file():
        return path
    chosen = side or default_side(listing, size_of)
    buf = io.BytesIO()
    np.savez_compressed(buf, **build_arrays(listing, chosen, load))
    write_atomic(path, buf.getvalue())
    for stale in where.iterdir():  # the same folder's (and side's) older listings
        if stale.name.startswith(prefix) and stale.suffix == ".npz" and stale != path:
            try:
                stale.unlink()
            except OSError as exc:  # another process removed it, or a read-only cache
                warnings.warn(f"cannot remove stale benchmark file {stale}: {exc}", stacklevel=2)
    return path


def read_split(path: str | os.PathLike[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one split: uint8 images, int64 labels ``(N,)``."""
    if split not in SPLITS:
        raise ConfigError(f"labelled folder: split must be one of {SPLITS}, not {split!r}")
    with np.load(path, allow_pickle=False) as npz:
        return npz[f"{split}_images"], npz[f"{split}_labels"][:, 0].astype(np.int64)
