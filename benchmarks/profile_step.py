"""Where one training step's time goes: torch.profiler over the step, split by phase.

The step is the training loop's, on synthetic views of the objective's sizes: the
recipe's per-batch augmentation (kornia), the objective's forward under autocast,
backward, gradient clipping + AdamW, and the objective's after-step hook (EMA
teacher). For each phase the table gives the number of top-level tensor ops — on a
GPU each is at least one kernel launch, so a phase made of many small ops is bound
by the host, not the card — and the host (CPU) and device (CUDA) time per step.
A second table lists the ops with the most time. ``train.profile_steps`` gives the
same tables for steps of a real run (``biovfm_core/train/profiling.py``).

    python benchmarks/profile_step.py                        # DINOv2, tiny CPU setting
    python benchmarks/profile_step.py --device cuda --backbone vit_large --batch-size 64 \\
        --trace $OUT/dinov2_vit_large.json                   # + a Chrome/Perfetto trace
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import PRESETS, build, make_batch

from biovfm_core.protocols import StepInfo
from biovfm_core.registry import get_registry
from biovfm_core.train.profiling import PhaseRow, ops_markdown, phase_markdown, phase_rows

PHASES = ("augment", "forward", "backward", "clip+optimizer", "after_step")


def profiled_steps(args, device: torch.device):
    torch.manual_seed(0)
    model, _ = build(args.objective, args.backbone, args.preset, args.patch_size, device)
    model.train()
    recipe = get_registry().build("augmentations", "default", model.views)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")
    batch = make_batch(model.views, args.batch_size, device)
    use_bf16 = device.type == "cuda"

    def autocast():
        if use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    total = args.warmup + args.steps
    info = lambda i: StepInfo(total + i, 4 * total, total)  # noqa: E731 (past the freeze)

    def step(i: int) -> None:
        with record_function("augment"):
            views = recipe.batch_transform(batch)
        with record_function("forward"), autocast():
            loss = model.training_step(views, info(i))["loss"]
        with record_function("backward"):
            loss.backward()
        with record_function("clip+optimizer"):
            model.before_optimizer_step(info(i))
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.grad is not None], max_norm=3.0
            )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with record_function("after_step"):
            model.after_optimizer_step(info(i))

    for i in range(args.warmup):
        step(i)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        for i in range(args.steps):
            step(args.warmup + i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return prof


def main(argv: list[str] | None = None) -> list[PhaseRow]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--objective", default="dinov2", choices=["dinov2", "mae"])
    parser.add_argument("--backbone", default="vit_tiny")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="rows of the per-op table")
    parser.add_argument("--trace", default=None, help="write a Chrome trace (JSON) here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.preset = args.preset or ("paper" if device.type == "cuda" else "cpu")
    on_device = device.type == "cuda"

    prof = profiled_steps(args, device)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    rows = phase_rows(prof, args.steps, PHASES, on_device)
    print(
        f"{args.objective} {args.backbone}, batch {args.batch_size}, preset {args.preset}, "
        f"{device}, torch {torch.__version__}, {args.steps} profiled steps"
    )
    print(phase_markdown(rows))
    print()
    print(ops_markdown(prof, args.steps, PHASES, on_device, top=args.top))
    return rows


if __name__ == "__main__":
    main()
