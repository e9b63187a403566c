"""DINOv2's terms against their equations, its schedules, teacher and freezing rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from biovfm_dinov2.loss import DINOClsTokenLoss, IBOTPatchLoss, KoLeoLoss
from biovfm_dinov2.loss.teacher_targets import TeacherTargets
from biovfm_dinov2.masking import block_mask, sample_ibot_masks
from biovfm_dinov2.objective import build_dinov2
from biovfm_dinov2.sinkhorn import sinkhorn_knopp
from biovfm_timm.vit import build_vit
from real_images import real_crops

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import Batch, StepInfo, TaskInfo

SMALL = {"prototypes": 64, "head_hidden_dim": 64, "head_bottleneck_dim": 32}


def _xent(p: list[float], logits: list[float], temp: float) -> float:
    z = [v / temp for v in logits]
    log_norm = math.log(sum(math.exp(v) for v in z))
    return -sum(pk * (zk - log_norm) for pk, zk in zip(p, z, strict=True))


def test_dino_loss_is_cross_entropy_over_different_crop_pairs() -> None:
    torch.manual_seed(0)
    b, k, temp = 3, 5, 0.1
    teacher = [F.softmax(torch.randn(b, k), dim=-1) for _ in range(2)]
    student = [torch.randn(b, k) for _ in range(4)]  # 2 global then 2 local crops
    loss = DINOClsTokenLoss(student_temp=temp)(student, teacher)
    terms = []
    for i, s in enumerate(student):
        for j, t in enumerate(teacher):
            if i == j:
                continue
            ce = [_xent(t[n].tolist(), s[n].tolist(), temp) for n in range(b)]
            terms.append(sum(ce) / b)
    assert len(terms) == 2 + 4
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_ibot_loss_weights_each_image_by_its_masked_patches() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    t_count = int(mask.sum())
    student = torch.randn(t_count, 6)
    teacher = F.softmax(torch.randn(t_count, 6), dim=-1)
    loss = IBOTPatchLoss(student_temp=0.1)(student, teacher, mask)
    ce = [_xent(teacher[i].tolist(), student[i].tolist(), 0.1) for i in range(t_count)]
    # Image 0 has two masked patches, image 1 none, image 2 one; M = 3 images.
    expected = ((ce[0] + ce[1]) / 2 + ce[2]) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_koleo_is_minus_mean_log_nearest_neighbour_distance() -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 4)
    xn = x / x.norm(dim=1, keepdim=True)
    direct = 0.0
    for i in range(7):
        nearest = min(float((xn[i] - xn[j]).norm()) for j in range(7) if j != i)
        direct -= math.log(nearest) / 7
    assert KoLeoLoss()(x).item() == pytest.approx(direct, rel=1e-4)
    y = torch.randn(7, 4)
    both = KoLeoLoss().per_crop_sum(torch.cat([x, y]), 2)
    assert both.item() == pytest.approx((KoLeoLoss()(x) + KoLeoLoss()(y)).item(), rel=1e-6)


def test_sinkhorn_marginals() -> None:
    torch.manual_seed(0)
    b, k = 32, 8
    logits = torch.randn(b, k)
    q = sinkhorn_knopp(logits, teacher_temp=1.0, n_iterations=3)
    # Final step normalises samples: each row is a distribution.
    torch.testing.assert_close(q.sum(dim=1), torch.ones(b))
    assert (q >= 0).all()
    # Prototypes get mass B/K each (1/K of the total), approximately after 3 steps ...
    torch.testing.assert_close(q.sum(dim=0) / b, torch.full((k,), 1 / k), atol=0.01, rtol=0.1)
    # ... and exactly once the alternating scaling has converged.
    q = sinkhorn_knopp(logits, teacher_temp=1.0, n_iterations=300)
    torch.testing.assert_close(q.sum(dim=0) / b, torch.full((k,), 1 / k), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(b))


def test_sinkhorn_balances_a_collapsed_teacher() -> None:
    # A teacher that prefers prototype 0 for every sample: softmax would collapse,
    # Sinkhorn spreads the mass over prototypes.
    logits = torch.zeros(16, 4)
    logits[:, 0] = 5.0
    logits += 0.01 * torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    q = sinkhorn_knopp(logits, teacher_temp=0.1, n_iterations=3)
    assert q.sum(dim=0).max() < 16 * 0.5
    uniform = sinkhorn_knopp(torch.zeros(6, 3), teacher_temp=0.07)
    torch.testing.assert_close(uniform, torch.full((6, 3), 1 / 3))


def test_sinkhorn_survives_underflowing_prototypes() -> None:
    # The heads' logits are cosines in [-1, 1] (normalised bottleneck, unit prototypes):
    # at tau = 0.04 many prototypes are far from every sample, yet rows stay distributions.
    g = torch.Generator().manual_seed(0)
    cosines = F.normalize(torch.randn(16, 32, generator=g), dim=1) @ F.normalize(
        torch.randn(32, 4096, generator=g), dim=0
    )
    q = sinkhorn_knopp(cosines, teacher_temp=0.04)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(16))
    # Degenerate logits (far outside the cosine range) underflow whole rows: no NaN.
    assert torch.isfinite(sinkhorn_knopp(torch.randn(8, 512, generator=g) * 5, 0.04)).all()


def test_running_mean_centering() -> None:
    targets = TeacherTargets(4, centering="centering", center_momentum=0.9)
    z1 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [3.0, 0.0, 2.0, 0.0]])
    p1 = targets(z1, teacher_temp=0.5)
    torch.testing.assert_close(p1, F.softmax(z1 / 0.5, dim=-1))  # center starts at 0
    c = 0.1 * z1.mean(dim=0)
    torch.testing.assert_close(targets.center.value.flatten(), c)
    z2 = torch.randn(3, 4)
    torch.testing.assert_close(targets(z2, 0.5), F.softmax((z2 - c) / 0.5, dim=-1))
    torch.testing.assert_close(targets.center.value.flatten(), 0.9 * c + 0.1 * z2.mean(dim=0))


def test_block_mask_has_exact_count_and_is_blocky() -> None:
    import random

    rng = random.Random(0)
    for n in [0, 1, 3, 20, 50, 98, 196]:
        assert int(block_mask(14, 14, n, rng).sum()) == n
    # Blocks: masked patches have far more masked 4-neighbours than a random mask.
    m = block_mask(14, 14, 78, rng).float()
    adjacent = (m[1:] * m[:-1]).sum() + (m[:, 1:] * m[:, :-1]).sum()
    random_expectation = (13 * 14 * 2) * (78 / 196) ** 2
    assert adjacent > 1.5 * random_expectation


def test_ibot_masks_follow_dinov2_sampling() -> None:
    torch.manual_seed(0)
    masks = sample_ibot_masks(10, (8, 8), ratio_min_max=(0.1, 0.5), probability=0.5)
    counts = sorted(int(c) for c in masks.sum(dim=1))
    assert counts[:5] == [0] * 5  # half the images unmasked
    # Ratios stratified over [0.1, 0.5]: the i-th masked image falls in the i-th fifth.
    for i, c in enumerate(counts[5:]):
        lo, hi = 0.1 + 0.08 * i, 0.1 + 0.08 * (i + 1)
        assert int(64 * lo) <= c <= int(64 * hi)


@pytest.fixture
def objective():
    torch.manual_seed(0)
    backbone = build_vit("tiny", image_size=32)
    return build_dinov2(
        backbone,
        TaskInfo(),
        **SMALL,
        local_crops=2,
        global_size=32,
        local_size=16,
        warmup_teacher_temp_epochs=2,
    )


def _batch(b: int = 4) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        global_views=[torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)],
        local_views=[torch.randn(b, 3, 16, 16, generator=g) for _ in range(2)],
    )


def test_views_and_eval_backbone(objective) -> None:
    v = objective.views
    assert (v.global_crops, v.global_size, v.local_crops, v.local_size) == (2, 32, 2, 16)
    assert v.color_augment and not v.needs_labels
    assert objective.eval_backbone() is objective.teacher["backbone"]
    assert objective.eval_backbone() is not objective.student["backbone"]


def test_defaults_follow_dinov2_vit_l_recipe() -> None:
    import inspect

    defaults = {
        k: p.default
        for k, p in inspect.signature(build_dinov2).parameters.items()
        if k not in ("backbone", "task")
    }
    assert defaults["prototypes"] == 65536 and defaults["head_bottleneck_dim"] == 256
    assert defaults["koleo_loss_weight"] == 0.1 and defaults["mask_ratio_min_max"] == (0.1, 0.5)
    assert (defaults["momentum_teacher"], defaults["final_momentum_teacher"]) == (0.992, 1.0)
    assert (defaults["warmup_teacher_temp"], defaults["teacher_temp"]) == (0.04, 0.07)
    assert defaults["local_crops"] == 8 and defaults["sinkhorn_iterations"] == 3


def test_teacher_gets_no_gradient_and_the_prototype_norm_learns(objective) -> None:
    out = objective.training_step(_batch(), StepInfo(step=0, total_steps=10, steps_per_epoch=5))
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in objective.teacher.parameters())
    last = objective.student["dino_head"].last_layer
    g, v = last.parametrizations.weight.original0, last.parametrizations.weight.original1
    # DINOv2's DINOHead: weight_g starts at 1 and is trained (dino_head.py).
    assert torch.equal(g, torch.ones_like(g)) and g.requires_grad and g.grad is not None
    assert v.grad is not None
    torch.testing.assert_close(last.weight.norm(dim=1), torch.ones(g.shape[0]))
    assert set(objective.lr_freeze()) == {
        "student.dino_head.last_layer.parametrizations.weight.original0",
        "student.dino_head.last_layer.parametrizations.weight.original1",
    }


def test_norm_last_layer_keeps_the_prototype_norm_at_one() -> None:
    obj = build_dinov2(build_vit("tiny", image_size=32), TaskInfo(), **SMALL, norm_last_layer=True)
    g = obj.student["dino_head"].prototype_norm
    assert torch.equal(g, torch.ones_like(g)) and not g.requires_grad


def test_last_layer_has_lr_zero_in_epoch_zero_while_adamw_moments_update(objective) -> None:
    from biovfm_core.config import OptimConfig
    from biovfm_core.train.optim import apply_schedule, build_optimizer, make_plan

    plan = make_plan(
        objective.optim_recipe, OptimConfig(), batch_size=64, steps_per_epoch=5, total_steps=50
    )
    backbone = objective.student["backbone"]
    opt = build_optimizer(objective, backbone, plan, torch.device("cpu"))
    last = objective.student["dino_head"].last_layer.parametrizations.weight
    first = objective.student["dino_head"].layers[0].weight
    for step in (4, 5):
        before_v, before_first = last.original1.detach().clone(), first.detach().clone()
        lr, _ = apply_schedule(opt, plan, step)
        group = next(g for g in opt.param_groups if any(p is last.original1 for p in g["params"]))
        opt.zero_grad()
        objective.training_step(_batch(), StepInfo(step, 50, 5))["loss"].backward()
        opt.step()
        moment = opt.state[last.original1]["exp_avg"]
        assert moment.abs().sum() > 0  # the moments follow the gradients from step 0 on
        assert not torch.equal(first, before_first)  # the rest of the head learns
        if step < 5:  # train.py: last_layer_lr_schedule[: freeze_last_layer_epochs * EPOCH] = 0
            assert group["lr"] == 0.0
            assert torch.equal(last.original1, before_v)
        else:
            assert group["lr"] == pytest.approx(lr * group["lr_mult"]) and lr > 0
            assert not torch.equal(last.original1, before_v)


def test_ema_update_and_schedules(objective) -> None:
    student = objective.student["backbone"].vit.patch_embed.proj.weight
    teacher = objective.teacher["backbone"].vit.patch_embed.proj.weight
    with torch.no_grad():
        student.add_(1.0)
    before_t, before_s = teacher.clone(), student.clone()
    logged = objective.after_optimizer_step(StepInfo(step=50, total_steps=100, steps_per_epoch=10))
    m = 0.996  # half-way along the cosine from 0.992 to 1
    assert logged["teacher_momentum"] == pytest.approx(m)
    torch.testing.assert_close(teacher, m * before_t + (1 - m) * before_s)
    # Teacher temperature: np.linspace(0.04, 0.07, 20) over 2 epochs of 10 steps (it
    # reaches 0.07 at step 19, as DINOv2's CosineScheduler warm-up does), then flat.
    temp = lambda step: objective.current_teacher_temp(StepInfo(step, 100, 10))  # noqa: E731
    assert temp(0) == pytest.approx(0.04)
    assert temp(10) == pytest.approx(0.04 + 0.03 * 10 / 19)
    assert temp(18) == pytest.approx(0.04 + 0.03 * 18 / 19)
    assert temp(19) == pytest.approx(0.07) and temp(40) == pytest.approx(0.07)
    assert objective.current_momentum(StepInfo(0, 100, 10)) == pytest.approx(0.992)
    assert objective.current_momentum(StepInfo(100, 100, 10)) == pytest.approx(1.0)


def test_state_dict_holds_teacher_and_centers(objective) -> None:
    keys = objective.state_dict().keys()
    assert any(k.startswith("teacher.backbone.") for k in keys)
    assert "dino_targets.center.center" in keys and "ibot_targets.center.center" in keys


def test_separate_ibot_head_and_centering_mode() -> None:
    torch.manual_seed(0)
    obj = build_dinov2(
        build_vit("tiny", image_size=32),
        TaskInfo(),
        **SMALL,
        ibot_separate_head=True,
        ibot_head_n_prototypes=48,
        ibot_head_hidden_dim=40,
        ibot_head_bottleneck_dim=24,
        ibot_head_nlayers=2,
        centering="centering",
        local_crops=0,
        global_size=32,
        mask_sample_probability=1.0,
    )
    assert "ibot_head" in obj.student and "ibot_head" in obj.teacher
    ibot = obj.student["ibot_head"]
    assert [m.weight.shape for m in ibot.layers if hasattr(m, "weight")] == [(40, 192), (24, 40)]
    assert (
        ibot.last_layer.weight.shape == (48, 24) and obj.ibot_targets.center.value.shape[-1] == 48
    )
    batch = _batch()
    out = obj.training_step(Batch(global_views=batch.global_views), StepInfo(0, 10, 5))
    assert out["ibot_loss"] > 0
    assert obj.dino_targets.center.value.abs().sum() > 0
    out["loss"].backward()
    assert obj.student["ibot_head"].layers[0].weight.grad is not None


def test_cnn_without_ibot_only(objective) -> None:
    from biovfm_timm.timm_any import build_timm

    with pytest.raises(ConfigError, match="ibot_loss_weight"):
        build_dinov2(build_timm("resnet18"), TaskInfo(), **SMALL)
    with pytest.raises(ConfigError, match="centering"):
        build_dinov2(build_vit("tiny"), TaskInfo(), **SMALL, centering="median")


def test_a_few_adamw_steps_lower_the_dinov2_loss() -> None:
    torch.manual_seed(0)
    obj = build_dinov2(
        build_vit("tiny", image_size=32),
        TaskInfo(),
        **SMALL,
        local_crops=2,
        global_size=32,
        local_size=16,
        freeze_last_layer_epochs=0,
        warmup_teacher_temp_epochs=0,
    )
    batch = Batch(
        global_views=[real_crops(8, 32, seed) for seed in (1, 2)],
        local_views=[real_crops(8, 16, seed) for seed in (3, 4)],
    )
    opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=5e-4)

    def loss_now() -> float:
        torch.manual_seed(123)  # same iBOT masks for both measurements
        with torch.no_grad():
            return float(obj.training_step(batch, StepInfo(0, 100, 100))["loss"])

    before = loss_now()
    for step in range(8):
        info = StepInfo(step, 100, 100)
        opt.zero_grad()
        obj.training_step(batch, info)["loss"].backward()
        obj.before_optimizer_step(info)
        opt.step()
        obj.after_optimizer_step(info)
    after = loss_now()
    assert after < before, (before, after)
