"""biovfm's train step against a plain reference step written directly with timm + lightly.

Both sides train the same ViT on the same inputs with the same optimizer (AdamW,
clip 3.0, EMA teacher for DINOv2), in one process, in alternating rounds so that
machine noise hits both alike; the table reports the median time per step of each
and their ratio (>1: biovfm is slower). The DINOv2 reference uses lightly's DINO,
iBOT and KoLeo losses with running-mean centering, so biovfm runs with
``centering=centering`` for a like-for-like comparison.

``--reference matched`` (default) gives the reference the same bf16 autocast and
fused AdamW as biovfm on a GPU, so the ratio measures what biovfm's own layers cost;
``--reference plain`` runs it as first written — fp32, unfused AdamW — so the ratio
shows what biovfm's GPU defaults buy. On a CPU both are fp32 and the same.
``--compile`` compiles biovfm's transformer blocks (``train.compile``); the
reference stays eager.

    python benchmarks/bench_vs_reference.py                  # CPU, tiny setting
    python benchmarks/bench_vs_reference.py --device cuda --size 224 --local-size 96 \\
        --local-crops 8 --prototypes 65536 --backbone vit_small --batch-size 64
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import statistics
import time

import torch
from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
from lightly.models.modules import (
    DINOProjectionHead,
    MaskedVisionTransformerDecoderTIMM,
    MaskedVisionTransformerTIMM,
)
from lightly.models.utils import (
    get_at_index,
    patchify,
    random_block_mask,
    random_token_mask,
    repeat_token,
    set_at_index,
    update_momentum,
)
from torch import nn

from biovfm_core.protocols import Batch, StepInfo, TaskInfo
from biovfm_core.registry import get_registry
from biovfm_core.train import distributed as D


# ------------------------------------------------------------------ reference DINOv2
class RefDINOv2(nn.Module):
    def __init__(self, vit: nn.Module, k: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        dim = vit.embed_dim
        self.student = MaskedVisionTransformerTIMM(
            vit, weight_initialization="skip", pos_embed_initialization="skip"
        )
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        # The prototype norm is trained, as in DINOv2's head and biovfm's default.
        head = lambda: DINOProjectionHead(  # noqa: E731
            dim, hidden, bottleneck, k, batch_norm=False, norm_last_layer=False
        )
        self.s_head, self.t_head = head(), head()
        self.t_head.load_state_dict(self.s_head.state_dict())
        self.t_head.requires_grad_(False)
        self.dino = DINOLoss(output_dim=k, teacher_temp=0.04, warmup_teacher_temp=0.04)
        self.ibot = IBOTPatchLoss(output_dim=k, teacher_temp=0.04)
        self.koleo = KoLeoLoss()
        self.patch = 16

    def step(self, views: list[torch.Tensor], locals_: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(views)
        grid = x.shape[-1] // self.patch
        # DINOv2's blocks have >= 4 patches; tiny CPU grids cannot fit that at 10%.
        tiny = grid * grid * 0.1 < 4
        min_block = 1 if tiny else 4
        # lightly draws each image's masked share from (min, max) ratio; on a tiny grid a
        # draw under one patch (int(9 * 0.105) = 0) raises ValueError in its block search
        # (in ~6% of random states on a 3x3 grid), so the least share is one patch there.
        min_ratio = max(0.1, 1.0 / (grid * grid) + 1e-6) if tiny else 0.1
        mask = random_block_mask(
            (x.shape[0], grid, grid),
            min_image_mask_ratio=min_ratio,
            min_num_masks_per_block=min_block,
            device=x.device,
        )
        flat = mask.flatten(1)
        prefix = torch.zeros(x.shape[0], 1, dtype=torch.bool, device=x.device)
        with torch.no_grad():
            t = self.teacher.encode(x)
            t_cls = self.t_head(t[:, 0])
            t_patch = self.t_head(t[:, 1:][flat])
        s = self.student.encode(x, mask=torch.cat([prefix, flat], dim=1))
        s_cls = self.s_head(s[:, 0])
        s_patch = self.s_head(s[:, 1:][flat])
        s_loc = self.s_head(self.student.encode(torch.cat(locals_))[:, 0]) if locals_ else None
        student = list(s_cls.chunk(len(views))) + (
            list(s_loc.chunk(len(locals_))) if s_loc is not None else []
        )
        dino = self.dino(list(t_cls.chunk(len(views))), student)
        ibot = self.ibot(t_patch, s_patch, mask)
        koleo = sum(self.koleo(c) for c in s[:, 0].chunk(len(views)))
        return dino + ibot + 0.1 * koleo

    def after(self) -> None:
        update_momentum(self.student, self.teacher, 0.996)
        update_momentum(self.s_head, self.t_head, 0.996)


# --------------------------------------------------------------------- reference MAE
class RefMAE(nn.Module):
    def __init__(self, vit: nn.Module, size: int) -> None:
        super().__init__()
        self.encoder = MaskedVisionTransformerTIMM(
            vit, weight_initialization="skip", pos_embed_initialization="skip"
        )
        self.patch = 16
        self.n = (size // self.patch) ** 2
        self.embed = nn.Linear(vit.embed_dim, 128)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=self.n, embed_dim=128, depth=2, num_heads=4, num_prefix_tokens=1
        )
        self.head = nn.Linear(128, self.patch**2 * 3)

    def step(self, views: list[torch.Tensor], locals_: list[torch.Tensor]) -> torch.Tensor:
        images = views[0]
        # lightly's MAE recipe: keep 25% of tokens (the class token always), decode all.
        idx_keep, idx_mask = random_token_mask(
            (images.shape[0], self.n + 1), 0.75, device=images.device
        )
        encoded = self.embed(self.encoder.encode(images, idx_keep=idx_keep))
        tokens = repeat_token(self.decoder.mask_token, (images.shape[0], self.n + 1))
        decoded = self.decoder(set_at_index(tokens, idx_keep, encoded.type_as(tokens)))
        pred = self.head(get_at_index(decoded, idx_mask))
        target = get_at_index(patchify(images, self.patch), idx_mask - 1)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        return ((pred - (target - mean) / (var + 1e-6).sqrt()) ** 2).mean()

    def after(self) -> None:
        return None


# ------------------------------------------------------------------------- timing
def build_pair(args, objective: str, device: torch.device):
    registry = get_registry()
    torch.manual_seed(0)
    random.seed(0)  # lightly's block masking draws from Python's random module
    backbone = registry.build(
        "backbones", args.backbone, options={"image_size": args.size, "patch_size": 16}
    )
    if objective == "dinov2":
        options = {
            "prototypes": args.prototypes,
            "head_hidden_dim": args.hidden,
            "head_bottleneck_dim": 256,
            "centering": "centering",
            "global_size": args.size,
            "local_size": args.local_size,
            "local_crops": args.local_crops,
        }
        reference = RefDINOv2(copy.deepcopy(backbone.vit), args.prototypes, args.hidden, 256)
    else:
        options = {
            "image_size": args.size,
            "decoder_depth": 2,
            "decoder_dim": 128,
            "decoder_heads": 4,
        }
        reference = RefMAE(copy.deepcopy(backbone.vit), args.size)
    ours = registry.build("objectives", objective, backbone, TaskInfo(), options=options)
    return ours.to(device).train(), reference.to(device).train()


def make_views(ours, batch: int, device: torch.device):
    v = ours.views
    g = [
        torch.randn(batch, 3, v.global_size, v.global_size, device=device)
        for _ in range(v.global_crops)
    ]
    loc = [
        torch.randn(batch, 3, v.local_size, v.local_size, device=device)
        for _ in range(v.local_crops)
    ]
    return g, loc


def timed(fn, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def compare(args, objective: str, device: torch.device) -> dict:
    ours, ref = build_pair(args, objective, device)
    if args.compile:
        D.for_each_block(ours, lambda block: block.compile())  # as train.compile does
    globals_, locals_ = make_views(ours, args.batch_size, device)
    batch = Batch(global_views=globals_, local_views=locals_)
    fused = device.type == "cuda"
    opt_ours = torch.optim.AdamW(
        [p for p in ours.parameters() if p.requires_grad], lr=1e-4, fused=fused
    )
    matched = args.reference == "matched"
    opt_ref = torch.optim.AdamW(
        [p for p in ref.parameters() if p.requires_grad], lr=1e-4, fused=fused and matched
    )
    amp = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else contextlib.nullcontext
    )
    amp_ref = amp if matched else contextlib.nullcontext
    total = 10_000
    step_no = [total]  # past epoch 0: no last-layer freeze on our side

    def ours_step() -> None:
        info = StepInfo(step_no[0], 4 * total, total)
        with amp():
            loss = ours.training_step(batch, info)["loss"]
        loss.backward()
        ours.before_optimizer_step(info)
        torch.nn.utils.clip_grad_norm_([p for p in ours.parameters() if p.grad is not None], 3.0)
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        ours.after_optimizer_step(info)
        step_no[0] += 1

    def ref_step() -> None:
        with amp_ref():
            loss = ref.step(globals_, locals_)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in ref.parameters() if p.grad is not None], 3.0)
        opt_ref.step()
        opt_ref.zero_grad(set_to_none=True)
        ref.after()

    for _ in range(args.warmup):
        ours_step()
        ref_step()
    t_ours, t_ref = [], []
    for _ in range(args.rounds):  # alternate so drift in machine load hits both
        t_ref.append(timed(ref_step, args.steps, device))
        t_ours.append(timed(ours_step, args.steps, device))
    mo, mr = statistics.median(t_ours), statistics.median(t_ref)
    return {"objective": objective, "ours": mo, "ref": mr, "ratio": mo / mr}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--objectives", default="dinov2,mae")
    parser.add_argument("--backbone", default="vit_tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--local-size", type=int, default=32)
    parser.add_argument("--local-crops", type=int, default=4)
    parser.add_argument("--prototypes", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--reference",
        choices=["matched", "plain"],
        default="matched",
        help="reference with biovfm's GPU precision and optimizer, or fp32 + unfused AdamW",
    )
    parser.add_argument(
        "--compile", action="store_true", help="compile biovfm's transformer blocks"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{args.backbone} batch {args.batch_size}, {args.size}px"
        f" (+{args.local_crops}x{args.local_size}px locals for dinov2), "
        f"{args.rounds} alternating rounds of {args.steps} steps, {args.reference} reference, "
        f"biovfm compiled: {args.compile}"
    )
    print("| objective | biovfm s/step | reference s/step | biovfm / reference |")
    print("|---|---|---|---|")
    rows = []
    for objective in args.objectives.split(","):
        row = compare(args, objective, device)
        rows.append(row)
        print(
            f"| {objective} | {row['ours']:.4f} | {row['ref']:.4f} | {row['ratio']:.3f} |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
