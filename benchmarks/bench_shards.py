"""Shards at the study's scale: size, opening, loading and packing (issue 17).

Five parts, each printing one Markdown table:

* ``ratios``: PNG compression (``format.encode("png")``, as the packer stores
  images) against the raw array, per kind of image, measured on real images that
  ship inside installed packages (pydicom's test CT/MR/CR/US/NM, scikit-image's
  fundus, pathology and photos), at native size and capped at 512 px.
* ``counts``: the bytes and chunk count BioVFM-21M would take as shards, from
  ``shared/data/biovfm21m_sources.csv``'s image counts, an explicit table of
  assumed native sizes per source (``SIZES``, each labelled with where it comes
  from) and the measured ratios; at native size and at a 512-px cap.
* ``open``: a 21M-entry shard set (metadata only: ``biovfm-index.npz`` built
  column-wise with the study's source/modality mix and realistic uris, the
  manifest, a litdata ``index.json`` with the chunk count ``counts`` gives; no
  chunk files) opened in a fresh process, alone and followed by a 1% subset;
  wall time and peak RSS of each.
* ``pack``: ``biovfm data pack`` throughput (images/s, default encoding) on realistic sources
  (512x512 CT DICOMs, a CT NIfTI volume, a folder of 1024x1024 X-ray PNGs) at
  1 and 2 workers. The shards it writes are kept for ``loader``.
* ``loader``: images/s of the training loader (decode + DINOv2 views + collate,
  as ``bench_loader.py``) from the shards against the original files, at 0, 1 and
  2 workers.

    python benchmarks/bench_shards.py ratios
    python benchmarks/bench_shards.py counts [--chunk-bytes 64MB] [--cap 512]
    python benchmarks/bench_shards.py open [--entries 21000000] [--dir /tmp]
    python benchmarks/bench_shards.py pack --dir /tmp/bench-shards [--images 256]
    python benchmarks/bench_shards.py loader --dir /tmp/bench-shards

Nothing here is a test: speed is never asserted (``tests/test_benchmarks.py`` only
runs the parts on tiny settings).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCES_CSV = Path(os.environ.get("BIOVFM_SHARED", "/work/shared")) / "data/biovfm21m_sources.csv"
# The packer's default chunk size (biovfm_core.data.shards.pack: 64 MiB).
DEFAULT_CHUNK_BYTES = 64 << 20  # pack.DEFAULT_CHUNK_BYTES
DEFAULT_PART_SIZE = 4096  # pack.DEFAULT_PART_SIZE: images per worker part
# Per image besides its pixels: uri (~50 B), source/modality/anatomy strings, label,
# scale/offset and litdata's per-item header. An estimate; it is ~0.1% of an image.
ITEM_OVERHEAD_BYTES = 160


def _peak_mb() -> float:
    """This process's peak RSS in MiB.

    ``VmHWM`` (the high-water mark of this process's own memory map) rather than
    ``ru_maxrss``: Linux carries the parent's high-water mark into ``ru_maxrss``
    across fork + exec, so a child started by a parent holding 600 MB reports at
    least 600 MB whatever it does itself.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _load() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


# ----------------------------------------------------------------------------- ratios
# Which real images stand for each kind of image. Kinds ending in 16 are stored as
# 16-bit (CT, MR, X-ray, NM from DICOM: the packer keeps their depth); "8" kinds are
# 8-bit versions of the same radiology images (percentile-windowed), as the sources
# that ship 8-bit PNG/JPEG give them.
KIND_SAMPLES: dict[str, tuple[str, ...]] = {
    "ct16": ("dcm:693_UNCR.dcm", "dcm:J2K_pixelrep_mismatch.dcm", "dcm:CT_small.dcm"),
    "mr16": (
        "dcm:MR2_UNCR.dcm",
        "dcm:MR-SIEMENS-DICOM-WithOverlays.dcm",
        "dcm:examples_overlay.dcm",
    ),
    "xray16": ("dcm:RG1_UNCR.dcm", "dcm:RG3_UNCR.dcm"),
    "nm16": ("dcm:JPEG2000_UNC.dcm",),
    "xray8": ("dcm8:RG1_UNCR.dcm", "dcm8:RG3_UNCR.dcm"),
    "rad8": ("dcm8:693_UNCR.dcm", "dcm8:MR2_UNCR.dcm", "dcm8:RG1_UNCR.dcm", "dcmgray:US1_UNCR.dcm"),
    "us8": ("dcmgray:US1_UNCR.dcm", "dcmgray:OBXXXX1A.dcm"),
    "fundus_rgb": ("sk:retina",),
    "path_rgb": ("sk:immunohistochemistry",),
    # No dermoscopy or endoscopy photograph ships in an installed package: natural
    # colour photographs stand in for them (labelled so in the table).
    "photo_rgb": ("sk:astronaut", "sk:coffee", "sk:chelsea"),
    "gray8": ("sk:cell", "sk:microaneurysms"),
}


def _to8(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.5))
    scaled = (image.astype(np.float64) - lo) / max(hi - lo, 1e-9)
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def sample_image(ref: str) -> np.ndarray:
    """One real image, as the reader gives it (``dcm8:``/``dcmgray:`` make it 8-bit gray)."""
    kind, _, name = ref.partition(":")
    if kind == "sk":
        import skimage.data

        return np.asarray(getattr(skimage.data, name)())
    from biovfm_readers.dicom import load_dicom
    from pydicom.data import get_testdata_file

    image = load_dicom(get_testdata_file(name))
    if kind == "dcmgray" and image.ndim == 3:
        import cv2

        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if kind == "dcm8":
        return _to8(image)
    return image


def cap_side(image: np.ndarray, cap: int | None) -> np.ndarray:
    """Shrink so the longer side is at most ``cap`` (area interpolation), dtype kept."""
    import cv2

    h, w = image.shape[:2]
    if cap is None or max(h, w) <= cap:
        return image
    s = cap / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


@dataclass
class Ratio:
    """raw bytes / PNG bytes of a kind: the mean PNG size per raw byte over its images
    (each image weighs the same, whatever its size), inverted."""

    kind: str
    images: str
    native: float
    capped: float


def measure_ratios(cap: int = 512, kinds: Sequence[str] | None = None) -> dict[str, Ratio]:
    from biovfm_core.data.shards.format import encode, to_stored

    out: dict[str, Ratio] = {}
    for kind in kinds or KIND_SAMPLES:
        native, capped, shapes = [], [], []
        for ref in KIND_SAMPLES[kind]:
            stored, _, _ = to_stored(sample_image(ref))
            small = cap_side(stored, cap)
            native.append(len(encode(stored, "png")) / stored.nbytes)
            capped.append(len(encode(small, "png")) / small.nbytes)
            shape = "x".join(str(s) for s in stored.shape)
            shapes.append(f"{ref.split(':', 1)[1]} {shape} {stored.dtype}")
        out[kind] = Ratio(kind, "; ".join(shapes), 1 / np.mean(native), 1 / np.mean(capped))
    return out


def cmd_ratios(args: argparse.Namespace) -> dict[str, Ratio]:
    ratios = measure_ratios(args.cap)
    print(f"PNG level 1 (format.encode) vs raw; {_load()}")
    print(f"| kind | images (as stored) | raw/PNG native | raw/PNG at {args.cap} px cap |")
    print("|---|---|---:|---:|")
    for r in ratios.values():
        print(f"| {r.kind} | {r.images} | {r.native:.2f} | {r.capped:.2f} |")
    return ratios


# ----------------------------------------------------------------------------- counts
@dataclass(frozen=True)
class Size:
    """A typical image of a source: height, width, channels, bits, ratio kind, basis."""

    h: int
    w: int
    c: int
    bits: int
    kind: str
    basis: str  # "released" = the size the source ships at; "assumed" = our estimate


# Typical native 2-D image per source. Most sources vary in size; these are
# round typical values. "released": the size the source is distributed at (its
# paper / download page); "assumed": our estimate for a source of mixed or
# undocumented sizes. Volumes (HCP, ULS23, TDSC-ABUS) give their axial slice.
# The three multi-modality collections were normalised to 2-D 8-bit images by
# their authors; their size is assumed.
SIZES: dict[str, Size] = {
    "BUS-B": Size(570, 760, 1, 8, "us8", "assumed"),
    "ChestXray-14": Size(1024, 1024, 1, 8, "xray8", "released: 1024x1024 8-bit PNG"),
    "CheXpert": Size(2320, 2828, 1, 8, "xray8", "assumed: full-res JPEG ~2300x2800"),
    "EchoNet-Dynamic": Size(112, 112, 1, 8, "us8", "released: 112x112 AVI frames"),
    "Endo-FM": Size(576, 720, 3, 8, "photo_rgb", "assumed: SD video frames"),
    "FastMRI": Size(320, 320, 1, 16, "mr16", "released: 320x320 reconstructions"),
    "fitzpatrick17k": Size(480, 640, 3, 8, "photo_rgb", "assumed: web photographs"),
    "HCP": Size(311, 260, 1, 16, "mr16", "released: 0.7 mm T1w 260x311x260, axial"),
    "ISIC-2024": Size(139, 139, 3, 8, "photo_rgb", "released: ~139x139 15-mm crops"),
    "ISIC-Archive": Size(1024, 1024, 3, 8, "photo_rgb", "assumed: mixed, up to 6000x4000"),
    "Kvasir-Capsule": Size(336, 336, 3, 8, "photo_rgb", "released: 336x336"),
    "LC25000": Size(768, 768, 3, 8, "path_rgb", "released: 768x768"),
    "MIMIC-CXR": Size(2544, 3056, 1, 16, "xray16", "assumed: DICOM ~2500x3000, 12-bit"),
    "Montgomery CXR": Size(4020, 4892, 1, 8, "xray8", "released: 4020x4892 PNG"),
    "NCT-CRC-HE-100K": Size(224, 224, 3, 8, "path_rgb", "released: 224x224 tiles"),
    "Shenzhen CXR": Size(3000, 3000, 1, 8, "xray8", "released: ~3000x3000 PNG"),
    "Object-CXR": Size(2000, 2500, 1, 8, "xray8", "assumed: JPEG ~2000x2500"),
    "OpenI": Size(2000, 2000, 1, 8, "xray8", "assumed: PNG ~2000x2000"),
    "PadChest": Size(2500, 2500, 1, 16, "xray16", "assumed: 16-bit PNG ~2500x2500"),
    "PatchCamelyon": Size(96, 96, 3, 8, "path_rgb", "released: 96x96 patches"),
    "Quilt-1M": Size(720, 1280, 3, 8, "path_rgb", "assumed: HD video frames"),
    "RadImageNet": Size(224, 224, 1, 8, "rad8", "released: 224x224 PNG"),
    "RP3D-DiagDS": Size(512, 512, 1, 8, "rad8", "assumed: 8-bit slices, 512x512"),
    "SAM-Med2D-20M": Size(512, 512, 1, 8, "rad8", "assumed: 8-bit PNG, 512x512"),
    "SARAS-ESAD": Size(1080, 1920, 3, 8, "photo_rgb", "released: 1920x1080 video frames"),
    "TDSC-ABUS": Size(600, 850, 1, 8, "us8", "assumed: ABUS volume slices"),
    "ULS23": Size(256, 256, 1, 16, "ct16", "assumed: 256x256x128 lesion VOIs"),
    "UW-Madison GI": Size(310, 360, 1, 16, "mr16", "released: 16-bit PNG 266-360 px"),
    "VinDr-BodyPartXR": Size(2000, 2500, 1, 16, "xray16", "assumed: DICOM"),
    "VinDr-CXR": Size(2500, 3000, 1, 16, "xray16", "assumed: DICOM ~2500x3000"),
    "VinDr-Mammo": Size(3518, 2800, 1, 16, "xray16", "assumed: FFDM DICOM"),
    "VinDr-Multiphase": Size(512, 512, 1, 16, "ct16", "released: CT DICOM 512x512"),
    "VinDr-PCXR": Size(2000, 2000, 1, 16, "xray16", "assumed: DICOM"),
    "VinDr-RibCXR": Size(2500, 3000, 1, 16, "xray16", "assumed: DICOM"),
    "VinDr-SpineXr": Size(2500, 3000, 1, 16, "xray16", "assumed: DICOM"),
    "DCA1": Size(300, 300, 1, 8, "xray8", "released: 300x300"),
    "AOD": Size(512, 512, 3, 8, "fundus_rgb", "assumed: resized augmented set"),
    "ARIA": Size(576, 768, 3, 8, "fundus_rgb", "released: 768x576"),
    "CHASE_DB1": Size(960, 999, 3, 8, "fundus_rgb", "released: 999x960"),
    "DDR": Size(2000, 2000, 3, 8, "fundus_rgb", "assumed: mixed cameras"),
    "DR-HAGIS": Size(2500, 3500, 3, 8, "fundus_rgb", "assumed: mixed cameras"),
    "DRIONS-DB": Size(400, 600, 3, 8, "fundus_rgb", "released: 600x400"),
    "DRIVE": Size(584, 565, 3, 8, "fundus_rgb", "released: 565x584"),
    "DIARETDB1": Size(1152, 1500, 3, 8, "fundus_rgb", "released: 1500x1152"),
    "DrSAM": Size(512, 512, 1, 8, "xray8", "assumed"),
    "Drishti-GS1": Size(1750, 2050, 3, 8, "fundus_rgb", "released: ~2050x1750"),
    "EyePACS": Size(2000, 3000, 3, 8, "fundus_rgb", "assumed: JPEG, 433x289 to 5184x3456"),
    "FIVES": Size(2048, 2048, 3, 8, "fundus_rgb", "released: 2048x2048"),
    "HRF": Size(2336, 3504, 3, 8, "fundus_rgb", "released: 3504x2336"),
    "IOSTAR": Size(1024, 1024, 3, 8, "fundus_rgb", "released: 1024x1024"),
    "LES-AV": Size(1444, 1620, 3, 8, "fundus_rgb", "assumed"),
    "Messidor-2": Size(1488, 2240, 3, 8, "fundus_rgb", "assumed: 1440x960 to 2304x1536"),
    "OCTA-500": Size(400, 400, 1, 8, "gray8", "released: 400x400 / 304x304 projections"),
    "ORVS": Size(1400, 1400, 3, 8, "fundus_rgb", "assumed"),
    "RIM-ONE DL": Size(600, 600, 3, 8, "fundus_rgb", "assumed: optic-disc crops"),
    "ROSE-1": Size(304, 304, 1, 8, "gray8", "released: 304x304"),
    "ROSSA": Size(320, 320, 1, 8, "gray8", "released: 320x320"),
    "STARE": Size(605, 700, 3, 8, "fundus_rgb", "released: 700x605"),
    "VICAVR": Size(584, 768, 3, 8, "fundus_rgb", "released: 768x584"),
    "XCAD": Size(512, 512, 1, 8, "xray8", "released: 512x512"),
    "E-ophtha": Size(1696, 2544, 3, 8, "fundus_rgb", "assumed: 1440x960 to 2544x1696"),
}

# How the multi-modality collections split between modalities (only the 21M
# simulation's modality mix uses this; their bytes use one size). Assumed shares.
MIXED_SHARES: dict[str, dict[str, float]] = {
    "RadImageNet": {"ct": 0.5, "mr": 0.35, "us": 0.15},
    "RP3D-DiagDS": {"ct": 0.45, "mr": 0.3, "xray": 0.2, "us": 0.03, "nm": 0.02},
    "SAM-Med2D-20M": {
        "ct": 0.45,
        "mr": 0.4,
        "xray": 0.03,
        "nm": 0.02,
        "dermoscopy": 0.02,
        "endoscopy": 0.03,
        "us": 0.03,
        "fundus": 0.02,
    },
}

_CSV_MODALITY = {
    "x-ray": "xray", "ct": "ct", "mr": "mr", "us": "us", "nm": "nm", "dermoscopy": "dermoscopy",
    "endoscopy": "endoscopy", "microscopy": "microscopy", "fundus": "fundus", "octa": "octa",
}  # fmt: skip


@dataclass(frozen=True)
class Source:
    name: str
    images: int
    modalities: tuple[str, ...]


def study_sources(path: Path = SOURCES_CSV) -> list[Source]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [
        Source(
            r["dataset"],
            int(r["images"]),
            tuple(_CSV_MODALITY[m.strip().lower()] for m in r["modalities"].split(",")),
        )
        for r in rows
    ]


def chunk_bytes_int(spec: str | int) -> int:
    from litdata.utilities.format import _convert_bytes_to_int

    if isinstance(spec, int) or spec.isdigit():
        return int(spec)
    return _convert_bytes_to_int(spec)


def _chunks(images: int, image_bytes: float, chunk_bytes: int, part_size: int) -> int:
    """Chunks the packer writes for ``images`` of ``image_bytes`` each: every part of
    ``part_size`` images is written by its own litdata writer, so each part ends
    with a partly filled chunk."""
    full, rest = divmod(images, part_size)
    per_part = math.ceil(part_size * image_bytes / chunk_bytes)
    return full * per_part + (math.ceil(rest * image_bytes / chunk_bytes) if rest else 0)


def _capped(size: Size, cap: int | None) -> tuple[int, int]:
    if cap is None or max(size.h, size.w) <= cap:
        return size.h, size.w
    s = cap / max(size.h, size.w)
    return max(1, round(size.h * s)), max(1, round(size.w * s))


@dataclass
class CountRow:
    group: str
    sources: int
    images: int
    raw_gb: float
    png_gb: float
    png_gb_cap: float
    chunks: int
    chunks_cap: int


def _group(source: Source) -> str:
    if len(source.modalities) > 1:
        return "mixed (RadImageNet, RP3D, SAM-Med2D)"
    size = SIZES[source.name]
    return f"{source.modalities[0]} {size.bits}-bit"


def estimate(
    ratios: dict[str, Ratio],
    cap: int,
    chunk_bytes: int,
    sources: list[Source],
    part_size: int = DEFAULT_PART_SIZE,
) -> list[CountRow]:
    rows: dict[str, CountRow] = {}
    for s in sources:
        size = SIZES[s.name]
        ratio = ratios[size.kind]
        raw = size.h * size.w * size.c * (size.bits // 8)
        ch, cw = _capped(size, cap)
        raw_cap = ch * cw * size.c * (size.bits // 8)
        row = rows.setdefault(_group(s), CountRow(_group(s), 0, 0, 0.0, 0.0, 0.0, 0, 0))
        row.sources += 1
        row.images += s.images
        row.raw_gb += s.images * raw / 1e9
        per_image = raw / ratio.native + ITEM_OVERHEAD_BYTES
        # An image the cap leaves alone keeps its native ratio.
        ratio_cap = ratio.capped if (ch, cw) != (size.h, size.w) else ratio.native
        per_image_cap = raw_cap / ratio_cap + ITEM_OVERHEAD_BYTES
        row.png_gb += s.images * per_image / 1e9
        row.png_gb_cap += s.images * per_image_cap / 1e9
        row.chunks += _chunks(s.images, per_image, chunk_bytes, part_size)
        row.chunks_cap += _chunks(s.images, per_image_cap, chunk_bytes, part_size)
    out = sorted(rows.values(), key=lambda r: -r.png_gb)
    total = CountRow("**total**", 0, 0, 0.0, 0.0, 0.0, 0, 0)
    for r in out:
        for k in ("sources", "images", "raw_gb", "png_gb", "png_gb_cap", "chunks", "chunks_cap"):
            setattr(total, k, getattr(total, k) + getattr(r, k))
    return [*out, total]


def cmd_counts(args: argparse.Namespace) -> list[CountRow]:
    sources = study_sources(Path(args.sources))
    missing = [s.name for s in sources if s.name not in SIZES]
    if missing:
        raise SystemExit(f"no assumed size for {missing}: add them to SIZES")
    ratios = measure_ratios(args.cap)
    chunk = chunk_bytes_int(args.chunk_bytes)
    rows = estimate(ratios, args.cap, chunk, sources)
    print(
        f"{sum(s.images for s in sources):,} images in {len(sources)} sources "
        f"({args.sources}); chunks of {chunk:,} bytes, parts of {DEFAULT_PART_SIZE} images; "
        "PNG ratios "
        + ", ".join(f"{k} {r.native:.2f}/{r.capped:.2f}" for k, r in ratios.items())
        + f" (native/{args.cap} px); {_load()}"
    )
    print(
        f"| group | sources | images | raw TB | PNG shards TB | chunks "
        f"| PNG shards TB, {args.cap} px cap | chunks, {args.cap} px cap |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.group} | {r.sources} | {r.images:,} | {r.raw_gb / 1e3:.3f} | "
            f"{r.png_gb / 1e3:.3f} | {r.chunks:,} | {r.png_gb_cap / 1e3:.3f} | {r.chunks_cap:,} |"
        )
    return rows


# ------------------------------------------------------------------------------- open
@dataclass(frozen=True)
class UriShape:
    """How a source's uris look: ``ROOT/name/<dir>/<leaf>``, ``per_dir`` images a folder."""

    kind: str  # "png", "jpg", "dcm" (one file per image), "nii" (slices of volumes)
    per_dir: int  # images per folder (a study, a series, a case, or a flat folder)
    slices: int = 0  # "nii": slices per volume


# Folder layouts as the sources ship them (approximate): chest X-ray archives keep one
# folder per patient study (1-3 images), DICOM CT one folder per series, NIfTI one
# volume per case folder; the rest are flat or split in large folders.
URI_SHAPES: dict[str, UriShape] = {
    "CheXpert": UriShape("jpg", 2),
    "MIMIC-CXR": UriShape("dcm", 2),
    "PadChest": UriShape("png", 2000),
    "ChestXray-14": UriShape("png", 10000),
    "FastMRI": UriShape("png", 35),
    "HCP": UriShape("nii", 260, 260),
    "ULS23": UriShape("nii", 64 * 200, 64),
    "TDSC-ABUS": UriShape("nii", 350, 350),
    "VinDr-Multiphase": UriShape("dcm", 100),
    "RP3D-DiagDS": UriShape("png", 50),
    "SAM-Med2D-20M": UriShape("png", 5000),
    "RadImageNet": UriShape("png", 2000),
    "Quilt-1M": UriShape("jpg", 10000),
    "ISIC-2024": UriShape("jpg", 20000),
    "EyePACS": UriShape("jpg", 10000),
}
_DEFAULT_SHAPE = UriShape("png", 1000)
ROOT = "/data/biovfm21m"


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """``values`` as zero-padded decimal ASCII, one row of ``width`` bytes each."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] // powers) % 10 + 48).astype(np.uint8)


def _fixed_names(parts: list[bytes | tuple[np.ndarray, int]], n: int) -> np.ndarray:
    """``n`` equal-length names glued from constant bytes and digit fields, as
    one ``(n, length)`` uint8 array (no Python string per name)."""
    cols = [
        np.broadcast_to(np.frombuffer(p, np.uint8), (n, len(p)))
        if isinstance(p, bytes)
        else _digits(*p)
        for p in parts
    ]
    return np.concatenate(cols, axis=1)


def _source_rows(src: Source, n: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """One source's folders (prefix strings), prefix id per row, name bytes, name length."""
    shape = URI_SHAPES.get(src.name, _DEFAULT_SHAPE)
    i = np.arange(n, dtype=np.int64)
    folder = i // shape.per_dir
    folders = int(folder[-1]) + 1 if n else 0
    base = f"{ROOT}/{src.name}/"
    if shape.kind == "nii":
        prefixes = [f"{base}case_{d:06d}/" for d in range(folders)]
        vol = i // shape.slices
        leaf = [b"vol_", (vol, 7), b".nii.gz#axis=2&slice=", (i % shape.slices, 3)]
    elif shape.kind == "dcm":
        prefixes = [
            f"{base}p{d % 100:02d}/p{d:08d}/s{d * 7 + 50000000:08d}/" for d in range(folders)
        ]
        leaf = [b"IM-", (i, 9), b".dcm"]
    else:
        prefixes = [f"{base}images_{d:05d}/" for d in range(folders)]
        leaf = [(i, 8), b"_000.", shape.kind.encode()]
    names = _fixed_names(leaf, n)
    return prefixes, folder, names.reshape(-1), names.shape[1]


def synthetic_index(total: int, sources: list[Source]):  # type: ignore[no-untyped-def]
    """A ``SampleIndex`` of ``total`` rows with the study's per-source share, modality
    mix (``MIXED_SHARES`` for the collections) and uri shapes, built column-wise."""
    from biovfm_core.data.index import SampleIndex
    from biovfm_core.protocols import MODALITIES

    study = sum(s.images for s in sources)
    counts = [s.images * total // study for s in sources]
    counts[int(np.argmax(counts))] += total - sum(counts)
    anatomies = ["unknown"]
    prefixes: list[str] = []
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("prefix", "source", "modality", "names")}
    lengths: list[np.ndarray] = []
    meta = {}
    for sid, (src, n) in enumerate(zip(sources, counts, strict=True)):
        shape = URI_SHAPES.get(src.name, _DEFAULT_SHAPE)
        reader = {"nii": "nifti", "dcm": "dicom"}.get(shape.kind, "folder")
        meta[src.name] = {"reader": reader, "path": f"{ROOT}/{src.name}", "options": {}}
        if n == 0:
            continue
        pre, folder, names, length = _source_rows(src, n)
        cols["prefix"].append((folder + len(prefixes)).astype(np.int32))
        prefixes.extend(pre)
        cols["source"].append(np.full(n, sid, np.int16))
        mod = np.empty(n, np.int8)
        shares = MIXED_SHARES.get(src.name, {src.modalities[0]: 1.0})
        edges = np.round(np.cumsum([0.0, *shares.values()]) * n).astype(np.int64)
        for m, lo, hi in zip(shares, edges[:-1], edges[1:], strict=True):
            mod[lo:hi] = MODALITIES.index(m)
        cols["modality"].append(mod)
        cols["names"].append(names)
        lengths.append(np.full(n, length, np.int64))
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(np.concatenate(lengths))])
    return SampleIndex(
        prefix=np.concatenate(cols["prefix"]),
        source=np.concatenate(cols["source"]),
        modality=np.concatenate(cols["modality"]),
        anatomy=np.zeros(total, np.int16),
        label=np.full(total, -1, np.int64),
        name_offsets=offsets,
        names=np.concatenate(cols["names"]),
        prefixes=prefixes,
        sources=[s.name for s in sources],
        anatomies=anatomies,
        sources_meta=meta,
    )


def write_metadata_set(folder: str, index, chunks: int, chunk_bytes: int) -> None:  # type: ignore[no-untyped-def]
    """A shard folder with everything but the chunk files: index, litdata index.json
    (``chunks`` chunks sharing the rows evenly) and the manifest, written last."""
    from importlib.metadata import version

    from biovfm_core.data.shards.format import INDEX, LITDATA_INDEX, MANIFEST, Manifest

    n = len(index)
    index.save(os.path.join(folder, INDEX))
    sizes = np.full(chunks, n // chunks, np.int64)
    sizes[: n % chunks] += 1
    items = ["image", "scale", "offset", "uri", "source", "modality", "anatomy", "label"]
    formats = ["bytes", "float", "float", "str", "str", "str", "str", "int"]
    leaf = {"type": None, "context": None, "children_spec": []}
    spec = [1, {"type": "builtins.dict", "context": json.dumps(items), "children_spec": [leaf] * 8}]
    lit = {
        "chunks": [
            {"chunk_bytes": chunk_bytes, "chunk_size": int(s), "dim": None,
             "filename": f"chunk-{c % 2}-{c // 2}.bin"}
            for c, s in enumerate(sizes)
        ],
        # As litdata's BinaryWriter writes it for the packer's items (PyTree of a dict).
        "config": {
            "chunk_bytes": chunk_bytes, "chunk_size": None, "compression": None,
            "compression_batch_size": None, "compression_level": None,
            "data_format": formats, "data_spec": json.dumps(spec), "encryption": None,
            "ipc_compression": None, "item_loader": "PyTreeLoader",
            "types": dict(zip(items, formats, strict=True)),
        },
        "updated_at": str(time.time()),
    }  # fmt: skip
    with open(os.path.join(folder, LITDATA_INDEX), "w", encoding="utf-8") as f:
        json.dump(lit, f)
    manifest = Manifest(
        encoding="png",
        images=n,
        sources=index.counts("source"),
        options={"simulated": True, "max_side": 512},
        litdata_version=version("litdata"),
    )
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest.to_json(), f)


def child_open(folder: str, fraction: float, modalities: str, order: bool) -> dict[str, float]:
    """In a fresh process: open the set as training does, then subset and order it."""
    t0 = time.perf_counter()
    from biovfm_core.data.subsets import subset

    try:
        from biovfm_core.data.shards.reader import open_shards
    except ImportError:  # before the training side landed: the index is all it reads
        open_shards = None
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    if open_shards is not None:
        shards = open_shards(folder)
        index, sizes = shards.index, shards.chunk_sizes
        how = "open_shards"
    else:
        from biovfm_core.data.index import SampleIndex
        from biovfm_core.data.shards.format import INDEX, read_manifest

        read_manifest(folder)
        index, sizes = SampleIndex.load(os.path.join(folder, INDEX)), None
        how = "SampleIndex.load"
    out = {"how": how, "import_s": t_import, "open_s": time.perf_counter() - t0,
           "open_peak_mb": _peak_mb(), "n": len(index)}  # fmt: skip
    if fraction < 1.0 or modalities:
        t0 = time.perf_counter()
        view = subset(index, fraction=fraction, modalities=modalities or None, seed=0)
        out["subset_s"] = time.perf_counter() - t0
        out["subset_n"] = len(view)
        index = view
    out["data_peak_mb"] = _peak_mb()  # before torch comes in with the order
    if order and sizes is not None:
        from biovfm_core.data.shards.order import ShardOrder

        t0 = time.perf_counter()
        rows = index.base_rows() if hasattr(index, "base_rows") else np.arange(len(index))
        ShardOrder(rows, sizes, batch=64, seed=0, rank=0, world_size=1).epoch_order(0)
        out["order_s"] = time.perf_counter() - t0
    if order:
        # What each loader worker does on its first read (ShardReader opens it lazily).
        from litdata import StreamingDataset

        t0 = time.perf_counter()
        out["litdata_n"] = len(StreamingDataset(folder))
        out["litdata_s"] = time.perf_counter() - t0
    out["peak_mb"] = _peak_mb()
    return out


def _run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "_child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass
class OpenRow:
    case: str
    images: int
    open_s: float
    subset_s: float | None
    order_s: float | None
    litdata_s: float | None
    data_peak_mb: float
    peak_mb: float
    how: str


def cmd_open(args: argparse.Namespace) -> list[OpenRow]:
    sources = study_sources(Path(args.sources))
    chunks = args.chunks
    if chunks is None:  # as many as the 512-px-capped study would have, scaled to --entries
        full = estimate(measure_ratios(512), 512, chunk_bytes_int(DEFAULT_CHUNK_BYTES), sources)
        study = sum(s.images for s in sources)
        chunks = max(1, round(full[-1].chunks_cap * args.entries / study))
    work = tempfile.mkdtemp(prefix="bench-shards-open-", dir=args.dir)
    rows: list[OpenRow] = []
    try:
        t0 = time.perf_counter()
        index = synthetic_index(args.entries, sources)
        t_build = time.perf_counter() - t0
        write_metadata_set(work, index, chunks, chunk_bytes_int(DEFAULT_CHUNK_BYTES))
        t_write = time.perf_counter() - t0 - t_build
        mean_uri = float(
            np.mean([len(index.uri(i)) for i in range(0, len(index), max(1, len(index) // 2000))])
        )
        size_mb = sum(os.path.getsize(os.path.join(work, f)) for f in os.listdir(work)) / 2**20
        del index
        print(
            f"{args.entries:,} entries, {len(sources)} sources, {chunks:,} chunks; built in "
            f"{t_build:.1f} s, written in {t_write:.1f} s, {size_mb:.0f} MB on disk, mean uri "
            f"{mean_uri:.0f} chars; {_load()}"
        )
        cases = [("open", 1.0, "")] + [
            (f"open + {args.fraction:g} of {m or 'all'}", args.fraction, m)
            for m in args.modalities.split(",")
        ]
        for name, fraction, mods in cases:
            r = _run_child(work, str(fraction), mods, "1")
            rows.append(
                OpenRow(
                    name, r.get("subset_n", r["n"]), r["open_s"], r.get("subset_s"),
                    r.get("order_s"), r.get("litdata_s"), r["data_peak_mb"], r["peak_mb"],
                    r["how"],
                )
            )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        "| case | images | open s | subset s | epoch order s | litdata dataset s "
        "| peak RSS MB, index | peak RSS MB, + torch, order, litdata | opened by |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    dash = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        print(
            f"| {r.case} | {r.images:,} | {r.open_s:.2f} | {dash(r.subset_s)} | "
            f"{dash(r.order_s)} | {dash(r.litdata_s)} | {r.data_peak_mb:.0f} | {r.peak_mb:.0f} "
            f"| {r.how} |"
        )
    return rows


# ------------------------------------------------------------------- pack and loader
# The original-file sources of ``pack`` and ``loader``: name -> (--data spec under
# DIR, augmentation recipe). Built by ``make_sources`` from real images that ship
# with pydicom (CT 693_UNCR, CR RG1_UNCR), each copy shifted and with fresh noise so
# no two files are alike.
SOURCE_SPECS = {
    "dicom": ("dicom:{dir}/dicom?modality=ct&name=dicom", "ct"),
    "dicom-j2k": ("dicom:{dir}/dicom-j2k?modality=ct&name=dicom-j2k", "ct"),
    "nifti": ("nifti:{dir}/nifti?modality=ct&name=nifti", "ct"),
    "png": ("folder:{dir}/png?modality=xray&name=png", "xray"),
}


def _variant(base: np.ndarray, k: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    shifted = np.roll(base, (k * 7 % 61 - 30, k * 13 % 41 - 20), axis=(0, 1)).astype(np.float32)
    return shifted + rng.normal(0, noise, base.shape).astype(np.float32)


def _j2k_dicom(ds, arr: np.ndarray):  # type: ignore[no-untyped-def]
    """``ds`` with ``arr`` as JPEG 2000 lossless pixel data (Pillow's OpenJPEG encoder),
    stored unsigned with the intercept moved so the Hounsfield values are unchanged."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    low = int(arr.min())
    buf = io.BytesIO()
    Image.fromarray((arr.astype(np.int32) - low).astype(np.uint16)).save(
        buf, format="JPEG2000", irreversible=False, no_jp2=True
    )
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    slope = float(ds.get("RescaleSlope", 1))
    ds.RescaleIntercept = float(ds.get("RescaleIntercept", 0)) + low * slope
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 16, 15
    return ds


def make_sources(folder: str, images: int, *, side: int = 512, png_side: int = 1024) -> dict:
    """``images`` CT-like 16-bit DICOM slices (``side`` px, one series) uncompressed and
    the same as JPEG 2000 lossless (as the demo's CT), ``images`` axial slices in NIfTI
    CT volumes of 128 slices (int16, gzipped) and ``images`` ChestXray-14-like 8-bit
    PNGs (``png_side`` px). Returns the ``--data`` spec of each."""
    import cv2
    import nibabel as nib
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(0)
    ct = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    raw = ct.pixel_array.astype(np.float32)
    if raw.shape != (side, side):
        raw = cv2.resize(raw, (side, side), interpolation=cv2.INTER_AREA)
    slope = float(ct.get("RescaleSlope", 1))
    intercept = float(ct.get("RescaleIntercept", 0))
    os.makedirs(f"{folder}/dicom/series_0001", exist_ok=True)
    os.makedirs(f"{folder}/dicom-j2k/series_0001", exist_ok=True)
    series = generate_uid()
    lo, hi = (-32768, 32767) if ct.PixelRepresentation == 1 else (0, 65535)
    dtype = np.int16 if ct.PixelRepresentation == 1 else np.uint16
    for k in range(images):
        arr = np.clip(np.round(_variant(raw, k, rng, 8.0)), lo, hi).astype(dtype)
        ds = copy.deepcopy(ct)  # a shallow copy would share file_meta
        ds.Rows, ds.Columns = arr.shape
        ds.PixelData = arr.tobytes()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = k + 1
        ds.save_as(f"{folder}/dicom/series_0001/IM-{k + 1:05d}.dcm", enforce_file_format=True)
        _j2k_dicom(copy.deepcopy(ds), arr).save_as(
            f"{folder}/dicom-j2k/series_0001/IM-{k + 1:05d}.dcm", enforce_file_format=True
        )
    # NIfTI: the same anatomy in Hounsfield units, 128 axial slices per volume.
    hu = raw * slope + intercept
    os.makedirs(f"{folder}/nifti", exist_ok=True)
    per_volume = 128
    for v in range(math.ceil(images / per_volume)):
        depth = min(per_volume, images - v * per_volume)
        vol = np.stack([_variant(hu, v * per_volume + k, rng, 8.0) for k in range(depth)], axis=-1)
        vol = np.clip(np.round(vol), -32768, 32767).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), f"{folder}/nifti/ct_{v:03d}.nii.gz")
    # PNG: an 8-bit chest radiograph (a CR from pydicom, windowed), 1024 px.
    cr = sample_image("dcm8:RG1_UNCR.dcm").astype(np.float32)
    cr = cv2.resize(cr, (png_side, png_side), interpolation=cv2.INTER_AREA)
    os.makedirs(f"{folder}/png/images_001", exist_ok=True)
    for k in range(images):
        img = np.clip(np.round(_variant(cr, k, rng, 3.0)), 0, 255).astype(np.uint8)
        cv2.imwrite(f"{folder}/png/images_001/{k:08d}_000.png", img)
    return {name: spec.format(dir=folder) for name, (spec, _) in SOURCE_SPECS.items()}


def _bytes_under(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


@dataclass
class PackRow:
    source: str
    workers: int
    images: int
    seconds: float
    images_s: float
    original_mb: float
    shards_mb: float


def cmd_pack(args: argparse.Namespace) -> list[PackRow]:
    from biovfm_core.data.shards.pack import pack

    specs = {k: v for k, v in _ensure_sources(args).items() if k in args.sources}
    # Decoders imported up front, so the first pack does not pay for them (workers fork).
    import cv2  # noqa: F401
    import nibabel  # noqa: F401
    import PIL.Image  # noqa: F401
    import pydicom  # noqa: F401
    from litdata.streaming.writer import BinaryWriter  # noqa: F401

    rows: list[PackRow] = []
    for name, spec in specs.items():
        for workers in args.pack_workers:
            out = os.path.join(args.dir, f"shards-{name}-w{workers}")
            shutil.rmtree(out, ignore_errors=True)
            # Parts are the unit of parallel work: 4 of them, so 2 workers have work.
            report = pack(
                [spec], out, workers=workers, part_size=max(1, args.images // 4),
                max_side=args.max_side, progress=None,
            )  # fmt: skip
            rows.append(
                PackRow(
                    name, workers, report.images, report.seconds, report.images_per_s,
                    _bytes_under(os.path.join(args.dir, name)) / 2**20,
                    _bytes_under(out) / 2**20,
                )
            )  # fmt: skip
            # The loader reads the last pack (every pack of a source holds the same).
            keep = os.path.join(args.dir, f"shards-{name}")
            shutil.rmtree(keep, ignore_errors=True)
            os.rename(out, keep)
        if name in args.raw:
            out = os.path.join(args.dir, f"shards-{name}-raw")
            shutil.rmtree(out, ignore_errors=True)
            workers = args.pack_workers[-1]
            report = pack(
                [spec], out, workers=workers, part_size=max(1, args.images // 4),
                max_side=args.max_side, encoding="raw", progress=None,
            )  # fmt: skip
            rows.append(
                PackRow(
                    f"{name} (raw)", workers, report.images, report.seconds, report.images_per_s,
                    _bytes_under(os.path.join(args.dir, name)) / 2**20, _bytes_under(out) / 2**20,
                )
            )  # fmt: skip
    print(
        f"pack (scan + decode + encode (the default encoding) + write), {args.images} images a source; {_load()}"
    )
    print("| source | workers | images | s | images/s | original MB | shards MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.source} | {r.workers} | {r.images} | {r.seconds:.1f} | {r.images_s:.1f} | "
            f"{r.original_mb:.0f} | {r.shards_mb:.0f} |"
        )
    return rows


def _ensure_sources(args: argparse.Namespace) -> dict[str, str]:
    os.makedirs(args.dir, exist_ok=True)
    marker = os.path.join(args.dir, "sources.json")
    want = {"images": args.images}
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            made = json.load(f)
        if made["made"] == want:
            return made["specs"]
    for name in SOURCE_SPECS:
        shutil.rmtree(os.path.join(args.dir, name), ignore_errors=True)
    specs = make_sources(args.dir, args.images)
    with open(marker, "w", encoding="utf-8") as f:
        json.dump({"made": want, "specs": specs}, f)
    return specs


@dataclass
class LoaderRow:
    source: str
    read_from: str
    stage: str
    workers: int
    images: int
    images_s: float


def _views(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from biovfm_core.protocols import ViewSpec

    return ViewSpec(
        global_crops=2, global_size=args.global_size,
        local_crops=args.local_crops, local_size=args.local_size,
    )  # fmt: skip


def _keys(
    n: int, count: int, seed: int, shard_chunks: np.ndarray | None, batch: int, workers: int = 0
) -> list:
    """``(position, seed)`` pairs as training draws them: a seeded permutation of the
    files (RunOrder's kind), or chunk-local order over shards (ShardOrder, which gives
    each of the loader's workers its own chunks)."""
    if shard_chunks is not None:
        from biovfm_core.data.shards.order import ShardOrder

        order = ShardOrder(
            np.arange(n), shard_chunks, batch=batch, seed=seed, rank=0, world_size=1,
            workers=workers,
        )  # fmt: skip
        it = iter(order)
        return [next(it) for _ in range(count)]
    rng = np.random.default_rng(seed)
    perm = np.concatenate([rng.permutation(n) for _ in range(math.ceil(count / n))])[:count]
    return [(int(p), seed + k) for k, p in enumerate(perm)]


def _loader_rate(dataset, keys: list, batch: int, workers: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """``bench_loader``'s timed loader over these keys (its folder is this file's)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        from bench_loader import keyed_loader_rate
    finally:
        sys.path.pop(0)
    return keyed_loader_rate(dataset, keys, batch, workers)


def _decode_rate(
    load: Callable[[int], np.ndarray], order: list, seconds: float
) -> tuple[float, int]:
    """Images/s of the reader alone (no views), in this process, for ~``seconds``."""
    for position, _ in order[:4]:  # warm-up: opening the file or litdata dataset
        load(position)
    t0 = time.perf_counter()
    k = 0
    while k < len(order) and (k < 8 or time.perf_counter() - t0 < seconds):
        load(order[k][0])
        k += 1
    return k / (time.perf_counter() - t0), k


def cmd_loader(args: argparse.Namespace) -> list[LoaderRow]:
    from biovfm_core.data.catalog import resolve_data
    from biovfm_core.data.dataset import ImageDataset
    from biovfm_core.data.scan import scan_sources
    from biovfm_core.data.shards.reader import ShardReader, open_shards
    from biovfm_core.registry import get_registry

    specs = {k: v for k, v in _ensure_sources(args).items() if k in args.sources}
    registry = get_registry()
    views = _views(args)
    rows: list[LoaderRow] = []
    warm = True
    for name, spec in specs.items():
        recipe = registry.build("augmentations", SOURCE_SPECS[name][1], views)
        folder = os.path.join(args.dir, f"shards-{name}")
        if not os.path.exists(folder):
            from biovfm_core.data.shards.pack import pack

            pack([spec], folder, workers=2, part_size=max(1, args.images // 4), progress=None)
        index, _ = scan_sources(resolve_data([spec])[0])
        variants = [("original", index, None, "")]
        for suffix in ("", "-raw"):
            if os.path.exists(folder + suffix):
                shards = open_shards(folder + suffix)
                label = "shards" + (" (raw)" if suffix else "")
                variants.append((label, shards.index, shards.chunk_sizes, folder + suffix))
        for read_from, idx, chunks, where in variants:
            keys = _keys(len(idx), args.loader_images, 0, chunks, args.batch_size)
            if read_from == "original":
                reader = ImageDataset(idx, recipe).reader(name)
                load = lambda i, r=reader, x=idx: r.load(x.record(i))  # noqa: E731
            else:
                reader = ShardReader(where)
                load = lambda i, r=reader, x=idx: r.load_row(x.base_row(i))  # noqa: E731
            rate, n = _decode_rate(load, keys, args.decode_seconds)
            rows.append(LoaderRow(name, read_from, "decode", 0, n, rate))
            if warm:
                # The process's first loader run is slow throughout (measured: 60-72
                # against 260-290 images/s for the same DICOM run later): untimed.
                _loader_rate(
                    ImageDataset(idx, recipe), keys[: 3 * args.batch_size], args.batch_size, 0
                )
                warm = False
            for workers in args.workers:
                dataset = ImageDataset(idx, recipe)
                keys = _keys(len(idx), args.loader_images, 0, chunks, args.batch_size, workers)
                rate, n = _loader_rate(dataset, keys, args.batch_size, workers)
                rows.append(LoaderRow(name, read_from, "loader", workers, n, rate))
                print(
                    f"  {name} {read_from} {workers} workers: {rate:.1f} images/s", file=sys.stderr
                )
    print(
        f"views 2x{views.global_size} + {views.local_crops}x{views.local_size}, batch "
        f"{args.batch_size}, {args.images} images a source; decode = the reader alone in "
        f"the main process; {_load()}"
    )
    print("| source | read from | stage | workers | images timed | images/s | shards / original |")
    print("|---|---|---|---:|---:|---:|---:|")
    base = {(r.source, r.stage, r.workers): r.images_s for r in rows if r.read_from == "original"}
    for r in rows:
        ratio = r.images_s / base[(r.source, r.stage, r.workers)]
        shown = f"{ratio:.2f}" if r.read_from != "original" else ""
        print(
            f"| {r.source} | {r.read_from} | {r.stage} | {r.workers} | {r.images} | "
            f"{r.images_s:.1f} | {shown} |"
        )
    return rows


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("ratios", help="PNG compression per kind of image")
    p.add_argument("--cap", type=int, default=512)
    p.set_defaults(run=cmd_ratios)
    p = sub.add_parser("counts", help="BioVFM-21M's shard bytes and chunks")
    p.add_argument("--cap", type=int, default=512)
    p.add_argument("--chunk-bytes", default=DEFAULT_CHUNK_BYTES)
    p.add_argument("--sources", default=str(SOURCES_CSV))
    p.set_defaults(run=cmd_counts)
    p = sub.add_parser("open", help="open a 21M-entry shard set and subset it")
    p.add_argument("--entries", type=int, default=21_000_000)
    p.add_argument("--chunks", type=int, help="default: the 512-px study's, scaled")
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--modalities", default=",ct,xray", help="subsets to time ('' = all)")
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--sources", default=str(SOURCES_CSV))
    p.set_defaults(run=cmd_open)
    for name, run in (("pack", cmd_pack), ("loader", cmd_loader)):
        p = sub.add_parser(name, help=f"{name} throughput, shards against original files")
        p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "bench-shards"))
        p.add_argument("--images", type=int, default=256, help="images per source")
        p.add_argument("--pack-workers", type=int, nargs="+", default=[1, 2])
        p.add_argument("--max-side", type=int, default=None)
        p.add_argument("--raw", nargs="*", default=["dicom"], help="also pack these raw")
        p.add_argument("--sources", nargs="+", default=list(SOURCE_SPECS), choices=SOURCE_SPECS)
        p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--loader-images", type=int, default=512, help="images per loader run")
        p.add_argument("--decode-seconds", type=float, default=3.0)
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--global-size", type=int, default=224)
        p.add_argument("--local-size", type=int, default=96)
        p.add_argument("--local-crops", type=int, default=8)
        p.set_defaults(run=run)
    if argv is None and sys.argv[1:2] == ["_child"]:
        folder, fraction, mods, order = sys.argv[2:6]
        print(json.dumps(child_open(folder, float(fraction), mods, order == "1")))
        return None
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    main()
