"""The offline demo benchmark: three labelled tasks in the MedMNIST ``.npz`` layout, cut
from real medical images that ship inside installed packages (no download).

``biovfm eval MODEL --benchmark demo`` evaluates all three; ``demo:modality``,
``demo:texture`` or ``demo:plane`` picks one. Each task is built once (about a second) into
``$BIOVFM_CACHE/demo/`` (default ``~/.cache/biovfm/demo/``) as
``demo_<task>_<side>_<digest of this module>.npz``, written atomically, with the MedMNIST keys
``{train,val,test}_images`` (uint8 ``(N, 64, 64)`` gray) and ``{split}_labels``
(uint8 ``(N, 1)``). The build is seeded: the same packages give the same arrays.

Sources (all read from the installed packages, see ``demo.py`` for their origins):

========================  ============================================  =========
class                     images                                        package
========================  ============================================  =========
ct                        ``CT_small.dcm``, ``693_J2KI.dcm``,           pydicom
                          ``J2K_pixelrep_mismatch.dcm`` (head)
mr                        ``MR_small.dcm``, ``examples_overlay.dcm``    pydicom
                          (abdomen); ``MR2_UNCI.dcm`` (shoulder)        pydicom-data
                          axial slices of ``example4d.nii.gz``          nibabel
                          (EPI brain) and ``anatomical.nii`` (T1 brain)
us                        ``examples_rgb_color.dcm``,                   pydicom
                          ``examples_palette.dcm``, ``examples_jpeg2k.dcm``,
                          ``examples_ybr_color.dcm`` (30-frame cine)
microscopy                ``immunohistochemistry`` (IHC colon tissue),  scikit-image
                          ``cell`` (phase contrast)
fundus                    ``retina``, ``microaneurysms``                scikit-image
xray                      ``RG1_UNCI.dcm`` (chest), ``RG3_UNCI.dcm``    pydicom-data
                          (leg), NEMA's computed radiographs
axial / coronal /         every slice of the MNI152 2009a T1 template   nilearn
sagittal (plane task)     (``mni_icbm152_t1_tal_nlin_sym_09a_converted``,
                          1 mm) and of ``anatomical.nii`` (T1, 2 mm)    nibabel
========================  ============================================  =========

pydicom-data's files are found with ``get_testdata_file(..., download=False)`` and
nilearn's template is read from its package folder: neither ever downloads.
pydicom-data's CT (``693_UNCI``) is the scan pydicom's ``693_J2KI`` already gives, so
it adds nothing. ``example4d.nii.gz`` is not in the plane task: its 24 EPI slices
make coronal and sagittal slices thin strips, a shape cue no other volume has.

How splits are made (disjoint pixels, not only disjoint samples)
    Every 2D image is divided into a 5 x 5 grid of blocks; of the blocks that are
    mostly tissue (not background), a seeded draw gives 60 % to train, 20 % to val
    and 20 % to test (at least one each), and a patch (0.8 of a block side, at a
    random offset) is cut inside one block only, so no test pixel is ever in a
    train patch. Volumes are split by slab instead: contiguous runs of the axial
    slices that show enough of the head (60 % / 20 % / 20 %), each slice used
    whole (the plane task: padded to a square, then a random crop of 0.9 of its
    side, so the few slices of a slab give different images). Cine frames share
    their file's block split.
    Patches are drawn with replacement from the allowed blocks (a random offset,
    and for ``texture`` a random flip / 90° rotation), so classes are balanced
    exactly; the same block may yield several, different patches of one split.
    Modality and texture use the same images: they are not source-disjoint (with
    one to five images per class there is too little to hold whole images out), only
    region-disjoint. The plane task has two brain volumes, too few to hold one out
    per split, so each is split by slab along each slice direction; slices of one
    direction never repeat across splits, but a test axial slice crosses the train
    coronal and sagittal slices in one line of voxels each. The demo pretraining set (``--data`` omitted) reads the same
    packages, so a demo-trained model has seen the test regions without labels.

Task ``modality`` (easy; 6 classes, balanced: 60 / 20 / 40 per class →
train 360, val 120, test 240)
    Labels 0 ct, 1 mr, 2 us, 3 microscopy, 4 fundus, 5 xray. Each patch is windowed
    to its image's 1st-99th percentile (a display window), converted to gray.
    Brightness, layout and contrast all carry the class, so raw-pixel logistic
    regression (scikit-learn, standardised pixels, C = 0.01) is well above chance:
    test accuracy 0.35, AUC 0.70 (chance 0.17 / 0.5).

Task ``texture`` (hard; 4 classes, balanced: 60 / 20 / 40 per class →
train 240, val 80, test 160)
    Which tissue a patch of texture comes from: 0 colon tissue (IHC), 1 cultured
    cells (phase contrast), 2 retina (fundus photograph), 3 head CT. Each patch is
    standardised on its own (zero mean, unit variance → ``128 + 40 z``), flipped
    and rotated by a random multiple of 90°, so mean brightness, contrast,
    position and orientation tell nothing; only texture (local structure) does.
    A linear function of raw pixels cannot see texture: raw-pixel logistic
    regression is at chance (test accuracy 0.24, AUC 0.50; chance 0.25 / 0.5),
    which makes this the task where features matter: a random-init ViT-Ti already
    reaches linear-probe AUC 0.80.

Task ``plane`` (medium; 3 classes, balanced: 60 / 20 / 40 per class →
train 180, val 60, test 120)
    Which plane a whole brain MR slice is cut in: 0 axial, 1 coronal, 2 sagittal.
    Slices are shown superior up (axial: anterior up), padded square, windowed per
    volume; those with at least 15 % tissue are used. Held-out slabs are the last
    20 % of slices along each direction (the top of the head, the front, the right
    side), so the test asks for the plane of slices unlike the training ones. The
    outline carries the plane: raw-pixel logistic regression reaches test accuracy
    0.71, AUC 0.88 (chance 0.33 / 0.5).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biovfm_core.errors import ConfigError

SPLITS = ("train", "val", "test")
PER_CLASS = {"train": 60, "val": 20, "test": 40}
GRID = 5  # blocks per image side
SHARES = (0.6, 0.2, 0.2)  # of an image's blocks, or a volume's slices, per split
PATCH_OF_BLOCK = 0.8
MIN_STD = 4.0  # grey levels; flatter patches are redrawn (up to MAX_DRAWS tries)
MAX_DRAWS = 20


@dataclass(frozen=True)
class Source:
    """One image (or stack of planes) of the benchmark and the class it serves."""

    name: str
    load: Callable[[], list[np.ndarray]]  # planes, float32 (H, W) gray
    volume: bool = False  # True: planes are slices, split by slab, used whole
    inset: float = 0.0  # share of each side left out (ultrasound: burnt-in text, rulers)
    min_slice_tissue: float = 0.3  # volumes: share of a slice that must be tissue
    jitter: float = 0.0  # volumes: share of the side a whole slice may be shifted by


@dataclass(frozen=True)
class Task:
    classes: tuple[str, ...]
    sources: dict[str, tuple[Source, ...]]  # class → its sources
    standardise: bool  # per-patch z-score + random dihedral transform (texture)
    min_foreground: float  # share of a block that must be tissue, not background


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 3:  # RGB → luma
        img = img[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return img


def _skimage(name: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        import skimage.data

        return [_gray(getattr(skimage.data, name)())]

    return load


def _dicom(name: str, frames: tuple[int, ...] | None = None) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        from .demo import pydicom_test_dir
        from .dicom import load_dicom

        path = os.path.join(pydicom_test_dir(), name)
        if frames is None:
            return [_gray(load_dicom(path))]
        return [_gray(load_dicom(path, f)) for f in frames]

    return load


def _pydicom_data(name: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        from pydicom.data import get_testdata_file

        from .dicom import load_dicom

        # download=False: a missing file must be an error here, never a network wait.
        path = get_testdata_file(name, download=False)
        if path is None:
            raise FileNotFoundError(f"{name} is not installed (pip install pydicom-data)")
        return [_gray(load_dicom(str(path)))]

    return load


@functools.lru_cache(maxsize=4)
def _canonical(path: str) -> np.ndarray:
    """A volume's first frame as float32 in RAS+ axis order (x right, y anterior, z up)."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data[..., 0] if data.ndim == 4 else data


def _brain(where: Callable[[], str], name: str, axis: int) -> Callable[[], list[np.ndarray]]:
    """Every slice of a brain volume across ``axis`` (0 sagittal, 1 coronal, 2 axial),
    superior up (axial: anterior up), left to right in RAS order, padded to a square with
    the volume's background, so the slice's outline (not a centre crop) is kept."""

    def load() -> list[np.ndarray]:
        vol = _canonical(os.path.join(where(), name))
        background = float(vol.min())
        planes = []
        for plane in np.moveaxis(vol, axis, 0):
            plane = plane.T[::-1]  # rows: top = superior (or anterior, axial)
            h, w = plane.shape
            s = max(h, w)
            square = np.full((s, s), background, dtype=np.float32)
            square[(s - h) // 2 : (s - h) // 2 + h, (s - w) // 2 : (s - w) // 2 + w] = plane
            planes.append(square)
        return planes

    return load


def _nilearn_dir() -> str:
    # The templates nilearn ships in its wheel; its fetchers would download instead.
    import nilearn

    return os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")


def _nibabel_dir() -> str:
    from .demo import nibabel_test_dir

    return nibabel_test_dir()


def _nifti(name: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        import nibabel as nib

        from .demo import nibabel_test_dir

        img = nib.load(os.path.join(nibabel_test_dir(), name))
        data = np.asarray(img.dataobj, dtype=np.float32)
        if data.ndim == 4:
            data = data[..., 0]
        return [data[:, :, k].T for k in range(data.shape[2])]  # axial, rows = A-P

    return load


MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
CT = (
    Source("pydicom:CT_small.dcm", _dicom("CT_small.dcm")),
    Source("pydicom:693_J2KI.dcm", _dicom("693_J2KI.dcm")),
    Source("pydicom:J2K_pixelrep_mismatch.dcm", _dicom("J2K_pixelrep_mismatch.dcm")),
)
MR = (
    Source("pydicom:MR_small.dcm", _dicom("MR_small.dcm")),
    Source("pydicom:examples_overlay.dcm", _dicom("examples_overlay.dcm")),
    Source("pydicom-data:MR2_UNCI.dcm", _pydicom_data("MR2_UNCI.dcm")),
    Source("nibabel:example4d.nii.gz", _nifti("example4d.nii.gz"), volume=True),
    Source("nibabel:anatomical.nii", _nifti("anatomical.nii"), volume=True),
)
US = (
    Source("pydicom:examples_rgb_color.dcm", _dicom("examples_rgb_color.dcm"), inset=0.2),
    Source("pydicom:examples_palette.dcm", _dicom("examples_palette.dcm"), inset=0.2),
    Source("pydicom:examples_jpeg2k.dcm", _dicom("examples_jpeg2k.dcm"), inset=0.2),
    Source(
        "pydicom:examples_ybr_color.dcm", _dicom("examples_ybr_color.dcm", (0, 10, 20)), inset=0.2
    ),
)
MICROSCOPY = (
    Source("skimage:immunohistochemistry", _skimage("immunohistochemistry")),
    Source("skimage:cell", _skimage("cell")),
)
FUNDUS = (
    Source("skimage:retina", _skimage("retina")),
    Source("skimage:microaneurysms", _skimage("microaneurysms")),
)
XRAY = (
    Source("pydicom-data:RG1_UNCI.dcm", _pydicom_data("RG1_UNCI.dcm")),
    Source("pydicom-data:RG3_UNCI.dcm", _pydicom_data("RG3_UNCI.dcm")),
)
PLANES = ("sagittal", "coronal", "axial")  # index = the RAS axis the slice is across
BRAINS = (
    ("nilearn", _nilearn_dir, MNI_T1),
    # Not example4d.nii.gz: its 24 EPI slices make coronal and sagittal slices thin
    # strips, a shape cue no other volume has.
    ("nibabel", _nibabel_dir, "anatomical.nii"),
)


def _plane_sources(axis: int) -> tuple[Source, ...]:
    return tuple(
        Source(
            f"{pkg}:{name}:{PLANES[axis]}",
            _brain(where, name, axis),
            volume=True,
            min_slice_tissue=0.15,
            jitter=0.1,
        )
        for pkg, where, name in BRAINS
    )


TASKS: dict[str, Task] = {
    "modality": Task(
        ("ct", "mr", "us", "microscopy", "fundus", "xray"),
        {"ct": CT, "mr": MR, "us": US, "microscopy": MICROSCOPY, "fundus": FUNDUS, "xray": XRAY},
        standardise=False,
        min_foreground=0.5,
    ),
    "texture": Task(
        ("colon tissue", "cells", "retina", "head ct"),
        {
            "colon tissue": (MICROSCOPY[0],),
            "cells": (MICROSCOPY[1],),
            "retina": (FUNDUS[0],),
            "head ct": (CT[2],),
        },
        standardise=True,
        min_foreground=0.9,
    ),
    "plane": Task(
        ("axial", "coronal", "sagittal"),
        {"axial": _plane_sources(2), "coronal": _plane_sources(1), "sagittal": _plane_sources(0)},
        standardise=False,
        min_foreground=0.0,  # volumes only: their slices are chosen by min_slice_tissue
    ),
}


def _load(source: Source, task: str) -> list[np.ndarray]:
    try:
        return source.load()
    except Exception as exc:
        # The task's classes depend on every one of its images: without one (say, no
        # JPEG 2000 decoder for a pydicom file) it is not the documented benchmark.
        raise ConfigError(
            f"demo benchmark {task}: cannot read {source.name}: {type(exc).__name__}: {exc}"
        ) from exc


def _window(planes: list[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([p.ravel() for p in planes])
    lo, hi = np.percentile(values, [1, 99])
    return float(lo), float(max(hi, lo + 1e-6))


@dataclass
class _Regions:
    """Where one source may be cut for each split: (plane, y0, x0, side) boxes."""

    boxes: dict[str, list[tuple[int, int, int, int]]]
    patch: dict[str, int]  # side of the patch cut from a box (0: the whole plane)
    jitter: float = 0.0  # whole planes: share of the side a random crop leaves out


def _shares(n: int, name: str) -> list[int]:
    """Split ``n`` regions 60 / 20 / 20 with at least one each (train, val, test)."""
    if n < len(SPLITS):
        raise ConfigError(f"demo benchmark: {name} has {n} usable regions, fewer than 3")
    val = max(1, round(SHARES[1] * n))
    test = max(1, round(SHARES[2] * n))
    return [n - val - test, val, test]


def _regions(
    source: Source, planes: list[np.ndarray], min_foreground: float, rng: np.random.Generator
) -> _Regions:
    lo, hi = _window(planes)
    background = lo + 0.1 * (hi - lo)
    boxes: dict[str, list[tuple[int, int, int, int]]] = {s: [] for s in SPLITS}
    if source.volume:
        # Slabs of contiguous slices among those showing enough of the body.
        usable = [
            k for k, p in enumerate(planes) if (p > background).mean() >= source.min_slice_tissue
        ]
        cuts = np.cumsum([0, *_shares(len(usable), source.name)])
        for split, a, b in zip(SPLITS, cuts[:-1], cuts[1:], strict=True):
            for k in usable[a:b]:
                boxes[split].append((k, 0, 0, min(planes[k].shape)))
        return _Regions(boxes, {s: 0 for s in SPLITS}, source.jitter)
    full_h, full_w = planes[0].shape
    top, left = round(source.inset * full_h), round(source.inset * full_w)
    h, w = full_h - 2 * top, full_w - 2 * left
    side = min(h, w) // GRID
    # Non-square images: the grid spans the short side, centred on the long one.
    y_pad, x_pad = top + (h - GRID * side) // 2, left + (w - GRID * side) // 2
    usable: dict[tuple[int, int], list[int]] = {}  # block origin → planes where it is tissue
    for b in range(GRID * GRID):
        y0, x0 = y_pad + (b // GRID) * side, x_pad + (b % GRID) * side
        for k, plane in enumerate(planes):
            if (plane[y0 : y0 + side, x0 : x0 + side] > background).mean() >= min_foreground:
                usable.setdefault((y0, x0), []).append(k)
    origins = list(usable)
    order = rng.permutation(len(origins))
    cuts = np.cumsum([0, *_shares(len(origins), source.name)])
    for split, a, b in zip(SPLITS, cuts[:-1], cuts[1:], strict=True):
        for i in order[a:b]:
            y0, x0 = origins[i]
            boxes[split].extend((k, y0, x0, side) for k in usable[(y0, x0)])
    patch = max(4, round(PATCH_OF_BLOCK * side))
    return _Regions(boxes, {s: patch for s in SPLITS})


def _resize(img: np.ndarray, side: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    big = max(t.shape[-2:]) > side
    out = F.interpolate(t, size=(side, side), mode="area" if big else "bilinear")
    return out[0, 0].numpy()


def _cut(
    planes: list[np.ndarray],
    box: tuple[int, int, int, int],
    patch: int,
    rng: np.random.Generator,
    jitter: float = 0.0,
) -> np.ndarray:
    k, y0, x0, side = box
    plane = planes[k]
    if patch == 0:  # a whole slice, its long side cropped to square at the centre
        h, w = plane.shape
        s = min(h, w)
        plane = plane[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        if jitter:  # a random shift: the few slices of a slab give different images
            cut = round(jitter * s)
            dy, dx = rng.integers(0, cut + 1, size=2)
            plane = plane[dy : dy + s - cut, dx : dx + s - cut]
        return plane
    dy, dx = rng.integers(0, side - patch + 1, size=2)
    return plane[y0 + dy : y0 + dy + patch, x0 + dx : x0 + dx + patch]


def _to_uint8(patch: np.ndarray, window: tuple[float, float], standardise: bool) -> np.ndarray:
    if standardise:
        z = (patch - patch.mean()) / max(float(patch.std()), 1e-6)
        scaled = 128.0 + 40.0 * z
    else:
        lo, hi = window
        scaled = (patch - lo) / (hi - lo) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _draw(
    planes: list[np.ndarray],
    regions: _Regions,
    split: str,
    window: tuple[float, float],
    standardise: bool,
    side: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One patch of ``split``'s regions; patches that are flat once windowed (a
    saturated or empty corner) are redrawn, so every image shows structure."""
    boxes = regions.boxes[split]
    for _ in range(MAX_DRAWS):
        box = boxes[rng.integers(len(boxes))]
        patch = _cut(planes, box, regions.patch[split], rng, regions.jitter)
        if standardise:
            patch = np.rot90(patch, k=int(rng.integers(4)))
            if rng.integers(2):
                patch = patch[:, ::-1]
        img = _to_uint8(_resize(patch, side), window, standardise)
        if img.std() >= MIN_STD:
            break
    return img


def build_arrays(task: str, side: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """The task's six MedMNIST arrays, deterministic in (task, side, seed)."""
    if task not in TASKS:
        raise ConfigError(f"demo benchmark: unknown task {task!r}; tasks: {', '.join(TASKS)}")
    spec = TASKS[task]
    # One generator per (task, class, source, split): adding a source never changes
    # the patches of another.
    arrays: dict[str, np.ndarray] = {}
    loaded = {s.name: _load(s, task) for srcs in spec.sources.values() for s in srcs}
    windows = {name: _window(planes) for name, planes in loaded.items()}
    regions: dict[str, _Regions] = {}
    for srcs in spec.sources.values():
        for s in srcs:
            rng = np.random.default_rng([seed, _stable(s.name)])
            regions[s.name] = _regions(s, loaded[s.name], spec.min_foreground, rng)
    for split_i, split in enumerate(SPLITS):
        images, labels = [], []
        for label, name in enumerate(spec.classes):
            srcs = [s for s in spec.sources[name] if regions[s.name].boxes[split]]
            if not srcs:
                raise ConfigError(f"demo benchmark {task}: no {split} region for class {name}")
            rng = np.random.default_rng([seed, _stable(task), label, split_i])
            for i in range(PER_CLASS[split]):
                s = srcs[i % len(srcs)]
                images.append(_draw(loaded[s.name], regions[s.name], split, windows[s.name],
                                    spec.standardise, side, rng))  # fmt: skip
                labels.append(label)
        order = np.random.default_rng([seed, _stable(task), 99, split_i]).permutation(len(labels))
        arrays[f"{split}_images"] = np.stack(images)[order]
        arrays[f"{split}_labels"] = np.array(labels, dtype=np.uint8)[order].reshape(-1, 1)
    return arrays


def _stable(text: str) -> int:
    """A hash of ``text`` that is the same in every process (``hash`` is salted)."""
    import zlib

    return zlib.crc32(text.encode())


def default_root() -> Path:
    base = os.environ.get("BIOVFM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "biovfm"
    )
    return Path(base) / "demo"


@functools.cache
def build_version() -> str:
    """A digest of this module: any change to how tasks are built names a new file,
    so a cache filled by another version is never read as this one's benchmark."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]


def benchmark_file(task: str, side: int = 64, root: str | os.PathLike[str] | None = None) -> Path:
    """The task's ``.npz``, built (atomically) on first use and reused after."""
    import io

    from biovfm_core.files import write_atomic

    path = Path(root or default_root()) / f"demo_{task}_{side}_{build_version()}.npz"
    if not path.is_file():
        buf = io.BytesIO()
        np.savez_compressed(buf, **build_arrays(task, side))
        write_atomic(path, buf.getvalue())
    return path


class DemoBenchmarkReader:
    """One demo task as a benchmark reader (``--benchmark demo:<task>``).

    Options
    -------
    side: image side of the built file (MedMNIST sizes: 28, 64, 128 or 224).
    root: folder the built ``.npz`` is cached in (default ``$BIOVFM_CACHE/demo``).
    """

    def __init__(
        self, location: str, tags: object = None, *, side: int = 64, root: str = ""
    ) -> None:
        task = location.strip()
        if task not in TASKS:
            raise ConfigError(
                f"--benchmark demo:{task}: unknown demo task; tasks: {', '.join(TASKS)}"
            )
        if side not in (28, 64, 128, 224):
            raise ConfigError(f"demo benchmark: side must be 28, 64, 128 or 224, not {side}")
        self.task = task
        self.benchmark_name = f"demo_{task}"
        self.benchmark_file = str(benchmark_file(task, side, root or None))

    def split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of one split as the MedMNIST reader gives them: uint8
        images, int64 labels ``(N,)``."""
        if split not in SPLITS:
            raise ConfigError(f"demo benchmark: split must be one of {SPLITS}, not {split!r}")
        with np.load(self.benchmark_file, allow_pickle=False) as npz:
            return npz[f"{split}_images"], npz[f"{split}_labels"][:, 0].astype(np.int64)
