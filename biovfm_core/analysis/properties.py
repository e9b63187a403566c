"""Task properties of a benchmark, the study's candidates for explaining scaling.

* ``n_classes``: labels of a multi-label task count as classes (ChestMNIST: 14).
* ``n_train``: training images.
* ``compressibility``: median over training images of raw bytes / gzip bytes, as
  the study; ``compressibility_png`` (raw / PNG bytes) on request. Lower means
  more information per pixel.
* ``dbi``: Davies-Bouldin index (scikit-learn) of the training labels, on raw
  pixels (downsampled, flattened, scaled to [0, 1]) or on features from an ``.npz``
  with ``features`` (N, D) and ``labels`` (N,) or (N, L), or a ``.npy`` of the train
  split's features in file order (the frozen features of a reference backbone that
  ``biovfm eval`` caches). Higher means classes overlap.

Subsamples are seeded, and results are cached as JSON keyed by the file's path,
size and modification time and by every option, so a second call is instant and
a changed file or option is recomputed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from biovfm_core.errors import ConfigError
from biovfm_core.files import write_atomic

PROPERTIES = ("n_classes", "n_train", "compressibility", "dbi")
CACHE_VERSION = 1
MEDMNIST_SIZES = (28, 64, 128, 224)


@dataclass
class TaskProperties:
    """One row of ``properties.csv``."""

    benchmark: str
    n_classes: int
    n_train: int
    compressibility: float
    dbi: float
    compressibility_png: float | None = None
    dbi_space: str = "pixels"  # "pixels" or "features"
    image_size: int | None = None
    n_compress: int = 0  # images whose ratio entered the median
    n_dbi: int = 0  # samples the DBI was computed on
    seed: int = 0
    source: str = ""  # the file the properties came from

    def value(self, name: str) -> float:
        """A property as a float, including the derived ``log10_n_train``."""
        if name == "log10_n_train":
            return math.log10(self.n_train)
        value = getattr(self, name)
        return float("nan") if value is None else float(value)


def default_cache_dir() -> Path:
    base = os.environ.get("BIOVFM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "biovfm"
    )
    return Path(base) / "properties"


def gzip_ratio(image: np.ndarray, *, level: int = 9) -> float:
    """Raw bytes / gzip bytes of one image's pixel buffer."""
    raw = np.ascontiguousarray(image).tobytes()
    return len(raw) / len(gzip.compress(raw, compresslevel=level))


def png_ratio(image: np.ndarray) -> float:
    """Raw bytes / PNG bytes (lossless, default zlib level) of one uint8 image."""
    from PIL import Image

    arr = np.ascontiguousarray(image)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return arr.nbytes / len(buffer.getvalue())


def _subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    if limit <= 0 or n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


def compressibility(
    images: np.ndarray,
    *,
    max_images: int = 5000,
    seed: int = 0,
    png: bool = False,
) -> tuple[float, float | None, int]:
    """Median gzip ratio (and PNG ratio with ``png``) over a seeded subsample.

    Returns ``(gzip_median, png_median or None, images used)``; ``max_images=0``
    uses every image."""
    if len(images) == 0:
        raise ConfigError("compressibility: no images")
    idx = _subsample(len(images), max_images, np.random.default_rng(seed))
    ratios = [gzip_ratio(images[i]) for i in idx]
    png_median = float(np.median([png_ratio(images[i]) for i in idx])) if png else None
    return float(np.median(ratios)), png_median, len(idx)


def single_labels(labels: np.ndarray) -> np.ndarray:
    """One cluster id per sample for the DBI.

    A multi-label row maps to its first positive label + 1, or 0 when it has none
    (ChestMNIST's "no finding"); the study does not say how it clustered multi-label
    tasks, so this is our choice."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 1:
        return labels.astype(np.int64)
    positive = labels > 0
    first = positive.argmax(axis=1) + 1
    return np.where(positive.any(axis=1), first, 0).astype(np.int64)


def downsample(images: np.ndarray, side: int) -> np.ndarray:
    """Block-average (N, H, W[, C]) images to at most ``side`` px, as float32 in [0, 1]."""
    arr = np.asarray(images, dtype=np.float32) / 255.0
    h = arr.shape[1]
    if side > 0 and h > side:
        factor = math.ceil(h / side)
        crop = (h // factor) * factor
        arr = arr[:, :crop, :crop]
        shape = (arr.shape[0], crop // factor, factor, crop // factor, factor, *arr.shape[3:])
        arr = arr.reshape(shape).mean(axis=(2, 4))
    return arr


def davies_bouldin(
    data: np.ndarray,
    labels: np.ndarray,
    *,
    max_samples: int = 5000,
    seed: int = 0,
    pixel_side: int = 0,
) -> tuple[float, int]:
    """Davies-Bouldin index of ``labels`` on ``data`` (images or features).

    Images (3-D or 4-D uint8) are downsampled to ``pixel_side`` (0: as stored) and
    flattened; 2-D data is used as features. Returns ``(dbi, samples used)``."""
    from sklearn.metrics import davies_bouldin_score

    labels = single_labels(labels)
    if len(labels) != len(data):
        raise ConfigError(f"DBI: {len(data)} samples but {len(labels)} labels")
    idx = _subsample(len(data), max_samples, np.random.default_rng(seed))
    y = labels[idx]
    if data.ndim == 2:
        x = np.asarray(data[idx], dtype=np.float64)
    else:
        x = downsample(data[idx], pixel_side).reshape(len(idx), -1).astype(np.float64)
    present = len(np.unique(y))
    if present < 2 or present >= len(y):
        raise ConfigError(
            f"DBI needs 2 ≤ classes < samples; the subsample has {present} class(es) "
            f"in {len(y)} samples"
        )
    return float(davies_bouldin_score(x, y)), len(idx)


def load_features(
    path: str | os.PathLike[str], labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``features`` (N, D) and ``labels`` from a feature ``.npz``, or from a bare
    ``.npy`` of train-split features (as ``biovfm eval`` caches them) paired with
    the benchmark's own train ``labels``."""
    try:
        if str(path).endswith(".npy"):
            if labels is None:
                raise ConfigError(f"{path}: a .npy feature file needs the benchmark's labels")
            features = np.load(path)
        else:
            with np.load(path) as npz:
                missing = [k for k in ("features", "labels") if k not in npz.files]
                if missing:
                    raise ConfigError(
                        f"{path}: feature file lacks key(s) {', '.join(missing)} "
                        f"(has: {', '.join(npz.files)}); expected 'features' (N, D) and 'labels'"
                    )
                features, labels = npz["features"], npz["labels"]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read feature file {path}: {exc}") from None
    if features.ndim != 2:
        raise ConfigError(f"{path}: features must be (N, D), got shape {features.shape}")
    if len(features) != len(labels):
        raise ConfigError(f"{path}: {len(features)} feature rows but {len(labels)} labels")
    return features, labels


def _file_stamp(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_medmnist_train(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Train images and labels through the registered ``medmnist`` reader."""
    from biovfm_core.protocols import SourceTags
    from biovfm_core.registry import get_registry

    registry = get_registry()
    source = path.stem
    try:
        reader = registry.build("datasets", "medmnist", str(path), SourceTags(source, "auto"))
    except ConfigError:
        # An unknown flag has no modality to guess; it does not matter for properties.
        reader = registry.build("datasets", "medmnist", str(path), SourceTags(source, "microscopy"))
    return reader.split_arrays("train")


def benchmark_properties(
    npz: str | os.PathLike[str],
    *,
    features: str | os.PathLike[str] | None = None,
    seed: int = 0,
    max_images: int = 5000,
    dbi_samples: int = 5000,
    dbi_side: int = 28,
    png: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> TaskProperties:
    """Properties of one MedMNIST ``.npz`` (train split), cached as JSON."""
    from biovfm_core.analysis.fits import benchmark_key

    path = Path(npz)
    if not path.is_file():
        raise ConfigError(f"benchmark file not found: {path}")
    feature_path = Path(features) if features else None
    if feature_path is not None and not feature_path.is_file():
        raise ConfigError(f"feature file not found: {feature_path}")
    key = {
        "version": CACHE_VERSION,
        "file": _file_stamp(path),
        "features": _file_stamp(feature_path) if feature_path else None,
        "seed": seed,
        "max_images": max_images,
        "dbi_samples": dbi_samples,
        "dbi_side": dbi_side,
        "png": png,
    }
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_file = cache / f"{path.stem}-{digest}.json"
    if use_cache and cache_file.is_file():
        try:
            cached = json.loads(cache_file.read_text())
            return TaskProperties(**cached["properties"])
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is recomputed and overwritten
    images, labels = _read_medmnist_train(path)
    multi = labels.ndim == 2
    n_classes = int(labels.shape[1]) if multi else len(np.unique(labels))
    gz, png_median, n_compress = compressibility(images, max_images=max_images, seed=seed, png=png)
    if feature_path is not None:
        feats, feat_labels = load_features(feature_path, labels)
        dbi, n_dbi = davies_bouldin(feats, feat_labels, max_samples=dbi_samples, seed=seed)
        space = "features"
    else:
        dbi, n_dbi = davies_bouldin(
            images, labels, max_samples=dbi_samples, seed=seed, pixel_side=dbi_side
        )
        space = "pixels"
    props = TaskProperties(
        benchmark=benchmark_key(path.name),
        n_classes=n_classes,
        n_train=len(images),
        compressibility=gz,
        dbi=dbi,
        compressibility_png=png_median,
        dbi_space=space,
        image_size=int(images.shape[1]),
        n_compress=n_compress,
        n_dbi=n_dbi,
        seed=seed,
        source=str(path),
    )
    if use_cache:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            payload = {"key": key, "properties": asdict(props)}
            write_atomic(cache_file, json.dumps(payload, indent=1).encode())
        except OSError:
            pass  # a read-only cache only costs the recomputation
    return props


def find_medmnist(root: str | os.PathLike[str], size: int = 28) -> list[Path]:
    """The MedMNIST files of one image size under ``root`` (``{flag}.npz`` for 28 px,
    ``{flag}_{size}.npz`` otherwise), sorted by flag."""
    import re

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--medmnist-root {root}: not a directory")
    if size not in MEDMNIST_SIZES:
        raise ConfigError(f"--size must be one of {MEDMNIST_SIZES}, not {size}")
    pattern = re.compile(r"^[a-z]+mnist\.npz$" if size == 28 else rf"^[a-z]+mnist_{size}\.npz$")
    found = sorted(p for p in root.iterdir() if pattern.match(p.name.lower()))
    if not found:
        expected = "pathmnist.npz" if size == 28 else f"pathmnist_{size}.npz"
        raise ConfigError(f"no MedMNIST files of size {size} in {root} (expected e.g. {expected})")
    return found


def write_properties(path: str | os.PathLike[str], rows: Sequence[TaskProperties]) -> Path:
    import csv

    buffer = io.StringIO()
    names = [f.name for f in fields(TaskProperties)]
    writer = csv.DictWriter(buffer, fieldnames=names)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    return write_atomic(Path(path), buffer.getvalue().encode())


def read_properties(path: str | os.PathLike[str]) -> list[TaskProperties]:
    """Read a properties CSV (ours, or any with ``benchmark`` and the four properties)."""
    import csv

    from biovfm_core.analysis.fits import benchmark_key

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read properties table {path}: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in ("benchmark", *PROPERTIES) if c not in header]
    if missing:
        raise ConfigError(
            f"{path}: properties table lacks column(s) {', '.join(missing)}; "
            f"required: benchmark, {', '.join(PROPERTIES)}"
        )
    types = {f.name: f.type for f in fields(TaskProperties)}
    out = []
    for line, raw in enumerate(reader, start=2):
        values: dict = {}
        for name, kind in types.items():
            text = (raw.get(name) or "").strip()
            if name not in raw or (not text and "None" in str(kind)):
                continue
            try:
                if kind.startswith("int"):
                    values[name] = int(float(text))
                elif kind.startswith("float"):
                    values[name] = float(text)
                else:
                    values[name] = text
            except ValueError:
                raise ConfigError(
                    f"{path}:{line}: column {name!r} is not a number: {text!r}"
                ) from None
        values["benchmark"] = benchmark_key(values["benchmark"])
        out.append(TaskProperties(**values))
    return out
