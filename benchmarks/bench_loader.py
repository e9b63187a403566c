"""Data-loader throughput of the DINOv2 multi-crop recipes on the built-in demo data.

Two parts, as training runs them:

* loader: decode (``demo`` reader) + ``sample_views`` (crops, flip, the modality's
  intensity mapping, normalise) + ``collate``, through a torch ``DataLoader`` fed
  ``(index, seed)`` pairs, with 0 workers (all in the main process) and with
  ``--workers`` worker processes. Worker start-up is excluded: the clock starts
  when the first batch arrives.
* batch_transform: the recipe's per-batch kornia photometrics (colour jitter,
  grayscale, blur, solarize) on ``--device``.

    python benchmarks/bench_loader.py                       # CPU, 2 workers
    python benchmarks/bench_loader.py --device cuda --workers 8

A recipe named after a modality (``ct``) runs on the demo images of that modality
(cycled); ``default`` runs on all of them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from biovfm_core.data.catalog import resolve_data
from biovfm_core.data.dataset import ImageDataset, collate
from biovfm_core.data.index import SampleIndex
from biovfm_core.data.scan import scan_sources
from biovfm_core.protocols import MODALITIES, Batch, ViewSpec
from biovfm_core.registry import get_registry


@dataclass
class Result:
    recipe: str
    stage: str  # "loader" or "batch_transform"
    setting: str  # "0 workers", "2 workers", or the device
    batch: int
    images: int
    images_s: float


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def demo_index() -> SampleIndex:
    sources, _ = resolve_data(["demo"])
    index, _ = scan_sources(sources)
    return index


def subset_for(index: SampleIndex, recipe: str) -> SampleIndex:
    if recipe in MODALITIES:
        rows = np.flatnonzero(index.modality_ids == MODALITIES.index(recipe))
        if rows.size:
            return index.select(rows)
    return index


def loader_rate(
    dataset: ImageDataset, *, images: int, batch: int, workers: int, seed: int = 0
) -> tuple[float, int]:
    """Images per second after the first batch, and how many images were timed."""
    n = len(dataset)
    return keyed_loader_rate(dataset, [(k % n, seed + k) for k in range(images)], batch, workers)


def keyed_loader_rate(
    dataset: ImageDataset, keys: list[tuple[int, int]], batch: int, workers: int
) -> tuple[float, int]:
    """Images per second through a loader fed ``(position, seed)`` keys, timed from the
    second batch on, and how many images were timed."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        sampler=keys,
        collate_fn=collate,
        num_workers=workers,
        drop_last=True,
    )
    timed = 0
    start = None
    for b in loader:
        if start is None:
            start = time.perf_counter()  # workers are up and the pipeline is full
            continue
        timed += b.size if isinstance(b, Batch) else 0
    if start is None or timed == 0:
        raise SystemExit(f"{len(keys)} images give fewer than 2 batches of {batch}")
    return timed / (time.perf_counter() - start), timed


def transform_rate(recipe, batch: Batch, device: torch.device, *, steps: int, warmup: int) -> float:
    batch = batch.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        recipe.batch_transform(batch)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        recipe.batch_transform(batch)
    sync()
    return steps * batch.size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="default,ct")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=512, help="images per loader run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--local-crops", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed batch_transform calls")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    views = ViewSpec(
        global_crops=2,
        global_size=args.global_size,
        local_crops=args.local_crops,
        local_size=args.local_size,
    )
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "-"
    print(
        f"cpu: {cpu_name()} ({os.cpu_count()} cores), gpu: {gpu}, python "
        f"{sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__}; "
        f"views 2x{views.global_size} + {views.local_crops}x{views.local_size}"
    )
    index = demo_index()
    registry = get_registry()
    results: list[Result] = []
    for name in args.recipes.split(","):
        recipe = registry.build("augmentations", name, views)
        dataset = ImageDataset(subset_for(index, name), recipe)
        for workers in dict.fromkeys((0, args.workers)):
            rate, timed = loader_rate(
                dataset, images=args.images, batch=args.batch_size, workers=workers
            )
            results.append(
                Result(name, "loader", f"{workers} workers", args.batch_size, timed, rate)
            )
        sample = collate([dataset[(k % len(dataset), k)] for k in range(args.batch_size)])
        rate = transform_rate(recipe, sample, device, steps=args.steps, warmup=args.warmup)
        results.append(
            Result(
                name,
                "batch_transform",
                str(device),
                args.batch_size,
                args.steps * args.batch_size,
                rate,
            )
        )
    print("| recipe | stage | setting | batch | images timed | images/s |")
    print("|---|---|---|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.recipe} | {r.stage} | {r.setting} | {r.batch} | {r.images} | {r.images_s:.1f} |"
        )
    return results


if __name__ == "__main__":
    main()
