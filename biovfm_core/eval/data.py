"""Benchmarks: the 12 MedMNIST 2D tasks (or any labelled dataset a reader provides),
their official train/val/test splits, and the study's preprocessing."""

from __future__ import annotations

import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import torch
import torch.nn.functional as F

from biovfm_core.data.catalog import split_query
from biovfm_core.errors import ConfigError, NotBuiltError
from biovfm_core.protocols import SourceTags

SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)


@dataclass(frozen=True)
class BenchmarkInfo:
    task: str  # as in medmnist_2d.csv
    num_classes: int
    modality: str


# ../shared/data/medmnist_2d.csv (MedMNIST v2 / MedMNIST+).
MEDMNIST_2D: dict[str, BenchmarkInfo] = {
    "pathmnist": BenchmarkInfo("multi-class", 9, "microscopy"),
    "chestmnist": BenchmarkInfo("multi-label", 14, "xray"),
    "dermamnist": BenchmarkInfo("multi-class", 7, "dermoscopy"),
    "octmnist": BenchmarkInfo("multi-class", 4, "octa"),
    "pneumoniamnist": BenchmarkInfo("binary", 2, "xray"),
    "retinamnist": BenchmarkInfo("ordinal", 5, "fundus"),
    "breastmnist": BenchmarkInfo("binary", 2, "us"),
    "bloodmnist": BenchmarkInfo("multi-class", 8, "microscopy"),
    "tissuemnist": BenchmarkInfo("multi-class", 8, "microscopy"),
    "organamnist": BenchmarkInfo("multi-class", 11, "ct"),
    "organcmnist": BenchmarkInfo("multi-class", 11, "ct"),
    "organsmnist": BenchmarkInfo("multi-class", 11, "ct"),
}

# The offline demo benchmark's tasks, built by the readers plugin's ``demo_benchmark``
# dataset kind from images inside installed packages (biovfm_readers/demo_benchmark.py).
DEMO_KIND = "demo_benchmark"
DEMO_TASKS = ("modality", "texture", "plane")


def scoring_task(task: str) -> str:
    """Ordinal tasks (RetinaMNIST) are trained and scored as multi-class, as MedMNIST does."""
    return "multi-class" if task == "ordinal" else task


@dataclass
class Benchmark:
    """One benchmark's three splits, images as stored (uint8) and checked labels."""

    name: str
    location: str
    task: str  # multi-class, binary, multi-label or ordinal
    num_classes: int  # labels for multi-label tasks
    size: int
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    fingerprint: str

    @property
    def scoring(self) -> str:
        return scoring_task(self.task)


def flag_of(path: str) -> str:
    """``.../pathmnist_224.npz`` → ``pathmnist``."""
    stem = os.path.basename(path)
    stem = stem[:-4] if stem.lower().endswith(".npz") else stem
    return re.sub(r"_(28|64|128|224)$", "", stem).lower()


def medmnist_path(root: str | os.PathLike[str], flag: str, size: int) -> Path:
    if size not in SIZES:
        raise ConfigError(f"--size must be one of {', '.join(map(str, SIZES))}, not {size}")
    name = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    return Path(root) / name


def expand_benchmarks(specs: list[str], root: str | None, size: int) -> list[tuple[str, str]]:
    """``medmnist:all`` / ``medmnist:<flag>`` / ``medmnist:<file.npz>`` / ``demo`` /
    ``demo:<task>`` / ``KIND:LOCATION`` → ``(kind, location)`` pairs, files resolved
    against ``--medmnist-root``."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        if spec in ("demo", "demo:all"):
            out.extend((DEMO_KIND, task) for task in DEMO_TASKS)
            continue
        kind, sep, rest = spec.partition(":")
        if kind == "demo" and sep:
            if rest not in DEMO_TASKS:
                raise ConfigError(
                    f"--benchmark {spec}: the demo tasks are {', '.join(DEMO_TASKS)} "
                    "(or demo for all)"
                )
            out.append((DEMO_KIND, rest))
            continue
        if not sep or not rest:
            raise ConfigError(
                f"--benchmark {spec!r}: write demo, medmnist:<flag>, medmnist:all, "
                "medmnist:<file.npz>, folder:<labelled folder> or <dataset kind>:<location>"
            )
        if kind != "medmnist":
            out.append((kind, rest))
            continue
        if rest.lower().endswith(".npz"):
            out.append(("medmnist", rest))
            continue
        flags = list(MEDMNIST_2D) if rest == "all" else [rest]
        if root is None:
            raise ConfigError(
                f"--benchmark {spec}: give --medmnist-root, the folder holding the "
                "MedMNIST .npz files (or pass medmnist:<path to .npz>)"
            )
        for flag in flags:
            if flag not in MEDMNIST_2D:
                raise ConfigError(
                    f"--benchmark medmnist:{flag}: not one of the 12 MedMNIST 2D flags "
                    f"({', '.join(MEDMNIST_2D)}); pass a .npz path for other files"
                )
            path = medmnist_path(root, flag, size)
            if not path.is_file():
                raise ConfigError(f"--benchmark medmnist:{flag}: {path} does not exist")
            out.append(("medmnist", str(path)))
    return out


def load_benchmark(kind: str, location: str, registry) -> Benchmark:
    """Read and check one benchmark through its dataset reader's ``split_arrays``.

    ``LOCATION?key=value&...`` passes reader options (``folder:PATH?benchmark_side=64``),
    as ``--data KIND:PATH?...`` does."""
    location, query = split_query(location)
    options = dict(parse_qsl(query, keep_blank_values=True))
    if kind == "medmnist":
        _check_npz_layout(location)
        flag = flag_of(location)
        known = MEDMNIST_2D.get(flag)
        # Modality only matters to pretraining; an unknown flag still reads fine.
        tags = SourceTags(source=flag, modality=known.modality if known else "microscopy")
    else:
        flag, known = Path(location).stem, None
        tags = SourceTags(source=flag, modality="auto")
    reader = registry.build("datasets", kind, location, tags, options=options)
    if not callable(getattr(reader, "split_arrays", None)):
        raise NotBuiltError(
            f"dataset kind {kind!r} has no split_arrays(split) (train/val/test arrays), "
            "so it cannot be a benchmark yet; only readers providing it can"
        )
    # A reader that builds its benchmark into a file (the demo) names the file and
    # the benchmark, so results and the feature cache key point at the file.
    built = getattr(reader, "benchmark_file", None)
    if built is not None:
        location = str(built)
        _check_npz_layout(location)
        flag = str(getattr(reader, "benchmark_name", None) or flag_of(location))
    splits = {s: reader.split_arrays(s) for s in SPLITS}
    task, num_classes = _check_labels(location, splits, known)
    side = int(splits["train"][0].shape[1])
    stat = os.stat(location)
    fingerprint = f"{os.path.abspath(location)}:{stat.st_size}:{stat.st_mtime_ns}"
    return Benchmark(flag, location, task, num_classes, side, splits, fingerprint)


def _check_npz_layout(path: str) -> None:
    """Missing keys, wrong shapes or dtypes → an error naming the file and the key."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path}: not a readable .npz file: {exc}") from None
    with zf, np.load(path, mmap_mode=None, allow_pickle=False) as npz:
        names = set(npz.files)
        for split in SPLITS:
            for key in (f"{split}_images", f"{split}_labels"):
                if key not in names:
                    raise ConfigError(
                        f"{path}: missing key {key!r} (the file has: {', '.join(sorted(names))})"
                    )
        sides = set()
        for split in SPLITS:
            key = f"{split}_labels"
            labels = npz[key]
            if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
                raise ConfigError(
                    f"{path}: key {key!r} has dtype {labels.dtype}; labels must be integers"
                )
            if labels.ndim != 2:
                raise ConfigError(
                    f"{path}: key {key!r} has shape {labels.shape}; expected (N, 1) or (N, L)"
                )
        with zipfile.ZipFile(path) as z:
            for split in SPLITS:
                key = f"{split}_images"
                with z.open(key + ".npy") as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(f)
                if np.dtype(dtype) != np.uint8:
                    raise ConfigError(f"{path}: key {key!r} has dtype {dtype}; expected uint8")
                square = len(shape) in (3, 4) and shape[1] == shape[2]
                if not square or (len(shape) == 4 and shape[3] != 3):
                    raise ConfigError(
                        f"{path}: key {key!r} has shape {tuple(shape)}; "
                        "expected (N, H, H) gray or (N, H, H, 3) RGB"
                    )
                sides.add((shape[1], len(shape)))
                n_labels = len(npz[f"{split}_labels"])
                if n_labels != shape[0]:
                    raise ConfigError(
                        f"{path}: key {key!r} has {shape[0]} images but "
                        f"{split}_labels has {n_labels} rows"
                    )
        if len(sides) > 1:
            raise ConfigError(f"{path}: the splits' images differ in size or channels: {sides}")


def _check_labels(
    path: str, splits: dict[str, tuple[np.ndarray, np.ndarray]], known: BenchmarkInfo | None
) -> tuple[str, int]:
    widths = {s: (1 if y.ndim == 1 else y.shape[1]) for s, (_, y) in splits.items()}
    if len(set(widths.values())) > 1:
        raise ConfigError(f"{path}: label widths differ between splits: {widths}")
    width = widths["train"]
    if width > 1:
        task, num = "multi-label", width
    else:
        # An unknown file's classes are those its train split uses: a label that only
        # val or test holds has no trained output, and would silently score as wrong.
        train = splits["train"][1]
        top = int(train.max()) if len(train) else 1
        num = known.num_classes if known else max(2, top + 1)
        task = known.task if known else ("binary" if num == 2 else "multi-class")
    if known is not None and (task != known.task or num != known.num_classes):
        raise ConfigError(
            f"{path}: labels look like {task} with {num} classes, but "
            f"{flag_of(path)} is {known.task} with {known.num_classes}"
        )
    for split, (_, y) in splits.items():
        key = f"{split}_labels"
        low, high = (0, 1) if task == "multi-label" else (0, num - 1)
        if len(y) and (int(y.min()) < low or int(y.max()) > high):
            outside = (y < low) | (y > high)
            values = np.unique(y[outside])
            shown = ", ".join(str(int(v)) for v in values[:5]) + (
                ", ..." if len(values) > 5 else ""
            )
            if task == "multi-label":
                source = ""
            elif known:
                source = f" (MedMNIST's {flag_of(path)})"
            else:
                source = " (the classes the train split uses)"
            raise ConfigError(
                f"{path}: key {key!r} holds label{'s' if len(values) > 1 else ''} {shown} "
                f"out of range [{low}, {high}] ({int(outside.sum())} of {y.size} entries) "
                f"for a {task} task with {num} "
                f"{'labels' if task == 'multi-label' else 'classes'}{source}"
            )
    if len(splits["train"][1]) == 0 or len(splits["test"][1]) == 0:
        raise ConfigError(f"{path}: the train and test splits must not be empty")
    return task, num


def preprocess(
    images: np.ndarray,
    size: int,
    device: torch.device | str,
    augment: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 ``(B, H, W[, 3])`` → normalised float ``(B, 3, size, size)`` as the study:
    gray repeated to 3 channels, bilinear resize, mean 0.5 / std 0.5. With a generator,
    the study's probe augmentation is applied before normalising (``probe_augment``)."""
    with warnings.catch_warnings():
        # Benchmark images are often memory-mapped read-only. Nothing writes to this
        # view: .float() below makes the first copy, so no extra copy is made here.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        x = torch.as_tensor(np.ascontiguousarray(images)).to(device)
    x = x.unsqueeze(-1).expand(*x.shape, 3) if x.ndim == 3 else x
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if augment is not None:
        x = probe_augment(x, augment)
    return (x - 0.5) / 0.5


def probe_augment(
    x: torch.Tensor, gen: torch.Generator, degrees: float = 30.0, padding: int = 4
) -> torch.Tensor:
    """The study's linear-probe augmentation on ``(B, C, H, W)`` in [0, 1]: a random
    rotation in ±``degrees`` and a random crop of the image padded by ``padding`` px
    (torchvision's RandomRotation(30) + RandomCrop(size, padding=4), fill 0), done as
    one batched affine warp with a per-image angle and integer shift."""
    b, _, h, w = x.shape
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(degrees)
    shift = torch.randint(-padding, padding + 1, (b, 2), generator=gen).float()
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    # affine_grid works in [-1, 1] coordinates: a shift of s px is 2 s / side.
    theta[:, 0, 2] = 2 * shift[:, 0] / w
    theta[:, 1, 2] = 2 * shift[:, 1] / h
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
