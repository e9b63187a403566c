"""AdamW with the recipes' parameter groups and step-indexed lr / weight-decay schedules.

An objective may hold parameters still early on the way DINOv2 does (learning rate 0,
AdamW's moments still updating): its ``lr_freeze()`` maps parameter names to the
number of epochs their learning rate stays 0.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from biovfm_core.config import OptimConfig
from biovfm_core.errors import ConfigError
from biovfm_core.protocols import OptimRecipe
from biovfm_core.schedules import WARMUPS, cosine_schedule

# The default rule (``decay_exempt="1d_and_tokens"``) also spares position
# embeddings and class/mask/register tokens, as timm's ``no_weight_decay()`` does.
# DINOv2 and MAE decay them (see ``_exempt``), so their recipes name their own rule.
_TOKENS = re.compile(r"(^|\.)(pos_embed|cls_token|mask_token|reg_token|register_tokens)$")
DECAY_EXEMPT = ("1d_and_tokens", "1d_and_bias", "bias_norm_gamma")
_BLOCK = re.compile(r"(^|\.)blocks\.(\d+)\.")
_EMBED = re.compile(r"(^|\.)(patch_embed|pos_embed|cls_token|mask_token|reg_token|register_tokens)")


@dataclass(frozen=True)
class Plan:
    """The resolved optimisation plan of a run (what metrics.csv's lr column follows)."""

    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    weight_decay: float
    weight_decay_end: float
    betas: tuple[float, float]
    grad_clip: float | None
    layer_decay: float | None
    patch_embed_lr_mult: float
    steps_per_epoch: int = 1
    warmup: str = "linspace"
    decay_exempt: str = "1d_and_tokens"

    def lr_at(self, step: int) -> float:
        return cosine_schedule(
            step, self.total_steps, self.lr, self.min_lr, self.warmup_steps, warmup=self.warmup
        )

    def weight_decay_at(self, step: int) -> float:
        return cosine_schedule(step, self.total_steps, self.weight_decay, self.weight_decay_end)


def resolve_recipe(recipe: OptimRecipe, overrides: OptimConfig) -> OptimRecipe:
    """The objective's recipe with every ``optim.*`` field the user set replacing it."""
    changes = {}
    for f in fields(OptimRecipe):
        value = getattr(overrides, f.name, None)
        if value is not None:
            changes[f.name] = value
    resolved = replace(recipe, **changes)
    if resolved.lr_scaling not in ("linear", "sqrt", "none"):
        raise ConfigError(f"lr_scaling must be linear, sqrt or none, not {resolved.lr_scaling!r}")
    if resolved.warmup not in WARMUPS:
        raise ConfigError(
            f"the objective's OptimRecipe.warmup must be one of {', '.join(WARMUPS)}, "
            f"not {resolved.warmup!r}"
        )
    if resolved.decay_exempt not in DECAY_EXEMPT:
        raise ConfigError(
            f"the objective's OptimRecipe.decay_exempt must be one of "
            f"{', '.join(DECAY_EXEMPT)}, not {resolved.decay_exempt!r}"
        )
    return resolved


def make_plan(
    recipe: OptimRecipe,
    overrides: OptimConfig,
    *,
    batch_size: int,
    steps_per_epoch: int,
    total_steps: int,
) -> Plan:
    recipe = resolve_recipe(recipe, overrides)
    if overrides.lr is not None:
        lr = overrides.lr
    else:
        ratio = batch_size / recipe.reference_batch
        scale = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[recipe.lr_scaling]
        lr = recipe.base_lr * scale
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    # A short run (the demo, a test) still warms up, over at most a tenth of it.
    warmup = min(warmup, max(0, total_steps // 10)) if warmup >= total_steps else warmup
    wd_end = recipe.weight_decay if recipe.weight_decay_end is None else recipe.weight_decay_end
    return Plan(
        lr=lr,
        min_lr=min(recipe.min_lr, lr),
        warmup_steps=warmup,
        total_steps=total_steps,
        weight_decay=recipe.weight_decay,
        weight_decay_end=wd_end,
        betas=tuple(recipe.betas),
        grad_clip=recipe.grad_clip,
        layer_decay=recipe.layer_decay,
        patch_embed_lr_mult=recipe.patch_embed_lr_mult,
        steps_per_epoch=steps_per_epoch,
        warmup=recipe.warmup,
        decay_exempt=recipe.decay_exempt,
    )


def param_groups(model: nn.Module, backbone: nn.Module, plan: Plan) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (decays?, lr multiplier).

    Each group carries ``lr_mult``, ``wd_mult`` and ``frozen_until`` (the first step
    with a non-zero lr); ``apply_schedule`` sets the group's lr and weight decay from
    them every step.
    """
    backbone_names = {id(p): name for name, p in backbone.named_parameters()}
    depth = _depth(backbone_names.values())
    freeze = getattr(model, "lr_freeze", None)
    frozen_epochs = dict(freeze()) if freeze is not None else {}
    unknown = set(frozen_epochs) - {name for name, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"lr_freeze names no parameter of the model: {sorted(unknown)}")
    groups: dict[tuple[float, float, int], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        local = backbone_names.get(id(param))
        wd_mult = 0.0 if _exempt(name, param, plan.decay_exempt) else 1.0
        lr_mult = 1.0
        if local is not None:
            if plan.layer_decay is not None:
                lr_mult = plan.layer_decay ** (depth + 1 - _layer_id(local, depth))
            if _EMBED.search(local) and "patch_embed" in local:
                lr_mult *= plan.patch_embed_lr_mult
        frozen_until = round(frozen_epochs.get(name, 0) * plan.steps_per_epoch)
        key = (wd_mult, lr_mult, frozen_until)
        group = groups.setdefault(
            key,
            {"params": [], "wd_mult": wd_mult, "lr_mult": lr_mult, "frozen_until": frozen_until},
        )
        group["params"].append(param)
    if not groups:
        raise ConfigError("the objective has no trainable parameters")
    return list(groups.values())


def build_optimizer(
    model: nn.Module, backbone: nn.Module, plan: Plan, device: torch.device
) -> torch.optim.AdamW:
    groups = param_groups(model, backbone, plan)
    # The fused kernel is one launch for all parameters: the fastest AdamW on CUDA.
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=plan.lr, betas=plan.betas, fused=fused)
    apply_schedule(optimizer, plan, 0)
    return optimizer


def apply_schedule(optimizer: torch.optim.Optimizer, plan: Plan, step: int) -> tuple[float, float]:
    lr, wd = plan.lr_at(step), plan.weight_decay_at(step)
    for group in optimizer.param_groups:
        group["lr"] = 0.0 if step < group.get("frozen_until", 0) else lr * group["lr_mult"]
        group["weight_decay"] = wd * group["wd_mult"]
    return lr, wd


def _exempt(name: str, param: torch.Tensor, rule: str) -> bool:
    """Whether ``rule`` (``OptimRecipe.decay_exempt``) spares ``name`` weight decay."""
    if rule == "bias_norm_gamma":
        # dinov2/utils/param_groups.py get_params_groups_with_decay: wd_multiplier 0
        # for `name.endswith(".bias") or "norm" in name or "gamma" in name`; position
        # embeddings, cls/register/mask tokens and the prototypes' g decay.
        return name.endswith(".bias") or "norm" in name or "gamma" in name
    if rule == "1d_and_bias":
        # timm 0.3.2 optim_factory.add_weight_decay, MAE main_pretrain.py's groups:
        # `len(param.shape) == 1 or name.endswith(".bias")` (its skip_list is empty).
        return param.ndim == 1 or name.endswith(".bias")
    return param.ndim <= 1 or bool(_TOKENS.search(name))


def _depth(names) -> int:
    ids = [int(m.group(2)) for n in names if (m := _BLOCK.search(n))]
    return max(ids) + 1 if ids else 0


def _layer_id(name: str, depth: int) -> int:
    """0 for embeddings, i + 1 for block i, depth + 1 for the final norm and the rest."""
    if _EMBED.search(name):
        return 0
    match = _BLOCK.search(name)
    if match:
        return int(match.group(2)) + 1
    return depth + 1
