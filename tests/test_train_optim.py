"""Optimizer groups and schedules against the recipes' stated rules."""

from __future__ import annotations

import math

import pytest
import torch

from biovfm_core.config import OptimConfig
from biovfm_core.protocols import OptimRecipe, TaskInfo
from biovfm_core.registry import get_registry
from biovfm_core.train.optim import apply_schedule, build_optimizer, make_plan, param_groups


def _dinov2():
    registry = get_registry()
    backbone = registry.build("backbones", "vit_tiny", options={"image_size": 32})
    objective = registry.build(
        "objectives",
        "dinov2",
        backbone,
        TaskInfo(),
        options={"prototypes": 64, "global_size": 32, "local_size": 16},
    )
    return objective, backbone


def test_lr_scaling_rules():
    plan = make_plan(
        OptimRecipe(base_lr=0.004, reference_batch=1024, lr_scaling="sqrt"),
        OptimConfig(),
        batch_size=256,
        steps_per_epoch=10,
        total_steps=1000,
    )
    assert plan.lr == pytest.approx(0.004 * math.sqrt(256 / 1024))
    mae = make_plan(
        OptimRecipe(base_lr=1.5e-4, reference_batch=256, lr_scaling="linear", warmup_epochs=40),
        OptimConfig(),
        batch_size=4096,
        steps_per_epoch=10,
        total_steps=8000,
    )
    assert mae.lr == pytest.approx(1.5e-4 * 16) and mae.warmup_steps == 400
    forced = make_plan(
        OptimRecipe(), OptimConfig(lr=0.123), batch_size=8, steps_per_epoch=1, total_steps=10
    )
    assert forced.lr == 0.123


def test_schedule_values_at_given_steps():
    plan = make_plan(
        OptimRecipe(base_lr=1.0, reference_batch=1, lr_scaling="none", min_lr=0.0, warmup_epochs=1,
                    weight_decay=0.04, weight_decay_end=0.4),
        OptimConfig(),
        batch_size=1,
        steps_per_epoch=10,
        total_steps=110,
    )  # fmt: skip
    # The default warm-up is DINOv2's np.linspace(0, 1, 10): 1/9 per step, peak at step 9.
    assert plan.lr_at(0) == 0.0 and plan.lr_at(3) == pytest.approx(3 / 9)
    assert plan.lr_at(9) == 1.0 and plan.lr_at(10) == 1.0
    assert plan.lr_at(60) == pytest.approx(0.5)  # half-way through the cosine
    assert plan.lr_at(110) == 0.0
    assert plan.weight_decay_at(0) == pytest.approx(0.04)
    assert plan.weight_decay_at(55) == pytest.approx(0.22)
    assert plan.weight_decay_at(110) == pytest.approx(0.4)


def test_dinov2_decay_on_tokens_not_norms_and_biases_and_layer_decay():
    objective, backbone = _dinov2()
    plan = make_plan(
        objective.optim_recipe, OptimConfig(), batch_size=64, steps_per_epoch=5, total_steps=50
    )
    groups = param_groups(objective, backbone, plan)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(objective.named_parameters())
    prefix = "student.backbone.encoder.vit."
    # DINOv2 (param_groups.py) decays position embedding and class token.
    assert by_param[id(named[prefix + "pos_embed"])]["wd_mult"] == 1.0
    assert by_param[id(named[prefix + "cls_token"])]["wd_mult"] == 1.0
    assert by_param[id(named[prefix + "blocks.0.norm1.weight"])]["wd_mult"] == 0.0
    assert by_param[id(named[prefix + "blocks.0.attn.qkv.bias"])]["wd_mult"] == 0.0
    assert by_param[id(named[prefix + "blocks.0.attn.qkv.weight"])]["wd_mult"] == 1.0
    # DINOv2: layer-wise decay 0.9 over 12 blocks, patch embedding at a further 0.2x.
    lr = lambda name: by_param[id(named[name])]["lr_mult"]  # noqa: E731
    assert lr(prefix + "blocks.11.mlp.fc1.weight") == pytest.approx(0.9)
    assert lr(prefix + "blocks.0.mlp.fc1.weight") == pytest.approx(0.9**12)
    assert lr(prefix + "patch_embed.proj.weight") == pytest.approx(0.9**13 * 0.2)
    assert lr(prefix + "pos_embed") == pytest.approx(0.9**13)
    assert lr("student.dino_head.layers.0.weight") == 1.0  # heads are not backbone layers
    # DINOv2 trains the prototype norm g; the prototype layer has lr 0 for one epoch.
    last = "student.dino_head.last_layer.parametrizations.weight."
    for p in ("original0", "original1"):
        assert by_param[id(named[last + p])]["frozen_until"] == 5
    assert by_param[id(named[prefix + "blocks.0.mlp.fc1.weight"])]["frozen_until"] == 0
    # The EMA teacher is never optimised.
    trainable = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in trainable for p in objective.teacher.parameters())


def test_apply_schedule_sets_each_group():
    objective, backbone = _dinov2()
    plan = make_plan(
        objective.optim_recipe, OptimConfig(), batch_size=64, steps_per_epoch=5, total_steps=50
    )
    optimizer = build_optimizer(objective, backbone, plan, torch.device("cpu"))
    lr, wd = apply_schedule(optimizer, plan, 30)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(lr * group["lr_mult"])
        assert group["weight_decay"] == pytest.approx(wd * group["wd_mult"])
