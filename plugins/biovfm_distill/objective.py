"""Distillation: a student of any backbone learns from a frozen teacher.

DINOv2's ViT-S/B/L are distilled from its frozen ViT-g: "Distillation follows the
standard DINOv2 pretraining procedure, except the teacher is a pretrained ViT-g,
frozen" (dinov2 MODEL_CARD.md:102-103). DINOv3 does the same in
``dinov3/train/multidist_meta_arch.py``: the teacher's backbone and its own DINO and
iBOT heads give Sinkhorn-Knopp targets (``get_teacher_output``, always
Sinkhorn-Knopp, always a separate iBOT head), the student learns them with fresh heads
of the same prototype count (``_setup_distillation`` asserts the counts are equal),
plus KoLeo on its CLS tokens. There is no EMA: the teacher never moves.

Two kinds of target, ``targets``:

- ``heads`` (what ``auto`` picks for a biovfm DINOv2 run, whose checkpoint holds its
  teacher's heads): DINO cross-entropy on the CLS token (every student crop against the
  teacher's other global crops, DINOv3's ``global_ignore_diagonal: true``), iBOT
  cross-entropy on the patches masked in the student's global crops.
- ``features`` (what ``auto`` picks for any other teacher: an export, a hub ``.pth``,
  a timm/HF folder, which ship no heads): the student's CLS and patch tokens, each
  through a learned linear projection to the teacher's width, regress the teacher's
  tokens by cosine distance. Random prototypes over a foreign model's features would
  give Sinkhorn targets with no meaning; docs/distillation.md says why this choice.

Patch targets come from the teacher's unmasked crop, resampled to the student's grid
when the patch sizes differ (``grid.match_grid``); with a CNN on either side there are
no patch tokens and only the CLS term is used. The teacher runs once per batch under
``no_grad``, in bf16 autocast on CUDA.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from biovfm_dinov2.head import DINOHead
from biovfm_dinov2.loss import DINOClsTokenLoss, IBOTPatchLoss, KoLeoLoss
from biovfm_dinov2.masking import sample_ibot_masks
from biovfm_dinov2.objective import RECIPE as DINOV2_RECIPE
from biovfm_dinov2.sinkhorn import sinkhorn_knopp
from torch import Tensor, nn

from biovfm_core.errors import ConfigError, NotBuiltError
from biovfm_core.protocols import (
    Backbone,
    Batch,
    FrozenModel,
    ObjectiveBase,
    StepInfo,
    TaskInfo,
    ViewSpec,
)
from biovfm_core.schedules import linspace_warmup
from biovfm_distill.grid import match_grid, patch_grid

# The standard DINOv2 recipe (MODEL_CARD.md:103; ssl_default_config.yaml optim): lr
# 0.004 * sqrt(batch / 1024), 10 warm-up epochs, weight decay 0.04 -> 0.4, clip 3.0,
# layer decay 0.9, patch embedding at 0.2x. DINOv3's distillation config continues a
# student instead (dinov3_vitl16_lvd1689m_distilled.yaml:178-196: lr 2e-4, no warm-up,
# wd 0.04 -> 0.2, layer decay 0.99); set those with --opt optim.* for that case.
RECIPE = DINOV2_RECIPE

TARGETS = ("auto", "features", "heads")
IDENTITY_BYTES = 32


def _identity_tensor(identity: str) -> Tensor:
    raw = identity.encode()[:IDENTITY_BYTES].ljust(IDENTITY_BYTES, b"\0")
    return torch.tensor(list(raw), dtype=torch.uint8)


def _prototypes(head: nn.Module) -> int:
    """The output width of a head: its last linear layer's."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"distill: the teacher's head {type(head).__name__} has no Linear")
    return int(linears[-1].out_features)


def _cosine_distance(student: Tensor, teacher: Tensor) -> Tensor:
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


class DistillObjective(ObjectiveBase, nn.Module):
    """Student (backbone + heads or projections, trained); teacher frozen, outside."""

    def __init__(
        self,
        backbone: Backbone,
        teacher: FrozenModel,
        *,
        targets: str,
        head_hidden_dim: int,
        head_bottleneck_dim: int,
        head_nlayers: int,
        student_temp: float,
        teacher_temp: float,
        warmup_teacher_temp: float,
        warmup_teacher_temp_epochs: float,
        sinkhorn_iterations: int,
        dino_loss_weight: float,
        ibot_loss_weight: float,
        koleo_loss_weight: float,
        mask_ratio_min_max: tuple[float, float],
        mask_sample_probability: float,
        views: ViewSpec,
    ) -> None:
        super().__init__()
        self.views = views
        self.optim_recipe = RECIPE
        # A plain attribute, not a sub-module: not trained, not checkpointed, not copied.
        self.teacher = teacher
        self.targets = targets
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.sinkhorn_iterations = sinkhorn_iterations
        self.dino_loss_weight = dino_loss_weight
        self.ibot_loss_weight = ibot_loss_weight
        self.koleo_loss_weight = koleo_loss_weight
        self.mask_ratio_min_max = tuple(mask_ratio_min_max)
        self.mask_sample_probability = mask_sample_probability
        t_patch = int(getattr(teacher.backbone, "patch_size", 1))
        # CLS only when either side has no patch tokens (a CNN).
        self.use_patches = backbone.patch_size > 1 and t_patch > 1 and ibot_loss_weight > 0
        self.teacher_patch_size = t_patch

        student: dict[str, nn.Module] = {"backbone": backbone}
        dim, t_dim = backbone.embed_dim, int(teacher.backbone.embed_dim)
        if targets == "heads":
            self.separate_ibot = "ibot_head" in teacher.heads

            def head(k: int) -> DINOHead:
                return DINOHead(
                    dim,
                    k,
                    hidden_dim=head_hidden_dim,
                    bottleneck_dim=head_bottleneck_dim,
                    nlayers=head_nlayers,
                )

            # The student's prototypes are the teacher's count, so the two
            # distributions are over the same K (DINOv3 _setup_distillation).
            student["dino_head"] = head(_prototypes(teacher.heads["dino_head"]))
            if self.separate_ibot:
                student["ibot_head"] = head(_prototypes(teacher.heads["ibot_head"]))
        else:
            self.separate_ibot = False
            student["cls_proj"] = nn.Linear(dim, t_dim)
            if self.use_patches:
                student["patch_proj"] = nn.Linear(dim, t_dim)
        self.student = nn.ModuleDict(student)
        self.register_buffer("teacher_identity", _identity_tensor(teacher.identity))
        self.dino_loss = DINOClsTokenLoss(student_temp)
        self.ibot_loss = IBOTPatchLoss(student_temp)
        self.koleo_loss = KoLeoLoss()

    # ----------------------------------------------------------------- checkpoints

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        """Refuse a checkpoint trained against other teacher weights."""
        saved = state_dict.get(prefix + "teacher_identity")
        if saved is not None and not torch.equal(saved.cpu(), self.teacher_identity.cpu()):
            was = bytes(saved.cpu().tolist()).rstrip(b"\0").decode(errors="replace")
            raise ConfigError(
                f"objective.teacher {self.teacher.spec}: its weights (identity "
                f"{self.teacher.identity}) are not the ones this checkpoint was distilled "
                f"from (identity {was}); resume with the same teacher, or start a new run"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --------------------------------------------------------------------- step

    def clip_groups(self) -> dict[str, nn.Module]:
        """Each student module clipped on its own, as DINOv2's do_train does."""
        return dict(self.student.items())

    def current_teacher_temp(self, info: StepInfo) -> float:
        warmup_steps = round(self.warmup_teacher_temp_epochs * max(1, info.steps_per_epoch))
        return linspace_warmup(info.step, warmup_steps, self.warmup_teacher_temp, self.teacher_temp)

    def _teacher_context(self, device: torch.device):
        # bf16 on GPU: the teacher only gives targets, and is the big model of the two.
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        images = torch.cat(batch.global_views)
        if self.teacher.device != images.device:
            self.teacher.to(images.device)
        if self.targets == "heads":
            return self._heads_step(batch, images, info)
        return self._features_step(batch, images)

    def _grids(self, images: Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
        size = (images.shape[-2], images.shape[-1])
        student_patch = self.student["backbone"].patch_size
        return patch_grid(size, self.teacher_patch_size), patch_grid(size, student_patch)

    def _heads_step(self, batch: Batch, images: Tensor, info: StepInfo) -> dict[str, Tensor]:
        n_global, n_local = len(batch.global_views), len(batch.local_views)
        backbone = self.student["backbone"]
        temp = self.current_teacher_temp(info)
        t_dino = self.teacher.heads["dino_head"]
        t_ibot = self.teacher.heads["ibot_head"] if self.separate_ibot else t_dino
        s_ibot = self.student["ibot_head"] if self.separate_ibot else self.student["dino_head"]

        has_masked, masks = False, None
        if self.use_patches:
            t_grid, s_grid = self._grids(images)
            # Drawn on the CPU, as the dinov2 objective does, so the device never waits.
            cpu_masks = sample_ibot_masks(
                images.shape[0], s_grid, self.mask_ratio_min_max, self.mask_sample_probability
            )
            has_masked = bool(cpu_masks.any())
            masked_index = cpu_masks.flatten().nonzero().squeeze(1).to(images.device)
            masks = cpu_masks.to(images.device, non_blocking=True)

        with torch.no_grad(), self._teacher_context(images.device):
            t_out = self.teacher.backbone.forward_tokens(images)
            t_cls = t_dino(t_out.cls).float()
            if has_masked:
                t_patches = match_grid(t_out.patches, t_grid, s_grid)
                t_masked = t_patches.flatten(0, 1).index_select(0, masked_index)
                t_patch_logits = t_ibot(t_masked).float()
        with torch.no_grad():
            t_cls_targets = sinkhorn_knopp(t_cls, temp, self.sinkhorn_iterations).chunk(n_global)
            if has_masked:
                t_patch_targets = sinkhorn_knopp(t_patch_logits, temp, self.sinkhorn_iterations)

        s_global = backbone.forward_tokens(images, mask=masks)
        student_logits = list(self.student["dino_head"](s_global.cls).chunk(n_global))
        if n_local:
            s_local = backbone.forward_tokens(torch.cat(batch.local_views)).cls
            student_logits += list(self.student["dino_head"](s_local).chunk(n_local))
        dino = self.dino_loss(student_logits, list(t_cls_targets))
        koleo = self.koleo_loss.per_crop_sum(s_global.cls, n_global)
        loss = self.dino_loss_weight * dino + self.koleo_loss_weight * koleo
        out = {"dino_loss": dino.detach(), "koleo_loss": koleo.detach()}
        if self.use_patches:
            if has_masked:
                s_masked = s_global.patches.flatten(0, 1).index_select(0, masked_index)
                ibot = self.ibot_loss(s_ibot(s_masked), t_patch_targets, cpu_masks)
            else:
                ibot = images.new_zeros(())
            loss = loss + self.ibot_loss_weight * ibot
            out["ibot_loss"] = ibot.detach()
        out["loss"] = loss
        # The student is the evaluation backbone, so its embeddings feed the collapse
        # sentinels; the frozen teacher's entropy says nothing about the student.
        out["signals"] = {
            "embeddings": s_global.cls.detach(),
            "koleo_embeddings": s_global.cls.detach().unflatten(0, (n_global, -1)),
            "loss_at_lnk": dino.detach() / math.log(max(2, t_cls.shape[-1])),
        }
        return out

    def _features_step(self, batch: Batch, images: Tensor) -> dict[str, Tensor]:
        n_global = len(batch.global_views)
        backbone = self.student["backbone"]
        with torch.no_grad(), self._teacher_context(images.device):
            t_out = self.teacher.backbone.forward_tokens(images)
            t_cls = t_out.cls.float()
            if self.use_patches:
                t_grid, s_grid = self._grids(images)
                t_patches = match_grid(t_out.patches, t_grid, s_grid).float()

        s_global = backbone.forward_tokens(images)
        proj = self.student["cls_proj"]
        # Each global crop against its own teacher crop; each local crop against every
        # global one (it sees a part of them).
        terms = [_cosine_distance(proj(s_global.cls), t_cls)]
        if batch.local_views:
            s_local = proj(backbone.forward_tokens(torch.cat(batch.local_views)).cls)
            for target in t_cls.chunk(n_global):
                for crop in s_local.chunk(len(batch.local_views)):
                    terms.append(_cosine_distance(crop, target))
        cls_loss = sum(terms) / len(terms)
        koleo = self.koleo_loss.per_crop_sum(s_global.cls, n_global)
        loss = self.dino_loss_weight * cls_loss + self.koleo_loss_weight * koleo
        out = {"cls_loss": cls_loss.detach(), "koleo_loss": koleo.detach()}
        if self.use_patches:
            patch_loss = _cosine_distance(self.student["patch_proj"](s_global.patches), t_patches)
            loss = loss + self.ibot_loss_weight * patch_loss
            out["patch_loss"] = patch_loss.detach()
        out["loss"] = loss
        out["signals"] = {
            "embeddings": s_global.cls.detach(),
            "koleo_embeddings": s_global.cls.detach().unflatten(0, (n_global, -1)),
        }
        return out

    def after_optimizer_step(self, info: StepInfo) -> Mapping[str, float]:
        if self.targets == "heads":
            return {"teacher_temp": self.current_teacher_temp(info)}
        return {}

    def eval_backbone(self) -> Backbone:
        return self.student["backbone"]


def build_distill(
    backbone: Backbone,
    task: TaskInfo,
    *,
    teacher: str = "",
    targets: Literal["auto", "features", "heads"] = "auto",
    cache_teacher: bool = False,
    head_hidden_dim: int = 2048,
    head_bottleneck_dim: int = 256,
    head_nlayers: int = 3,
    student_temp: float = 0.1,
    teacher_temp: float = 0.07,
    warmup_teacher_temp: float = 0.04,
    warmup_teacher_temp_epochs: float = 30.0,
    sinkhorn_iterations: int = 3,
    dino_loss_weight: float = 1.0,
    ibot_loss_weight: float = 1.0,
    koleo_loss_weight: float = 0.1,
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5),
    mask_sample_probability: float = 0.5,
    global_size: int = 224,
    local_size: int = 96,
    local_crops: int = 8,
    global_scale: tuple[float, float] = (0.32, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.32),
) -> DistillObjective:
    """Distil a frozen ``teacher`` (any model spec: a biovfm run or export, a DINOv2 hub
    ``.pth``, a timm/HF folder, ``random:NAME``) into the backbone.

    ``targets``: "heads" (DINO on CLS + iBOT on masked patches against the teacher's own
    heads; needs a biovfm DINOv2 run), "features" (cosine regression of projected
    student tokens onto the teacher's), "auto" (heads when the teacher has them).
    ``cache_teacher``: precomputed teacher outputs; not built. Student heads:
    ``head_hidden_dim`` (2048), ``head_bottleneck_dim`` (256), ``head_nlayers`` (3), the
    prototype count taken from the teacher's heads. Temperatures: ``student_temp`` 0.1,
    teacher ``warmup_teacher_temp`` 0.04 -> ``teacher_temp`` 0.07 over
    ``warmup_teacher_temp_epochs`` (30), Sinkhorn-Knopp with ``sinkhorn_iterations``
    (3). Weights: ``dino_loss_weight`` 1 (the CLS term), ``ibot_loss_weight`` 1 (the
    patch term; 0 for CLS only), ``koleo_loss_weight`` 0.1. iBOT masks: ratio in
    ``mask_ratio_min_max`` for a share ``mask_sample_probability`` of the crops. Views
    as dinov2's: 2 global crops of ``global_size`` and ``local_crops`` of ``local_size``.
    Defaults: DINOv2's ssl_default_config and DINOv3's distillation config
    (docs/distillation.md lists each with its line).
    """
    if cache_teacher:
        raise NotBuiltError(
            "distill: objective.cache_teacher is not built: the teacher runs on every "
            "batch (docs/distillation.md, 'Caching teacher outputs', says when a cache "
            "would pay); leave it false"
        )
    if not teacher:
        raise ConfigError(
            "distill: objective.teacher is required: --opt objective.teacher=RUN (a biovfm "
            "run or export, a DINOv2 hub .pth, a timm/HF folder, random:NAME)"
        )
    if task.load_model is None:
        raise ConfigError(
            "distill: no model loader was given (TaskInfo.load_model); biovfm train, its "
            "preflight and biovfm_core.testing.check_objective pass one"
        )
    if targets not in TARGETS:
        raise ConfigError(f"distill: targets must be one of {', '.join(TARGETS)}, got {targets!r}")
    if local_crops < 0 or sinkhorn_iterations < 1:
        raise ConfigError("distill: local_crops must be >= 0, sinkhorn_iterations >= 1")
    frozen = task.load_model(teacher)
    has_heads = "dino_head" in frozen.heads
    if targets == "auto":
        targets = "heads" if has_heads else "features"
    if targets == "heads" and not has_heads:
        raise ConfigError(
            f"distill: objective.targets=heads needs a teacher with DINO heads (a biovfm "
            f"dinov2 run with a checkpoint); {teacher} has none: use targets=features"
        )
    for name, patch in (
        ("student", backbone.patch_size),
        ("teacher", int(getattr(frozen.backbone, "patch_size", 1))),
    ):
        if patch > 1 and global_size % patch:
            raise ConfigError(
                f"distill: global_size {global_size} is not a multiple of the {name}'s "
                f"patch size {patch}; pick a multiple of both patch sizes"
            )
    views = ViewSpec(
        global_crops=2,
        global_size=global_size,
        global_scale=tuple(global_scale),
        local_crops=local_crops,
        local_size=local_size,
        local_scale=tuple(local_scale),
        color_augment=True,
        needs_labels=False,
    )
    return DistillObjective(
        backbone,
        frozen,
        targets=targets,
        head_hidden_dim=head_hidden_dim,
        head_bottleneck_dim=head_bottleneck_dim,
        head_nlayers=head_nlayers,
        student_temp=student_temp,
        teacher_temp=teacher_temp,
        warmup_teacher_temp=warmup_teacher_temp,
        warmup_teacher_temp_epochs=warmup_teacher_temp_epochs,
        sinkhorn_iterations=sinkhorn_iterations,
        dino_loss_weight=dino_loss_weight,
        ibot_loss_weight=ibot_loss_weight,
        koleo_loss_weight=koleo_loss_weight,
        mask_ratio_min_max=mask_ratio_min_max,
        mask_sample_probability=mask_sample_probability,
        views=views,
    )


# Options whose effect the conformance kit cannot see with its teacher (see CONTRIBUTING).
build_distill.kit_exempt_options = {  # type: ignore[attr-defined]
    "teacher": "a model spec; the kit gives its own teacher",
    "cache_teacher": "not built: true raises NotBuiltError",
    "mask_ratio_min_max": "the kit's 2x2 patch grid rounds a changed ratio to the same "
    "masked-patch count; the dinov2 objective's masks are the same code",
}
