"""What the in-training monitor costs: its seconds per evaluation against the steps
between two evaluations.

One evaluation is what ``train.monitor`` does every ``train.monitor_every`` steps
(biovfm_core/eval/monitor.py): the evaluation backbone embeds ``--samples`` images per
split (train/val/test) at the training crop size, DINO's kNN scores the test split, and
the study's convention draws 1,000 resamples for the intervals. The images are random
uint8 arrays of MedMNIST's 64 px (the content does not change the cost). The step
time is bench_train_step.py's (synthetic views, the loader excluded).

    python benchmarks/bench_monitor.py                              # tiny CPU setting
    python benchmarks/bench_monitor.py --device cuda --preset paper \\
        --backbones vit_small,vit_large --batch-size 64

Cost share = monitor seconds / (monitor_every x seconds per step).
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from biovfm_core.eval.data import SPLITS, Benchmark
from biovfm_core.eval.monitor import DEFAULT_SAMPLES, TrainingMonitor


def _bench_train_step():
    path = Path(__file__).with_name("bench_train_step.py")
    spec = importlib.util.spec_from_file_location("bench_train_step", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train_step"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


@dataclass
class Row:
    objective: str
    backbone: str
    batch: int
    step_s: float
    samples: int
    size: int
    monitor_s: float
    every: int

    @property
    def share(self) -> float:
        return self.monitor_s / (self.every * self.step_s)


def synthetic_benchmark(samples: int, side: int = 64) -> Benchmark:
    rng = np.random.default_rng(0)
    splits = {
        s: (
            rng.integers(0, 256, (samples, side, side), dtype=np.uint8),
            np.arange(samples) % 2,
        )
        for s in SPLITS
    }
    return Benchmark("synthetic", "synthetic.npz", "binary", 2, side, splits, "synthetic")


def measure(args, step, objective: str, backbone: str, device: torch.device) -> Row:
    timed = step.measure(args, objective, backbone, device)
    model, _ = step.build(objective, backbone, args.preset, args.patch_size, device)
    size = model.views.global_size
    monitor = TrainingMonitor(
        synthetic_benchmark(args.samples),
        image_size=size,
        device=device,
        linear=args.linear,
    )
    monitor.measure(model.eval_backbone())  # warm-up: kernels, allocator
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        monitor.measure(model.eval_backbone())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return Row(
        objective, backbone, args.batch_size, timed.step_s, args.samples, size, min(times),
        args.every,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=["cpu", "paper"], default=None)
    parser.add_argument("--objectives", default="dinov2")
    parser.add_argument("--backbones", default="vit_tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument("--every", type=int, default=1000, help="train.monitor_every")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--linear", action="store_true", help="train.monitor_linear")
    args = parser.parse_args(argv)
    args.compile = False
    device = torch.device(args.device)
    args.preset = args.preset or ("paper" if device.type == "cuda" else "cpu")
    step = _bench_train_step()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device: {device} ({name or platform.machine()}), torch {torch.__version__}, "
        f"preset {args.preset}, threads {torch.get_num_threads()}, "
        f"monitor {'kNN + linear' if args.linear else 'kNN'}"
    )
    print(
        "| objective | backbone | batch | s/step | images/split | px | monitor s "
        "| monitor_every | cost share |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for backbone in args.backbones.split(","):
        for objective in args.objectives.split(","):
            r = measure(args, step, objective, backbone, device)
            rows.append(r)
            print(
                f"| {r.objective} | {r.backbone} | {r.batch} | {r.step_s:.3f} | {r.samples} "
                f"| {r.size} | {r.monitor_s:.2f} | {r.every} | {100 * r.share:.2f}% |",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
