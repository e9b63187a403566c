"""Optimiser details against the official code, each reference re-written here in a few
independent lines (numpy or plain Python), never by calling biovfm's implementation.

Sources: facebookresearch/dinov2 ``dinov2/utils/utils.py`` (CosineScheduler),
``dinov2/utils/param_groups.py`` (get_params_groups_with_decay),
``dinov2/train/train.py`` (build_schedulers, do_train's clipping),
``dinov2/train/ssl_meta_arch.py`` (the student's modules); facebookresearch/mae
``main_pretrain.py`` with timm 0.3.2 ``optim_factory.add_weight_decay`` and
``util/lr_sched.py`` (adjust_learning_rate).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from biovfm_core.config import OptimConfig
from biovfm_core.protocols import OptimRecipe, TaskInfo
from biovfm_core.registry import get_registry
from biovfm_core.schedules import cosine_schedule, linspace_warmup
from biovfm_core.train.optim import make_plan, param_groups


def _dinov2_cosine_scheduler(base, final, total, warmup, start_warmup=0.0):
    """dinov2/utils/utils.py CosineScheduler.schedule, re-written (freeze_iters=0)."""
    warm = np.linspace(start_warmup, base, warmup)
    iters = np.arange(total - warmup)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warm, cos))


@pytest.mark.parametrize("warmup", [1, 2, 10, 37])
def test_lr_warmup_is_dinov2_linspace_and_tail_its_cosine(warmup: int) -> None:
    """dinov2/utils/utils.py CosineScheduler: warm-up ``np.linspace(0, lr, warmup_iters)``
    (peak at warmup_iters - 1), then ``final + (base-final)/2 (1 + cos(pi i / n))``."""
    total, steps_per_epoch = 200, warmup  # one warm-up epoch of `warmup` steps
    plan = make_plan(
        OptimRecipe(base_lr=2e-3, reference_batch=1, lr_scaling="none", min_lr=1e-6,
                    warmup_epochs=1.0, warmup="linspace"),
        OptimConfig(), batch_size=1, steps_per_epoch=steps_per_epoch, total_steps=total,
    )  # fmt: skip
    reference = _dinov2_cosine_scheduler(2e-3, 1e-6, total, warmup)
    ours = np.array([plan.lr_at(s) for s in range(total)])
    # The first warm-up + 2 values, then the whole cosine tail.
    np.testing.assert_allclose(ours[: warmup + 2], reference[: warmup + 2], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-15)
    assert plan.lr_at(total) == 1e-6  # CosineScheduler.__getitem__: final_value past the end


def test_teacher_temperature_warmup_is_a_cosine_scheduler_with_equal_ends() -> None:
    """dinov2/train/train.py build_schedulers: teacher_temp = CosineScheduler(0.07, 0.07,
    total=warmup=30 epochs, start_warmup_value=0.04), i.e. a linspace then 0.07."""
    reference = _dinov2_cosine_scheduler(0.07, 0.07, 30, 30, start_warmup=0.04)
    ours = [linspace_warmup(s, 30, 0.04, 0.07) for s in range(30)]
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-15)
    assert linspace_warmup(30, 30, 0.04, 0.07) == 0.07


def test_mae_warmup_stays_linear_as_its_lr_sched() -> None:
    """mae util/lr_sched.py adjust_learning_rate: ``lr * epoch / warmup_epochs`` with the
    fractional epoch ``it / len(loader) + epoch``, then the half-cosine to min_lr."""
    lr, min_lr, warm_ep, epochs, per_epoch = 1.5e-4 * 16, 0.0, 2, 10, 5

    def official(it: int) -> float:
        epoch = it / per_epoch
        if epoch < warm_ep:
            return lr * epoch / warm_ep
        t = (epoch - warm_ep) / (epochs - warm_ep)
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    from biovfm_mae.objective import RECIPE

    plan = make_plan(
        RECIPE, OptimConfig(warmup_epochs=warm_ep), batch_size=4096,
        steps_per_epoch=per_epoch, total_steps=epochs * per_epoch,
    )  # fmt: skip
    for it in range(epochs * per_epoch):
        assert plan.lr_at(it) == pytest.approx(official(it), rel=1e-12, abs=1e-18)


def test_cosine_schedule_rejects_an_unknown_warmup() -> None:
    with pytest.raises(ValueError, match="warmup must be one of linspace, linear"):
        cosine_schedule(0, 10, 1.0, 0.0, 2, warmup="step")


def _groups_by_name(objective, backbone, recipe):
    plan = make_plan(recipe, OptimConfig(), batch_size=64, steps_per_epoch=5, total_steps=50)
    groups = param_groups(objective, backbone, plan)
    by_param = {id(p): g["wd_mult"] for g in groups for p in g["params"]}
    return {n: by_param[id(p)] for n, p in objective.named_parameters() if id(p) in by_param}


def test_dinov2_weight_decay_spares_only_biases_norms_and_gammas() -> None:
    """dinov2/utils/param_groups.py get_params_groups_with_decay: wd_multiplier 0.0 iff
    ``name.endswith(".bias") or "norm" in name or "gamma" in name``; pos_embed,
    cls_token, register_tokens, mask_token and the prototypes' g decay."""
    registry = get_registry()
    backbone = registry.build(
        "backbones", "vit_tiny",
        options={"image_size": 32, "num_register_tokens": 2, "layer_scale_init": 1e-5},
    )  # fmt: skip
    objective = registry.build(
        "objectives", "dinov2", backbone, TaskInfo(),
        options={"prototypes": 64, "global_size": 32, "local_size": 16,
                 "ibot_separate_head": True, "ibot_head_n_prototypes": 32},
    )  # fmt: skip
    wd = _groups_by_name(objective, backbone, objective.optim_recipe)
    for name, mult in wd.items():
        leaf = name.split(".", 2)[-1]  # the name inside DINOv2's student module
        official = 0.0 if (leaf.endswith(".bias") or "norm" in leaf or "gamma" in leaf) else 1.0
        assert mult == official, name
    vit = "student.backbone.encoder.vit."
    for token in ("pos_embed", "cls_token", "reg_token", "patch_embed.proj.weight"):
        assert wd[vit + token] == 1.0, token
    assert wd[vit + "blocks.0.ls1.gamma"] == 0.0
    assert wd["student.dino_head.last_layer.parametrizations.weight.original0"] == 1.0


def test_mae_weight_decay_is_timm_032_add_weight_decay() -> None:
    """timm 0.3.2 optim_factory.add_weight_decay as MAE main_pretrain.py calls it (no
    skip_list): no decay iff ``len(param.shape) == 1 or name.endswith(".bias")``; the
    (1, 1, D) cls_token and decoder mask token decay."""
    registry = get_registry()
    backbone = registry.build("backbones", "vit_tiny", options={"image_size": 32})
    objective = registry.build(
        "objectives", "mae", backbone, TaskInfo(), options={"image_size": 32}
    )
    wd = _groups_by_name(objective, backbone, objective.optim_recipe)
    params = dict(objective.named_parameters())
    for name, mult in wd.items():
        official = 0.0 if (len(params[name].shape) == 1 or name.endswith(".bias")) else 1.0
        assert mult == official, name
    assert wd["encoder.encoder.vit.cls_token"] == 1.0
    assert wd["decoder.mask_token"] == 1.0


def test_default_rule_still_spares_tokens_for_objectives_without_one() -> None:
    """Objectives that name no rule keep the previous default (timm no_weight_decay())."""
    registry = get_registry()
    backbone = registry.build("backbones", "vit_tiny", options={"image_size": 32})
    wrapper = torch.nn.Module()
    wrapper.backbone = backbone
    wd = _groups_by_name(wrapper, backbone, OptimRecipe())
    assert wd["backbone.encoder.vit.pos_embed"] == 0.0
    assert wd["backbone.encoder.vit.cls_token"] == 0.0
    assert wd["backbone.encoder.vit.blocks.0.attn.qkv.weight"] == 1.0


def test_epoch_length_sets_the_scheduling_epoch_as_dinov2s_official_epoch_length() -> None:
    """dinov2/train/train.py build_schedulers: every schedule is counted in
    ``OFFICIAL_EPOCH_LENGTH`` (1,250, ssl_default_config train.OFFICIAL_EPOCH_LENGTH)
    iterations per epoch: total ``epochs * 1250``, warm-up ``warmup_epochs * 1250``."""
    from biovfm_dinov2.objective import RECIPE

    from biovfm_core.config import RunConfig
    from biovfm_core.train.batching import step_shape

    config = RunConfig()
    config.set("train.batch_size", 64)
    config.set("train.epochs", 3)
    config.set("train.epoch_length", 1250)
    micro, per_epoch, total = step_shape(config, world_size=2, num_images=640)
    assert (micro, per_epoch, total) == (32, 1250, 3 * 1250)
    config.set("train.epochs", 100)
    _, per_epoch, total = step_shape(config, world_size=2, num_images=640)
    plan = make_plan(RECIPE, OptimConfig(), batch_size=64, steps_per_epoch=per_epoch,
                     total_steps=total)  # fmt: skip
    assert (plan.warmup_steps, total) == (10 * 1250, 100 * 1250)
    # Default: one pass over the data (640 images / 64 per step).
    default = RunConfig()
    default.set("train.batch_size", 64)
    default.set("train.epochs", 3)
    assert step_shape(default, world_size=2, num_images=640)[1:] == (10, 30)


def test_epoch_length_below_one_is_refused() -> None:
    from biovfm_core.config import RunConfig
    from biovfm_core.errors import ConfigError

    config = RunConfig()
    config.set("train.epoch_length", 0)
    with pytest.raises(ConfigError, match=r"train\.epoch_length must be at least 1"):
        config.check_ranges()


def test_dry_run_prints_the_global_batch_and_the_per_gpu_batch() -> None:
    """train.batch_size is global: DINOv2's ssl_default_config batch_size_per_gpu 64 on
    32 GPUs is --batch-size 2048; each of the 32 processes gets 64."""
    from click.testing import CliRunner

    from biovfm_core.cli.main import cli

    result = CliRunner().invoke(
        cli, ["train", "--dry-run", "--batch-size", "2048"], env={"WORLD_SIZE": "32"}
    )
    assert result.exit_code == 0, result.output
    assert "# batch 2048 in total (train.batch_size is global) = 64 per GPU x 32" in result.output


def _reference_clip(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """torch.nn.Module.clip_grad_norm_ as FSDP applies it per module (dinov2/train/train.py
    do_train): the group's 2-norm, scaled by ``max_norm / (norm + 1e-6)`` when above.
    In float64; torch sums float32 squares, hence the 2e-4 relative tolerance below."""
    total = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    coef = min(1.0, max_norm / (total + 1e-6))
    return [g * coef for g in grads]


def _dinov2_with_grads():
    registry = get_registry()
    backbone = registry.build("backbones", "vit_tiny", options={"image_size": 32})
    objective = registry.build(
        "objectives", "dinov2", backbone, TaskInfo(),
        options={"prototypes": 64, "global_size": 32, "local_size": 16,
                 "ibot_separate_head": True, "ibot_head_n_prototypes": 32},
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    # Heads with much larger gradients than the backbone, as early in DINOv2 training.
    scale = {"backbone": 1e-4, "dino_head": 5.0, "ibot_head": 1.0}
    for name, module in objective.student.items():
        for p in module.parameters():
            p.grad = torch.randn(p.shape, generator=gen) * scale[name]
    return objective


def test_dinov2_clips_each_student_module_on_its_own() -> None:
    """dinov2/train/train.py do_train: ``for v in model.student.values():
    v.clip_grad_norm_(cfg.optim.clip_grad)`` (student = backbone, dino_head, ibot_head,
    dinov2/train/ssl_meta_arch.py)."""
    from biovfm_core.train.numerics import clip_gradients

    objective = _dinov2_with_grads()
    before = {n: [p.grad.clone() for p in m.parameters()] for n, m in objective.student.items()}
    assert set(before) == {"backbone", "dino_head", "ibot_head"}
    norm = clip_gradients(objective, 3.0, torch.device("cpu"), "per_module")
    everything = [g for grads in before.values() for g in grads]
    assert float(norm) == pytest.approx(
        math.sqrt(sum(float((g.double() ** 2).sum()) for g in everything)), rel=2e-4
    )
    for name, module in objective.student.items():
        expected = _reference_clip(before[name], 3.0)
        for p, e in zip(module.parameters(), expected, strict=True):
            torch.testing.assert_close(p.grad, e.float(), rtol=2e-4, atol=1e-9)
    # The backbone's small gradient is untouched: a global norm would have shrunk it.
    for p, g in zip(objective.student["backbone"].parameters(), before["backbone"], strict=True):
        assert torch.equal(p.grad, g)


def test_global_clip_mode_and_objectives_without_clip_groups_use_one_norm() -> None:
    from biovfm_core.train.numerics import clip_gradients

    objective = _dinov2_with_grads()
    params = [p for p in objective.parameters() if p.grad is not None]
    before = [p.grad.clone() for p in params]
    clip_gradients(objective, 3.0, torch.device("cpu"), "global")
    for p, e in zip(params, _reference_clip(before, 3.0), strict=True):
        torch.testing.assert_close(p.grad, e.float(), rtol=2e-4, atol=1e-9)

    third_party = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    for p in third_party.parameters():
        p.grad = torch.full(p.shape, 10.0)
    before = [p.grad.clone() for p in third_party.parameters()]
    clip_gradients(third_party, 1.0, torch.device("cpu"), "per_module")
    for p, e in zip(third_party.parameters(), _reference_clip(before, 1.0), strict=True):
        torch.testing.assert_close(p.grad, e.float(), rtol=2e-4, atol=1e-9)
