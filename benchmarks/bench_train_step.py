"""Objective train-step throughput, peak memory and model FLOPs utilisation.

One "step" is what the training loop does per optimizer step: the objective's
``training_step`` under autocast, backward, the before/after optimizer hooks
(last-layer freeze, EMA teacher) and AdamW — on synthetic, already-augmented
views, so the data pipeline is not measured here (see the loader benchmark).

    python benchmarks/bench_train_step.py                          # tiny CPU setting
    python benchmarks/bench_train_step.py --device cuda --preset paper \\
        --backbones vit_small,vit_base,vit_large --batch-size 64

FLOPs per step are counted with ``torch.utils.flop_counter`` (matmuls and
attention, forward + backward); MFU divides them by step time and the card's
peak dense bf16 rate.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import sys
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from biovfm_core.protocols import Batch, StepInfo, TaskInfo
from biovfm_core.registry import get_registry
from biovfm_core.train import distributed as D

# Peak dense bf16 tensor-core rates (FLOP/s), from the vendors' data sheets.
PEAK_BF16 = {
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "A100": 312e12,
}

# Views and heads per preset: "paper" follows DINOv2 / MAE, "cpu" fits a laptop.
PRESETS = {
    "paper": {
        "dinov2": {"global_size": 224, "local_size": 96, "local_crops": 8, "prototypes": 65536},
        "mae": {"image_size": 224},
    },
    "cpu": {
        "dinov2": {"global_size": 64, "local_size": 32, "local_crops": 4, "prototypes": 1024},
        "mae": {"image_size": 64, "decoder_depth": 2, "decoder_dim": 128, "decoder_heads": 4},
    },
}


@dataclass
class Result:
    objective: str
    backbone: str
    params_m: float
    batch: int
    step_s: float
    images_s: float
    gflop_step: float
    mfu: float | None
    peak_mem_gb: float


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def make_batch(views, batch_size: int, device: torch.device) -> Batch:
    g = [
        torch.randn(batch_size, 3, views.global_size, views.global_size, device=device)
        for _ in range(views.global_crops)
    ]
    loc = [
        torch.randn(batch_size, 3, views.local_size, views.local_size, device=device)
        for _ in range(views.local_crops)
    ]
    return Batch(global_views=g, local_views=loc, modality=["ct"] * batch_size)


def build(objective: str, backbone: str, preset: str, patch: int, device: torch.device):
    registry = get_registry()
    options = dict(PRESETS[preset][objective])
    size = options.get("global_size", options.get("image_size", 224))
    net = registry.build("backbones", backbone, options={"image_size": size, "patch_size": patch})
    params = net.num_parameters()
    model = registry.build("objectives", objective, net, TaskInfo(), options=options)
    return model.to(device), params


def one_step(model, optimizer, batch, info, autocast) -> torch.Tensor:
    with autocast():
        loss = model.training_step(batch, info)["loss"]
    loss.backward()
    model.before_optimizer_step(info)
    torch.nn.utils.clip_grad_norm_(
        [p for p in model.parameters() if p.grad is not None], max_norm=3.0
    )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.after_optimizer_step(info)
    return loss


def measure(args, objective: str, backbone: str, device: torch.device) -> Result:
    torch.manual_seed(0)
    model, params = build(objective, backbone, args.preset, args.patch_size, device)
    if args.compile:
        D.for_each_block(model, lambda block: block.compile())  # as train.compile does
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")
    batch = make_batch(model.views, args.batch_size, device)
    total = args.warmup + args.steps
    use_bf16 = device.type == "cuda" and args.precision == "bf16"

    def autocast():
        if use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # Epoch 1 onwards: the last-layer freeze of epoch 0 would skip work we want timed.
    info = lambda i: StepInfo(total + i, 4 * total, total)  # noqa: E731
    for i in range(args.warmup):
        one_step(model, optimizer, batch, info(i), autocast)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(args.steps):
        loss = one_step(model, optimizer, batch, info(args.warmup + i), autocast)
    sync()
    step_s = (time.perf_counter() - start) / args.steps
    if not torch.isfinite(loss):
        raise RuntimeError(f"{objective}/{backbone}: non-finite loss {loss.item()}")
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 1e9
    else:  # process-wide high-water mark, in KiB on Linux
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6

    counter = FlopCounterMode(display=False)
    with counter:
        one_step(model, optimizer, batch, info(total), autocast)
    flops = counter.get_total_flops()
    peak = peak_flops(device)
    images = args.batch_size  # images per step; each image yields all its views
    return Result(
        objective=objective,
        backbone=backbone,
        params_m=params / 1e6,
        batch=args.batch_size,
        step_s=step_s,
        images_s=images / step_s,
        gflop_step=flops / 1e9,
        mfu=None if peak is None else flops / step_s / peak,
        peak_mem_gb=peak_mem,
    )


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--objectives", default="dinov2,mae")
    parser.add_argument("--backbones", default="vit_tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.preset = args.preset or ("paper" if device.type == "cuda" else "cpu")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device: {device} ({name or platform.machine()}), torch {torch.__version__}, "
        f"python {sys.version.split()[0]}, preset {args.preset}, precision "
        f"{args.precision if device.type == 'cuda' else 'fp32'}, compile {args.compile}, "
        f"threads {torch.get_num_threads()}"
    )
    print(
        "| objective | backbone | params (M) | batch | s/step | images/s | GFLOP/step "
        "| MFU | peak mem (GB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for backbone in args.backbones.split(","):
        for objective in args.objectives.split(","):
            try:
                r = measure(args, objective, backbone, device)
            except torch.OutOfMemoryError:
                print(f"| {objective} | {backbone} | | {args.batch_size} | out of memory |||||")
                torch.cuda.empty_cache()
                continue
            results.append(r)
            mfu = "-" if r.mfu is None else f"{100 * r.mfu:.1f}%"
            print(
                f"| {r.objective} | {r.backbone} | {r.params_m:.1f} | {r.batch} | "
                f"{r.step_s:.3f} | {r.images_s:.1f} | {r.gflop_step:.4g} | {mfu} | "
                f"{r.peak_mem_gb:.2f} |",
                flush=True,
            )
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


if __name__ == "__main__":
    main()
