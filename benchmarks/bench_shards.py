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
* ``pack``: ``biovfm data pack`` throughput (images/s) on realistic sources
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
# The packer's default chunk size (litdata reads "64MB" as 64 * 1000**2 bytes).
DEFAULT_CHUNK_BYTES = "64MB"
# Per image besides its pixels: uri (~50 B), source/modality/anatomy strings, label,
# scale/offset and litdata's per-item header. An estimate; it is ~0.1% of an image.
ITEM_OVERHEAD_BYTES = 160


def _peak_mb() -> float:
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
    "mr16": ("dcm:MR2_UNCR.dcm", "dcm:MR-SIEMENS-DICOM-WithOverlays.dcm", "dcm:examples_overlay.dcm"),
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
        "ct": 0.45, "mr": 0.4, "xray": 0.03, "nm": 0.02, "dermoscopy": 0.02,
        "endoscopy": 0.03, "us": 0.03, "fundus": 0.02,
    },  # fmt: skip
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


def chunk_bytes_int(spec: str) -> int:
    from litdata.utilities.format import _convert_bytes_to_int

    return spec if isinstance(spec, int) else _convert_bytes_to_int(spec)


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
    ratios: dict[str, Ratio], cap: int, chunk_bytes: int, sources: list[Source]
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
        row.png_gb += s.images * (raw / ratio.native + ITEM_OVERHEAD_BYTES) / 1e9
        # An image the cap leaves alone keeps its native ratio.
        ratio_cap = ratio.capped if (ch, cw) != (size.h, size.w) else ratio.native
        row.png_gb_cap += s.images * (raw_cap / ratio_cap + ITEM_OVERHEAD_BYTES) / 1e9
    out = sorted(rows.values(), key=lambda r: -r.png_gb)
    total = CountRow("**total**", 0, 0, 0.0, 0.0, 0.0, 0, 0)
    for r in out:
        r.chunks = math.ceil(r.png_gb * 1e9 / chunk_bytes)
        r.chunks_cap = math.ceil(r.png_gb_cap * 1e9 / chunk_bytes)
        for k in ("sources", "images", "raw_gb", "png_gb", "png_gb_cap"):
            setattr(total, k, getattr(total, k) + getattr(r, k))
    total.chunks = math.ceil(total.png_gb * 1e9 / chunk_bytes)
    total.chunks_cap = math.ceil(total.png_gb_cap * 1e9 / chunk_bytes)
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
        f"({args.sources}); chunks of {args.chunk_bytes} = {chunk:,} bytes; PNG ratios "
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
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    main()
