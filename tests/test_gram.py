"""DINOv3's Gram anchoring in the dinov2 objective: the loss against a hand computation
and against the official formula, the Gram teacher's schedule, and its options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from biovfm_dinov2.gram_anchor import GramTeacher
from biovfm_dinov2.loss.gram import gram_loss
from biovfm_dinov2.objective import build_dinov2
from biovfm_timm.vit import build_vit
from click.testing import CliRunner
from real_images import real_crops

from biovfm_core.config import RunConfig
from biovfm_core.errors import ConfigError
from biovfm_core.protocols import Batch, StepInfo, TaskInfo

SMALL = {"prototypes": 64, "head_hidden_dim": 64, "head_bottleneck_dim": 32, "local_crops": 0}


def official_gram_loss(output_feats, target_feats, img_level, apply_norm, remove_neg):
    """DINOv3's GramLoss.forward (dinov3/loss/gram_loss.py lines 34-84 at 6876159a),
    written out again from its text: normalise, flatten for the batch level, X X^T,
    zero the negatives of both, nn.MSELoss (mean)."""
    output_feats, target_feats = output_feats.float(), target_feats.float()
    if apply_norm:
        target_feats = F.normalize(target_feats, dim=-1)
    if not img_level and target_feats.dim() == 3:
        target_feats = target_feats.flatten(0, 1)
    target_sim = torch.matmul(target_feats, target_feats.transpose(-1, -2))
    if apply_norm:
        output_feats = F.normalize(output_feats, dim=-1)
    if not img_level and output_feats.dim() == 3:
        output_feats = output_feats.flatten(0, 1)
    student_sim = torch.matmul(output_feats, output_feats.transpose(-1, -2))
    if remove_neg:
        target_sim[target_sim < 0] = 0.0
        student_sim[student_sim < 0] = 0.0
    return torch.nn.MSELoss()(student_sim, target_sim)


def test_gram_loss_by_hand() -> None:
    # One image, two patches. Student: orthogonal patches, Gram = I. Teacher: patches
    # 45 degrees apart, Gram = [[1, c], [c, 1]] with c = 1/sqrt(2). The two
    # off-diagonal entries differ by c: (c^2 + c^2) / 4 entries = 0.25.
    student = torch.tensor([[[3.0, 0.0], [0.0, 2.0]]])  # normalisation removes the scale
    teacher = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    assert gram_loss(student, teacher).item() == pytest.approx(0.25)
    # Without normalisation: G_S = [[9, 0], [0, 4]], G_T = [[1, 1], [1, 2]];
    # (8^2 + 1 + 1 + 2^2) / 4 = 17.5.
    assert gram_loss(student, teacher, normalized=False).item() == pytest.approx(17.5)
    # Opposite patches: the teacher's -1 becomes 0 with remove_neg; the student's 0
    # stays, so only the diagonal (equal) and nothing else remains: 0.
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    assert gram_loss(student, opposite).item() == pytest.approx(0.5)  # (1 + 1) / 4
    assert gram_loss(student, opposite, remove_neg=True).item() == pytest.approx(0.0)
    # Batch level: two images of one patch each, patches orthogonal for the student
    # and equal for the teacher: 2x2 Gram, off-diagonals 0 vs 1: 2/4.
    s = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    t = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    assert gram_loss(s, t).item() == pytest.approx(0.0)  # per image: 1x1 Gram = 1 both
    assert gram_loss(s, t, img_level=False).item() == pytest.approx(0.5)


@pytest.mark.parametrize("img_level", [True, False])
@pytest.mark.parametrize("normalized", [True, False])
@pytest.mark.parametrize("remove_neg", [True, False])
def test_gram_loss_equals_the_official_one(img_level, normalized, remove_neg) -> None:
    g = torch.Generator().manual_seed(1)
    student = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    teacher = torch.randn(3, 5, 8, generator=g)
    ours = gram_loss(
        student, teacher, normalized=normalized, img_level=img_level, remove_neg=remove_neg
    )
    (grad_ours,) = torch.autograd.grad(ours, student)
    official = official_gram_loss(student, teacher, img_level, normalized, remove_neg)
    (grad_official,) = torch.autograd.grad(official, student)
    assert ours.item() == pytest.approx(official.item(), rel=1e-6)
    torch.testing.assert_close(grad_ours, grad_official)


def test_gram_loss_is_zero_for_a_rotated_copy_and_gives_no_teacher_gradient() -> None:
    # Only similarities are anchored: an orthogonal rotation of the features is free.
    g = torch.Generator().manual_seed(2)
    teacher = torch.randn(2, 6, 4, generator=g, requires_grad=True)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))
    student = (teacher @ rotation).detach().requires_grad_(True)
    loss = gram_loss(student, teacher)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    loss.backward()
    assert teacher.grad is None


def _dinov3_refreshes(steps: int, f: int, first: int, max_updates: int | None) -> list[int]:
    """The iterations after which DINOv3's loop refreshes (train.py lines 441-544)."""
    done, count = [], 0
    for it in range(steps):
        if (it + 1) >= first and (it + 1) % f == 0 and (max_updates is None or count < max_updates):
            done.append(it)
            count += 1
    return done


@pytest.mark.parametrize(("f", "first", "max_updates"), [(3, 0, None), (2, 5, 2), (4, 4, 1)])
def test_refresh_schedule_is_dinov3s_and_needs_no_counter(f, first, max_updates) -> None:
    backbone = torch.nn.Linear(2, 2)  # the schedule only copies state
    gram = GramTeacher(
        backbone,
        source="snapshot",
        load_step=0,
        update_frequency=f,
        first_update=first,
        max_updates=max_updates,
        crop_size=None,
    )
    ours = [step for step in range(20) if gram.after_step(step, backbone)]
    assert ours == _dinov3_refreshes(20, f, first, max_updates)
    # A resumed run recounts from the step, as DINOv3 does at start-up (train.py 451).
    for start in range(20):
        assert gram.refreshes_before(start + 1) == len([s for s in ours if s < start]), start


def _objective(**gram) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = build_vit("tiny", image_size=32)
    return build_dinov2(backbone, TaskInfo(), **SMALL, global_size=32, local_size=16, **gram)


def _batch() -> Batch:
    return Batch(global_views=[real_crops(4, 32, seed=s) for s in (0, 1)], local_views=[])


def test_snapshot_is_taken_at_its_step_and_refreshed_on_schedule() -> None:
    obj = _objective(gram_loss_weight=1.0, gram_load_step=1, gram_update_frequency=2)
    obj.train()
    info = StepInfo(0, 10, 10)
    out = obj.training_step(_batch(), info)
    assert out["gram_loss"].item() == 0.0  # no snapshot before step 1
    with torch.no_grad():
        for p in obj.teacher.parameters():
            p.add_(0.01)
    out = obj.training_step(_batch(), StepInfo(1, 10, 10))
    assert out["gram_loss"].item() > 0
    snap = obj.gram_teacher.backbone.state_dict()
    for key, value in obj.teacher["backbone"].state_dict().items():
        assert torch.equal(snap[key], value), key
    with torch.no_grad():
        for p in obj.teacher.parameters():
            p.add_(0.01)
    assert obj.after_optimizer_step(StepInfo(0, 10, 10))["gram_refreshed"] == 0.0
    logged = obj.after_optimizer_step(StepInfo(1, 10, 10))  # after step 2: 2 % 2 == 0
    assert logged["gram_refreshed"] == 1.0
    snap = obj.gram_teacher.backbone.state_dict()
    for key, value in obj.teacher["backbone"].state_dict().items():
        assert torch.equal(snap[key], value), key
    # The snapshot and whether it exists are checkpointed.
    state = obj.state_dict()
    assert bool(state["gram_teacher._extra_state"]) and any(
        k.startswith("gram_teacher.backbone.") for k in state
    )


def test_gram_off_leaves_the_state_exactly_dinov2s() -> None:
    off = _objective()
    assert off.gram_teacher is None
    assert not any(k.startswith("gram_teacher") for k in off.state_dict())
    assert "gram_loss" not in off.training_step(_batch(), StepInfo(0, 10, 10))


def test_the_term_is_the_loss_of_student_and_teacher_patch_features() -> None:
    """With gram_teacher=ema the target is the EMA teacher's patch features of the
    unmasked crops, the student's those of its (masked) forward."""
    obj = _objective(gram_loss_weight=2.0, gram_teacher="ema", ibot_loss_weight=0.0)
    obj.eval()  # no drop-path: the student's forward is reproducible below
    batch = _batch()
    out = obj.training_step(batch, StepInfo(0, 10, 10))
    images = torch.cat(batch.global_views)
    with torch.no_grad():
        s = obj.student["backbone"].forward_tokens(images).patches
        t = obj.teacher["backbone"].forward_tokens(images).patches
    assert out["gram_loss"].item() == pytest.approx(gram_loss(s, t).item(), rel=1e-5)
    # student == teacher at the start: the same features, Gram loss 0
    assert out["gram_loss"].item() == pytest.approx(0.0, abs=1e-8)


def test_the_teacher_sees_larger_crops_and_its_map_is_resized_to_the_students() -> None:
    obj = _objective(gram_loss_weight=1.0, gram_crop_size=64)
    images = real_crops(2, 32, seed=3)
    obj.gram_teacher.before_step(0, obj.teacher["backbone"])
    feats = obj.gram_teacher.patch_features(images, (2, 2))
    assert feats.shape == (2, 4, obj.student["backbone"].embed_dim)
    # By hand: the teacher's 4x4 map at 64 px, resized bicubically to 2x2.
    up = F.interpolate(images, size=(64, 64), mode="bicubic", align_corners=False)
    with torch.no_grad():
        full = obj.teacher["backbone"].forward_tokens(up).patches
    fmap = full.transpose(1, 2).unflatten(-1, (4, 4))
    want = F.interpolate(fmap, size=(2, 2), mode="bicubic", align_corners=False)
    torch.testing.assert_close(feats, want.flatten(2).transpose(1, 2))
    assert math.isfinite(obj.training_step(_batch(), StepInfo(0, 10, 10))["gram_loss"].item())


def test_a_checkpoint_gram_teacher_is_loaded_on_the_first_step(tmp_path) -> None:
    from safetensors.torch import save_file

    other = build_vit("tiny", image_size=32)
    torch.nn.init.normal_(other.vit.cls_token)
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in other.vit.state_dict().items()}, str(path))
    obj = _objective(gram_loss_weight=1.0, gram_teacher=str(path))
    assert not obj.gram_teacher.ready
    obj.training_step(_batch(), StepInfo(0, 10, 10))
    assert torch.equal(obj.gram_teacher.backbone.vit.cls_token, other.vit.cls_token)


BAD_OPTIONS = [
    ({"gram_teacher": "/no/such/teacher"}, "gram_teacher '/no/such/teacher': no such file"),
    ({"gram_teacher": "ema", "gram_crop_size": 64}, "gram_teacher=ema uses the EMA"),
    ({"gram_crop_size": 30}, "gram_crop_size 30 must be a positive multiple"),
    ({"gram_tokens": "masked"}, "needs gram_img_level=false"),
    ({"gram_tokens": "some"}, "gram_tokens must be all, masked or unmasked"),
]


def test_bad_gram_options_are_one_line_errors() -> None:
    backbone = build_vit("tiny", image_size=32)  # checked before any head is built
    for options, message in BAD_OPTIONS:
        with pytest.raises(ConfigError, match=message):
            build_dinov2(backbone, TaskInfo(), **SMALL, gram_loss_weight=1.0, **options)


def test_stages_list_is_not_built_and_says_so() -> None:
    with pytest.raises(ConfigError, match="stages: a list of stages is not built"):
        RunConfig.from_dict({"stages": [{"recipe": "dinov2-highres"}]})


def test_plugins_options_lists_the_gram_options_with_their_sources() -> None:
    from biovfm_core.cli.main import cli

    result = CliRunner().invoke(cli, ["plugins", "--options", "dinov2"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for option, source in (
        ("gram_loss_weight", "gram.loss_weight 1.0"),
        ("gram_teacher", "gram.ema_teacher"),
        ("gram_update_frequency", "update_frequency 50000"),
        ("gram_crop_size", "crops.gram_teacher_crops_size null"),
        ("gram_img_level", "dinov3_vit7b16_gram_anchor.yaml line 58"),
    ):
        assert f"--opt objective.{option}=" in text
        block = text.split(f"--opt objective.{option}=", 1)[1].split("--opt", 1)[0]
        assert source in block, (option, block)
