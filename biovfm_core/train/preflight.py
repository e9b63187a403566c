"""Preflight: the resolved objective built on the meta device and one batch of every view
size pushed through backbone, heads, masks and loss, before any data is read.

On ``torch.device("meta")`` tensors have shapes but no storage, so a ViT-g with
131,072-prototype heads at 224/98 px costs no memory and a few seconds of Python.
Every mismatch becomes one line naming the options to change. The same pass measures
what the step keeps for the backward pass (forward hooks on the transformer blocks
and the prototype layers), for the memory estimate of ``--dry-run``.

The preflight draws no random numbers from the training streams: every generator it
might touch (torch's CPU generator for iBOT masks, NumPy's, Python's) is restored
afterwards, so a run with or without it is bit-identical.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from biovfm_core.config import RunConfig
from biovfm_core.errors import BiovfmError, ConfigError
from biovfm_core.models.specs import frozen_loader
from biovfm_core.protocols import Batch, FrozenModel, StepInfo, TaskInfo
from biovfm_core.train import distributed as D
from biovfm_core.train.memory import CARDS_GB, Estimate, Pass, gb

# The meta batch: shapes are all the step checks, and the estimate scales linearly.
META_BATCH = 4
# Linear layers at least this wide are prototype/logit layers (DINO and iBOT heads,
# a classifier over many classes); their fp32 outputs count apart from the blocks.
LOGIT_WIDTH = 4096


@dataclass
class Preflight:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    estimate: Estimate | None = None
    per_gpu_batch: int = 1
    per_gpu_from: str = ""


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    """Restore every generator the step may draw from (iBOT masks use torch's CPU one)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)


def per_gpu_batch(config: RunConfig) -> tuple[int, str]:
    """The batch one GPU sees, and how it was found (the estimate's input)."""
    world = int(os.environ.get("WORLD_SIZE", "0") or 0)
    batch = config.train.batch_size
    if world:
        return math.ceil(batch / world), f"train.batch_size {batch} / WORLD_SIZE {world}"
    if config.recipe:
        from biovfm_core.recipes import load

        official = load(config.recipe).per_gpu_batch
        if official:
            # One process (a login node's dry run): the official per-GPU batch is the
            # one a GPU would see; under torchrun WORLD_SIZE gives the real share.
            return official, f"recipe {config.recipe}'s per-GPU batch; under torchrun "
            "train.batch_size / WORLD_SIZE"
    return batch, f"train.batch_size {batch} on one GPU (under torchrun: / WORLD_SIZE)"


# In-place ops that weight initialisers call; on meta tensors they compute nothing but
# still cost a Python dispatch each (a ViT-g's init is thousands of them).
_INIT_OPS = frozenset(
    {"uniform_", "normal_", "erfinv_", "mul_", "add_", "clamp_", "fill_", "zero_", "copy_",
     "div_", "sub_", "exponential_", "bernoulli_"}
)  # fmt: skip


class _MetaInitSkipped(torch.overrides.TorchFunctionMode):
    """Skip weight initialisation on meta tensors: it cannot change a shape or dtype."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if (
            getattr(func, "__name__", "") in _INIT_OPS
            and args
            and isinstance(args[0], torch.Tensor)
            and args[0].is_meta
        ):
            return args[0]
        return func(*args, **(kwargs or {}))


def run_preflight(config: RunConfig, registry: Any, *, check_init: bool = False) -> Preflight:
    """Build ``config``'s objective on the meta device and run one step's forward on it."""
    result = Preflight()
    result.per_gpu_batch, result.per_gpu_from = per_gpu_batch(config)
    with _rng_untouched(), torch.device("meta"), _MetaInitSkipped():
        try:
            backbone = registry.build(
                "backbones", config.backbone, options=config.options["backbone"]
            )
            objective = registry.build(
                "objectives",
                config.objective,
                backbone,
                TaskInfo(num_classes=2, load_model=frozen_loader(registry)),
                options=config.options["objective"],
            )
        except ConfigError as exc:
            result.problems.append(str(exc))
            return result
        except BiovfmError as exc:
            # A plugin that cannot be built on the meta device is not a wrong config:
            # say so and let the run find out at its real build.
            result.notes.append(f"preflight skipped: cannot build on the meta device: {exc}")
            return result
    result.problems += _view_problems(config, registry, backbone, objective)
    if check_init and config.init and not config.resume:
        result.problems += _init_problems(config, registry, backbone, objective)
    result.problems += _acceleration_problems(config, objective)
    if result.problems:
        return result
    try:
        with _rng_untouched():
            result.estimate = _meta_step(config, objective, backbone, result.per_gpu_batch)
    except BiovfmError as exc:
        result.problems.append(str(exc))
    except Exception as exc:  # a plugin's step failing at these sizes: say where
        if _cpu_fallback(config, registry, objective, result):
            return result
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        result.problems.append(
            f"preflight: the {config.objective} step on {config.backbone} failed at crops "
            f"{_sizes(objective)}: {type(exc).__name__}: {first}; check the objective.* and "
            "backbone.* options above (BIOVFM_DEBUG=1 for the traceback)"
        )
        if os.environ.get("BIOVFM_DEBUG", "") not in ("", "0"):
            raise
    return result


def _cpu_fallback(config: RunConfig, registry: Any, meta_objective: Any, result: Preflight) -> bool:
    """Some ops have no meta kernel (a plugin's ``.item()``, a custom op). Then run the
    step for real on the CPU with two images at the real crop sizes, when the model is
    small enough to build there; returns whether that step ran."""
    if sum(p.numel() for p in meta_objective.parameters()) > 200e6:
        result.notes.append("preflight: the step has ops the meta device lacks; not checked")
        return True
    with _rng_untouched():
        backbone = registry.build("backbones", config.backbone, options=config.options["backbone"])
        objective = registry.build(
            "objectives",
            config.objective,
            backbone,
            TaskInfo(num_classes=2, load_model=frozen_loader(registry)),
            options=config.options["objective"],
        )
        views = objective.views
        chans = int(getattr(backbone, "in_chans", 3))
        batch = Batch(
            global_views=[torch.zeros(2, chans, views.global_size, views.global_size)]
            * views.global_crops,
            local_views=[torch.zeros(2, chans, views.local_size, views.local_size)]
            * views.local_crops,
            labels=torch.zeros(2, dtype=torch.long) if views.needs_labels else None,
        )
        try:
            with torch.no_grad():
                objective.training_step(
                    batch, StepInfo(step=0, total_steps=100, steps_per_epoch=10)
                )
        except Exception:
            return False
    result.notes.append("preflight: ran on the CPU with 2 images (ops the meta device lacks)")
    return True


def _sizes(objective: Any) -> str:
    v = objective.views
    local = f" + {v.local_crops}x{v.local_size}px" if v.local_crops else ""
    return f"{v.global_crops}x{v.global_size}px{local}"


def _crop_option(registry: Any, objective_name: str, which: str) -> str:
    """The option that sets the global or local view side of this objective."""
    names = registry.options("objectives", objective_name)
    for candidate in (f"{which}_size", "image_size"):
        if candidate in names:
            return f"objective.{candidate}"
    return f"the {objective_name} objective's {which} crop size"


def _view_problems(config: RunConfig, registry: Any, backbone: Any, objective: Any) -> list[str]:
    patch = int(getattr(backbone, "patch_size", 1) or 1)
    if patch <= 1:
        return []
    from biovfm_core.config import crop_size_message

    views = objective.views
    out = []
    for which, size, count in (
        ("global", views.global_size, views.global_crops),
        ("local", views.local_size, views.local_crops),
    ):
        if count and size % patch:
            out.append(
                crop_size_message(_crop_option(registry, config.objective, which), size, patch)
            )
    return out


def _init_problems(config: RunConfig, registry: Any, backbone: Any, objective: Any) -> list[str]:
    """The init file against the meta backbone: the same one-line errors the run gives,
    plus the FFN kind, which a bare shape error would not name."""
    from biovfm_core.models import published

    source = published.read_init(config.init, registry)
    vit = getattr(backbone, "vit", None)
    if vit is not None:
        key = "blocks.0.mlp.fc1.weight"
        theirs, ours = source.state.get(key), vit.state_dict().get(key)
        if theirs is not None and ours is not None and tuple(theirs.shape) != tuple(ours.shape):
            file_swiglu = theirs.shape[0] != 4 * theirs.shape[1]
            return [
                f"--init {config.init}: its FFN is {'SwiGLU' if file_swiglu else 'an MLP'} "
                f"({tuple(theirs.shape)}), the backbone's is {tuple(ours.shape)}: set --opt "
                f"backbone.swiglu={'true' if file_swiglu else 'false'}"
            ]
    try:
        with warnings.catch_warnings():
            # Copying into meta parameters is a no-op by design: only the checks count.
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
            published.init_objective(objective, backbone, source, f"backbone {config.backbone!r}")
    except ConfigError as exc:
        return [str(exc)]
    return []


def _acceleration_problems(config: RunConfig, objective: Any) -> list[str]:
    wants_blocks = config.train.activation_checkpointing or config.train.distributed == "fsdp"
    if not wants_blocks or D.for_each_block(objective, lambda _: None):
        return []
    return [
        f"backbone {config.backbone!r} has no transformer blocks, which "
        "train.activation_checkpointing and train.distributed=fsdp work block by block: "
        "set train.activation_checkpointing=false and train.distributed=ddp"
    ]


def _signature(block: torch.nn.Module) -> tuple:
    return (type(block), tuple((n, tuple(p.shape)) for n, p in block.named_parameters()))


def _run_repeats_once(blocks: list[torch.nn.Module]) -> Callable[[], None]:
    """Meta tensors carry shapes only, and a ViT-g's 40 blocks map the same shape to
    the same shape: once a block of one kind (class and parameter shapes) has been
    seen to keep its input's shape, the other blocks of that kind return their input
    unchanged. The block hooks still fire, so the memory estimate counts every block;
    the step costs a block's Python per model instead of forty (seconds on a laptop).
    Returns what puts the real forwards back."""
    keeps_shape: dict[tuple, bool] = {}

    def watch(kind: tuple) -> Callable:
        def hook(module, args, output) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
                same = output.shape == args[0].shape and output.dtype == args[0].dtype
                keeps_shape.setdefault(kind, same)

        return hook

    hooks = []
    for block in blocks:
        kind = _signature(block)
        hooks.append(block.register_forward_hook(watch(kind)))

        def forward(x, *args, _real=block.forward, _kind=kind, **kwargs):
            if keeps_shape.get(_kind) and isinstance(x, torch.Tensor) and not args:
                return x
            return _real(x, *args, **kwargs)

        block.forward = forward

    def restore() -> None:
        for hook in hooks:
            hook.remove()
        for block in blocks:
            del block.forward

    return restore


def _meta_step(config: RunConfig, objective: Any, backbone: Any, per_gpu: int) -> Estimate:
    """One forward of the step on meta tensors; what it keeps, scaled to ``per_gpu``."""
    views = objective.views
    b = max(2, min(META_BATCH, per_gpu))  # KoLeo needs two images per crop
    # The same iBOT masks every time, so the estimate is reproducible; the caller
    # restores the generators afterwards.
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    chans = int(getattr(backbone, "in_chans", 3))

    def crops(n: int, side: int) -> list[torch.Tensor]:
        return [torch.empty(b, chans, side, side, device="meta") for _ in range(n)]

    labels = torch.zeros(b, dtype=torch.long, device="meta") if views.needs_labels else None
    batch = Batch(
        global_views=crops(views.global_crops, views.global_size),
        local_views=crops(views.local_crops, views.local_size),
        labels=labels,
    )
    passes: list[Pass] = []
    logits = {"grad": 0, "nograd": 0}
    blocks = []
    D.for_each_block(objective, blocks.append)

    def on_block(module, args, output) -> None:
        if torch.is_grad_enabled() and args and args[0].dim() == 3:
            n, s, h = args[0].shape
            passes.append(Pass(images=int(n), tokens=int(s), width=int(h), depth=1))

    def on_linear(module, args, output) -> None:
        if module.out_features >= LOGIT_WIDTH:
            logits["grad" if torch.is_grad_enabled() else "nograd"] += output.numel()

    in_blocks = {id(m) for block in blocks for m in block.modules()}  # MLPs are not logits
    hooks = [block.register_forward_hook(on_block) for block in blocks]
    hooks += [
        m.register_forward_hook(on_linear)
        for m in objective.modules()
        if isinstance(m, torch.nn.Linear)
        and m.out_features >= LOGIT_WIDTH
        and id(m) not in in_blocks
    ]
    objective.train()
    restore = _run_repeats_once(blocks)
    try:
        out = objective.training_step(batch, StepInfo(step=0, total_steps=100, steps_per_epoch=10))
    finally:
        restore()
        for hook in hooks:
            hook.remove()
    if not isinstance(out, dict) or "loss" not in out or out["loss"].dim() != 0:
        raise ConfigError(
            f"preflight: objective {config.objective!r} returned no scalar 'loss' from its step"
        )
    scale = per_gpu / b
    params = sum(p.numel() for p in objective.parameters())
    frozen = getattr(objective, "teacher", None)
    if isinstance(frozen, FrozenModel):
        # A distillation teacher lives outside the objective's modules, on the same GPU.
        modules = (frozen.backbone, *frozen.heads.values())
        params += sum(p.numel() for m in modules for p in m.parameters())
    trainable = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    kept = tuple(Pass(round(p.images * scale), p.tokens, p.width, p.depth) for p in passes)
    precision = config.train.precision
    return Estimate(
        params=params,
        trainable=trainable,
        passes=kept,
        logit_bytes=4 * (3 * logits["grad"] + logits["nograd"]) * scale,
        bf16=precision in ("auto", "bf16", "fp16"),
    )


def preflight_report(config: RunConfig, registry: Any) -> list[str]:
    """``--dry-run``'s preflight lines; a mismatch raises one ``ConfigError`` line."""
    result = run_preflight(config, registry, check_init=True)
    if result.problems:
        raise ConfigError("; ".join(result.problems))
    est = result.estimate
    assert est is not None
    lines = [
        f"# preflight: one {config.objective} step on {config.backbone} ran on the meta "
        "device at these sizes; no mismatch",
        f"# memory per GPU (approximate, docs/training.md#memory-per-gpu), per-GPU batch "
        f"{result.per_gpu_batch} ({result.per_gpu_from}), "
        f"{'bf16' if est.bf16 else 'fp32'} activations:",
        f"#   parameters {gb(4 * est.params)} ({est.params / 1e6:.0f}M, teacher included), "
        f"gradients {gb(4 * est.trainable)}, AdamW moments {gb(8 * est.trainable)}, "
        f"activations {gb(est.activation_bytes())} "
        f"({gb(est.activation_bytes(checkpointing=True))} with activation checkpointing)",
        f"#   total {gb(est.total_bytes())}; "
        + "; ".join(f"{card} GB card: {est.needs(card)}" for card in CARDS_GB),
    ]
    return lines


def recipe_memory_table(registry: Any) -> list[str]:
    """docs/training.md's table: each recipe's estimate at its official per-GPU batch
    (``per_gpu_batch``; one GPU's share without torchrun otherwise), bf16 activations."""
    from biovfm_core.recipes import apply_recipe, names

    rows = [
        "| recipe | per-GPU batch | parameters (teacher incl.) | weights + grads + AdamW "
        "| activations (checkpointed) | 40 GB card | 80 GB card |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names():
        config = RunConfig()
        config.set("recipe", name)
        apply_recipe(config)
        config.validate(registry)
        result = run_preflight(config, registry)
        est = result.estimate
        if est is None:
            raise ConfigError(f"recipe {name}: " + "; ".join(result.problems + result.notes))
        rows.append(
            f"| `{name}` | {result.per_gpu_batch} | {est.params / 1e6:,.0f}M "
            f"| {gb(est.static_bytes())} | {gb(est.activation_bytes())} "
            f"({gb(est.activation_bytes(checkpointing=True))}) "
            f"| {est.needs(40)} | {est.needs(80)} |"
        )
    return rows
