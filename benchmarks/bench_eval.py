"""Frozen-feature extraction speed of `biovfm eval` on a 12-benchmark-shaped workload.

Synthetic uint8 images shaped like the 12 MedMNIST 2D benchmarks (gray or RGB, as
each benchmark is) at a given file size, pushed through the same path the eval uses
(``biovfm_core.eval.features.extract``: gray → 3 channels, resize, normalise,
``forward_tokens``, CLS + mean-patch). The per-benchmark image count is scaled down
(``--images``) so the run finishes; rates are images per second after warm-up, and
the projected wall time is each benchmark's real train + val + test size at that rate.

    python benchmarks/bench_eval.py --backbone vit_small --device cuda --input-size 224
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from biovfm_core.eval.data import MEDMNIST_2D
from biovfm_core.eval.features import extract
from biovfm_core.models.specs import load_model
from biovfm_core.registry import get_registry

# Channels and train + val + test images per benchmark (MedMNIST v2).
RGB = {"pathmnist", "dermamnist", "retinamnist", "bloodmnist"}
SPLIT_IMAGES = {
    "pathmnist": 107_180,
    "chestmnist": 112_120,
    "dermamnist": 10_015,
    "octmnist": 109_309,
    "pneumoniamnist": 5_856,
    "retinamnist": 1_600,
    "breastmnist": 780,
    "bloodmnist": 17_092,
    "tissuemnist": 236_386,
    "organamnist": 58_830,
    "organcmnist": 23_583,
    "organsmnist": 25_211,
}


@dataclass
class Result:
    benchmark: str
    channels: int
    images: int
    seconds: float

    @property
    def images_s(self) -> float:
        return self.images / self.seconds

    @property
    def full_seconds(self) -> float:
        """Projected extraction time for the benchmark's real train + val + test."""
        return SPLIT_IMAGES[self.benchmark] / self.images_s


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--file-size", type=int, default=28, help="stored image side")
    parser.add_argument("--input-size", type=int, default=224, help="model input side")
    parser.add_argument("--images", type=int, default=256, help="images per benchmark")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--benchmarks", type=int, default=12, help="first N of the 12")
    args = parser.parse_args(argv)

    model = load_model(
        f"random:{args.backbone}", get_registry(), options={"image_size": args.input_size}
    )
    backbone = model.backbone.to(args.device)
    rng = np.random.default_rng(0)
    kw = {"size": args.input_size, "device": args.device, "batch_size": args.batch_size}
    warm = rng.integers(
        0, 256, (min(args.batch_size, args.images), args.file_size, args.file_size), np.uint8
    )
    extract(backbone, warm, **kw)
    results = []
    for flag in list(MEDMNIST_2D)[: args.benchmarks]:
        shape = (args.images, args.file_size, args.file_size) + ((3,) if flag in RGB else ())
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        extract(backbone, images, **kw)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        results.append(
            Result(flag, 3 if flag in RGB else 1, args.images, time.perf_counter() - start)
        )
    total = sum(r.images for r in results) / sum(r.seconds for r in results)
    print(
        f"{args.backbone} ({model.params_m:.1f}M) on {args.device}, {args.file_size}px files → "
        f"{args.input_size}px input, batch {args.batch_size}"
    )
    print("| benchmark | channels | images | images/s | all splits | projected wall (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.benchmark} | {r.channels} | {r.images} | {r.images_s:.1f} | "
            f"{SPLIT_IMAGES[r.benchmark]:,} | {r.full_seconds:.0f} |"
        )
    print(
        f"| all | | {sum(r.images for r in results)} | {total:.1f} | "
        f"{sum(SPLIT_IMAGES[r.benchmark] for r in results):,} | "
        f"{sum(r.full_seconds for r in results):.0f} |"
    )
    return results


if __name__ == "__main__":
    main()
