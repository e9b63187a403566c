"""The data path's speed (issue 28): shard encodings, warm and cold cache, light views,
and the loader's ceiling per worker.

Four parts, each printing one Markdown table; the sources are ``bench_shards.py``'s
(512² CT as uncompressed and JPEG 2000 DICOM, gzipped int16 NIfTI volumes, 1024²
8-bit X-ray PNGs), made once under ``--dir``:

* ``encodings``: each source packed with each ``--encodings`` (2 pack workers):
  bytes against the original files and against PNG shards, and images/s of the
  reader alone (the main process, warm cache) against the original reader.
* ``loader``: images/s of the training loader (decode + DINOv2 views 2x224 + 8x96
  with the modality's recipe + collate, light views as training ships them) at
  ``--workers``, from the original files and from each encoding's shards, with the
  files in the page cache (*warm*) and with every file evicted from it before the
  run (*cold*: ``os.posix_fadvise(POSIX_FADV_DONTNEED)``, so each image is read
  from the disk once, as from a cluster's filesystem). Each image is read once a
  run; ``--repeat`` runs per cell, all reported.
* ``light``: the loader from zstd shards with today's finished views and with light
  views: images/s, bytes per batch, and what ``Batch.finish`` costs on this CPU.
* ``ceiling``: per recipe, images/s of one worker (zstd decode of a 512² image +
  views + collate, in this process, one thread, per second of CPU time) and the workers per GPU needed at published
  ViT training throughputs, with the recipes that would be loader-bound on an
  8-GPU node with 16 cores per GPU.

    python benchmarks/bench_data_path.py encodings --dir /tmp/bench-shards
    python benchmarks/bench_data_path.py loader --dir /tmp/bench-shards --repeat 2
    python benchmarks/bench_data_path.py light --dir /tmp/bench-shards
    python benchmarks/bench_data_path.py ceiling

Nothing here is a test: speed is never asserted (``tests/test_benchmarks.py`` only
runs the parts on tiny settings).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_shards as bs

ENCODINGS = ("zstd", "png", "raw")
# Published training throughputs per GPU, images/s, as the issue gives them: DINOv2
# ViT-L/16 on an A100 and DINOv3 ViT-L/16 on an H100; ViT-S/16 is this project's own
# ad-hoc H100 step (benchmarks/README.md, "Train step": 441 images/s, no loader).
GPU_RATES = {
    "DINOv2 ViT-L/16, A100": 93.0,
    "DINOv3 ViT-L/16, H100": 159.0,
    "DINOv2 ViT-S/16, H100 (ours)": 441.0,
}
CORES_PER_GPU = 16  # an 8-GPU node with 128 cores; one core per GPU runs the main process


def evict(path: str) -> int:
    """Drop every file under ``path`` from the page cache; returns the bytes evicted."""
    total = 0
    for d, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def warm(path: str) -> None:
    """Read every file under ``path`` once, so the page cache holds it."""
    for d, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                while f.read(1 << 24):
                    pass


def shards_folder(args: argparse.Namespace, name: str, encoding: str) -> str:
    return os.path.join(args.dir, f"shards-{name}-{encoding}")


def ensure_shards(args: argparse.Namespace, specs: dict[str, str], name: str, encoding: str):  # type: ignore[no-untyped-def]
    """The ``encoding`` shard set of source ``name`` (packed now if missing) and the
    pack's report, or ``None`` when it was there already."""
    from biovfm_core.data.shards import format as fmt
    from biovfm_core.data.shards.pack import pack

    out = shards_folder(args, name, encoding)
    if os.path.exists(os.path.join(out, fmt.MANIFEST)):
        return None
    shutil.rmtree(out, ignore_errors=True)
    return pack(
        [specs[name]], out, workers=2, part_size=max(1, args.images // 4),
        encoding=encoding, progress=None,
    )  # fmt: skip


@dataclass
class EncodingRow:
    source: str
    encoding: str
    original_mb: float
    shards_mb: float
    png_mb: float
    pack_images_s: float | None
    decode_s: float
    original_decode_s: float


def _reader_and_index(spec: str, name: str, folder: str | None):  # type: ignore[no-untyped-def]
    from biovfm_core.data.catalog import resolve_data
    from biovfm_core.data.scan import open_reader, scan_sources
    from biovfm_core.data.shards.reader import ShardReader, open_shards

    if folder is None:
        index, _ = scan_sources(resolve_data([spec])[0])
        reader = open_reader(index, name)
        return index, None, (lambda i, r=reader, x=index: r.load(x.record(i)))
    shards = open_shards(folder)
    reader = ShardReader(folder)
    load = lambda i, r=reader, x=shards.index: r.load_row(x.base_row(i))  # noqa: E731
    return shards.index, shards.chunk_sizes, load


def cmd_encodings(args: argparse.Namespace) -> list[EncodingRow]:
    specs = {k: v for k, v in bs._ensure_sources(args).items() if k in args.sources}
    rows: list[EncodingRow] = []
    for name, spec in specs.items():
        original_mb = bs._bytes_under(os.path.join(args.dir, name)) / 2**20
        index, _, load = _reader_and_index(spec, name, None)
        keys = bs._keys(len(index), len(index), 0, None, args.batch_size)
        original = bs._decode_rate(load, keys, args.decode_seconds)[0]
        reports = {e: ensure_shards(args, specs, name, e) for e in args.encodings}
        png_mb = bs._bytes_under(shards_folder(args, name, "png")) / 2**20
        for encoding in args.encodings:
            folder = shards_folder(args, name, encoding)
            index, chunks, load = _reader_and_index(spec, name, folder)
            keys = bs._keys(len(index), len(index), 0, chunks, args.batch_size)
            rate = bs._decode_rate(load, keys, args.decode_seconds)[0]
            report = reports[encoding]
            rows.append(
                EncodingRow(
                    name, encoding, original_mb, bs._bytes_under(folder) / 2**20, png_mb,
                    report.images_per_s if report else None, rate, original,
                )
            )  # fmt: skip
            print(f"  {name} {encoding}: decode {rate:.0f}/s vs {original:.3g}/s", file=sys.stderr)
    print(
        f"shard encodings, {args.images} images a source, packed with 2 workers; decode = "
        f"the reader alone in the main process, warm cache; {bs._load()}"
    )
    print(
        "| source | encoding | original MB | shards MB | bytes / PNG shards | pack images/s "
        "| decode images/s | decode / original |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        pack_rate = f"{r.pack_images_s:.1f}" if r.pack_images_s else "(kept)"
        print(
            f"| {r.source} | {r.encoding} | {r.original_mb:.0f} | {r.shards_mb:.0f} | "
            f"{r.shards_mb / r.png_mb:.2f} | {pack_rate} | {r.decode_s:.0f} | "
            f"{r.decode_s / r.original_decode_s:.1f} (files: {r.original_decode_s:.3g}/s) |"
        )
    return rows


@dataclass
class LoaderRow:
    source: str
    read_from: str
    cache: str
    workers: int
    rates: list[float]


def _loader(args: argparse.Namespace, name: str, spec: str, folder: str | None, light: bool):  # type: ignore[no-untyped-def]
    from biovfm_core.data.dataset import ImageDataset
    from biovfm_core.registry import get_registry

    recipe = get_registry().build("augmentations", bs.SOURCE_SPECS[name][1], bs._views(args))
    index, chunks, _ = _reader_and_index(spec, name, folder)
    return ImageDataset(index, recipe, light_views=light), chunks


def _timed(args: argparse.Namespace, dataset, chunks, workers: int, cold_path: str | None) -> float:  # type: ignore[no-untyped-def]
    n = len(dataset)
    keys = bs._keys(n, min(n, args.loader_images), 0, chunks, args.batch_size, workers)
    if cold_path is not None:
        evict(cold_path)
    return bs._loader_rate(dataset, keys, args.batch_size, workers)[0]


def cmd_loader(args: argparse.Namespace) -> list[LoaderRow]:
    specs = {k: v for k, v in bs._ensure_sources(args).items() if k in args.sources}
    rows: list[LoaderRow] = []
    first = True
    for name, spec in specs.items():
        variants = [("files", None, os.path.join(args.dir, name))]
        for encoding in args.encodings:
            ensure_shards(args, specs, name, encoding)
            folder = shards_folder(args, name, encoding)
            variants.append((f"shards ({encoding})", folder, folder))
        for read_from, folder, data_path in variants:
            dataset, chunks = _loader(args, name, spec, folder, light=True)
            if first:  # the process's first loader run is slow throughout: untimed
                bs._loader_rate(dataset, bs._keys(len(dataset), 3 * args.batch_size, 0,
                                                  chunks, args.batch_size), args.batch_size, 0)  # fmt: skip
                first = False
            for cache in args.cache:
                for workers in args.workers:
                    rates = []
                    for _ in range(args.repeat):
                        if cache == "warm":
                            warm(data_path)
                        cold = data_path if cache == "cold" else None
                        rates.append(_timed(args, dataset, chunks, workers, cold))
                    rows.append(LoaderRow(name, read_from, cache, workers, rates))
                    shown = ", ".join(f"{r:.1f}" for r in rates)
                    print(f"  {name} {read_from} {cache} {workers}w: {shown}", file=sys.stderr)
    print(
        f"loader, views 2x{args.global_size} + {args.local_crops}x{args.local_size} (light), "
        f"batch {args.batch_size}, {min(args.images, args.loader_images)} of the {args.images} "
        f"images a run, each read once; cold = every "
        f"file evicted from the page cache before the run; {bs._load()}"
    )
    print("| source | read from | cache | workers | images/s (each run) | shards / files |")
    print("|---|---|---|---:|---:|---:|")
    base = {(r.source, r.cache, r.workers): r.rates for r in rows if r.read_from == "files"}
    for r in rows:
        ratio = float(np.median(r.rates)) / float(np.median(base[(r.source, r.cache, r.workers)]))
        shown = f"{ratio:.2f}" if r.read_from != "files" else ""
        rates = ", ".join(f"{x:.1f}" for x in r.rates)
        print(f"| {r.source} | {r.read_from} | {r.cache} | {r.workers} | {rates} | {shown} |")
    return rows


@dataclass
class LightRow:
    source: str
    views: str
    rates: list[float]
    batch_mb: float
    finish_ms: float


def _batch_bytes_and_finish(dataset, batch: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    from biovfm_core.data.dataset import collate

    b = collate([dataset[(k % len(dataset), k)] for k in range(batch)])
    views = b.global_views + b.local_views
    size = sum(v.numel() * v.element_size() for v in views) / 2**20
    t0 = time.perf_counter()
    for _ in range(3):
        b.finish()
    return size, (time.perf_counter() - t0) / 3 * 1e3


def cmd_light(args: argparse.Namespace) -> list[LightRow]:
    specs = {k: v for k, v in bs._ensure_sources(args).items() if k in args.sources}
    rows: list[LightRow] = []
    for name, spec in specs.items():
        ensure_shards(args, specs, name, "zstd")
        folder = shards_folder(args, name, "zstd")
        for light in (False, True):
            dataset, chunks = _loader(args, name, spec, folder, light=light)
            size, finish_ms = _batch_bytes_and_finish(dataset, args.batch_size)
            rates = []
            for _ in range(args.repeat):
                warm(folder)
                rates.append(_timed(args, dataset, chunks, args.workers[-1], None))
            label = "light (finished on the device)" if light else "finished in the workers"
            rows.append(LightRow(name, label, rates, size, finish_ms if light else 0.0))
            shown = ", ".join(f"{r:.1f}" for r in rates)
            print(f"  {name} light={light}: {shown}; {size:.1f} MB", file=sys.stderr)
    print(
        f"light views, zstd shards, {args.workers[-1]} workers, warm cache, batch "
        f"{args.batch_size}, views 2x{args.global_size} + {args.local_crops}x{args.local_size}; "
        f"finish = Batch.finish on this CPU (on a GPU it is a few element-wise kernels); "
        f"{bs._load()}"
    )
    print("| source | views | images/s (each run) | MB per batch | finish ms per batch (CPU) |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        rates = ", ".join(f"{x:.1f}" for x in r.rates)
        finish = f"{r.finish_ms:.1f}" if r.finish_ms else ""
        print(f"| {r.source} | {r.views} | {rates} | {r.batch_mb:.1f} | {finish} |")
    return rows


# Images the ceiling's recipes see: what a 512-px-capped pack stores for that modality.
CEILING_IMAGES = {
    "default": ("uint8 gray 512²", "gray8"),
    "ct": ("int16 HU 512² (uint16 + offset)", "hu"),
    "mr": ("uint16 512²", "gray16"),
    "xray": ("uint16 512²", "gray16"),
    "us": ("uint8 gray 512²", "gray8"),
    "microscopy": ("uint8 RGB 512²", "rgb"),
    "fundus": ("uint8 RGB 512²", "rgb"),
    "dermoscopy": ("uint8 RGB 512²", "rgb"),
}


def _ceiling_image(kind: str, rng: np.random.Generator) -> np.ndarray:
    import cv2

    base = cv2.GaussianBlur(rng.random((512, 512)).astype(np.float32), (0, 0), 12)
    base = (base - base.min()) / (base.max() - base.min())
    noise = rng.normal(0, 0.02, base.shape).astype(np.float32)
    if kind == "hu":
        return np.round((base + noise) * 2500 - 1024).astype(np.int16)
    if kind == "gray16":
        return np.clip((base + noise) * 4095, 0, 65535).astype(np.uint16)
    if kind == "rgb":
        return np.clip(np.stack([base, base**1.5, 1 - base], -1) * 255 + noise[..., None] * 255,
                       0, 255).astype(np.uint8)  # fmt: skip
    return np.clip((base + noise) * 255, 0, 255).astype(np.uint8)


@dataclass
class CeilingRow:
    recipe: str
    image: str
    per_worker: float


def cmd_ceiling(args: argparse.Namespace) -> list[CeilingRow]:
    import cv2
    import torch

    from biovfm_core.data.dataset import collate
    from biovfm_core.data.shards import format as fmt
    from biovfm_core.protocols import SampleRecord
    from biovfm_core.registry import get_registry

    # A loader worker runs one thread; CPU time, not wall time, is what one core
    # dedicated to it gives (this host is shared: wall time counts other jobs' turns).
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    registry = get_registry()
    rng = np.random.default_rng(0)
    rows: list[CeilingRow] = []
    for name in args.recipes:
        label, kind = CEILING_IMAGES.get(name, CEILING_IMAGES["default"])
        stored, scale, offset = fmt.to_stored(_ceiling_image(kind, rng), keep_float=True)
        items = [fmt.encode(stored, "zstd") for _ in range(4)]
        recipe = registry.build("augmentations", name, bs._views(args))
        record = SampleRecord("/x", "s", name if name != "default" else "other")

        def one_batch(seed: int, recipe=recipe, items=items, scale=scale, offset=offset,
                      record=record) -> None:  # fmt: skip
            samples = []
            for k in range(args.batch_size):
                image = fmt.from_stored(fmt.decode(items[k % 4], "zstd", "x"), scale, offset)
                rng = np.random.default_rng([seed, k])
                views = recipe.sample_views(image, record, rng, light=True)
                samples.append({"views": views, "label": None, "modality": record.modality})
            collate(samples)

        one_batch(0)  # warm-up
        t0 = time.process_time()
        batches = 0
        while batches < 2 or time.process_time() - t0 < args.seconds:
            one_batch(batches + 1)
            batches += 1
        rate = batches * args.batch_size / (time.process_time() - t0)
        rows.append(CeilingRow(name, label, rate))
        print(f"  {name}: {rate:.1f} images/s per worker", file=sys.stderr)
    print(
        f"the loader's ceiling: one worker (one thread, CPU time) decoding zstd shard items "
        f"and making DINOv2 views 2x{args.global_size} + {args.local_crops}x{args.local_size} "
        f"(light) + collate, batch {args.batch_size}; workers per GPU = GPU images/s / per "
        f"worker, rounded up; loader-bound where that exceeds {CORES_PER_GPU - 1} (an 8-GPU "
        f"node with {CORES_PER_GPU} cores per GPU, one for the main process); {bs._load()}"
    )
    heads = " | ".join(f"workers for {k} ({v:.0f}/s)" for k, v in GPU_RATES.items())
    print(f"| recipe | image | images/s per worker | {heads} |")
    print("|---|---|---:|" + "---:|" * len(GPU_RATES))
    for r in rows:
        cells = []
        for rate in GPU_RATES.values():
            need = math.ceil(rate / r.per_worker)
            cells.append(f"{need}" + (" **loader-bound**" if need > CORES_PER_GPU - 1 else ""))
        print(f"| {r.recipe} | {r.image} | {r.per_worker:.1f} | {' | '.join(cells)} |")
    return rows


def main(argv: list[str] | None = None):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    for name, run in (("encodings", cmd_encodings), ("loader", cmd_loader), ("light", cmd_light)):
        p = sub.add_parser(name)
        p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "bench-shards"))
        p.add_argument("--images", type=int, default=256, help="images per source")
        p.add_argument("--sources", nargs="+", default=list(bs.SOURCE_SPECS),
                       choices=bs.SOURCE_SPECS)  # fmt: skip
        p.add_argument("--encodings", nargs="+", default=["zstd", "png"], choices=ENCODINGS)
        p.add_argument("--cache", nargs="+", default=["warm", "cold"], choices=["warm", "cold"])
        p.add_argument("--workers", type=int, nargs="+", default=[2])
        p.add_argument("--repeat", type=int, default=2)
        p.add_argument("--loader-images", type=int, default=256, help="images per loader run")
        p.add_argument("--decode-seconds", type=float, default=3.0)
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--global-size", type=int, default=224)
        p.add_argument("--local-size", type=int, default=96)
        p.add_argument("--local-crops", type=int, default=8)
        p.set_defaults(run=run)
    p = sub.add_parser("ceiling")
    p.add_argument("--recipes", nargs="+", default=list(CEILING_IMAGES))
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per recipe")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--local-crops", type=int, default=8)
    p.set_defaults(run=cmd_ceiling)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    main()
