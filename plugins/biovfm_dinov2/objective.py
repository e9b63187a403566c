"""DINOv2: DINO CLS-token loss + iBOT masked-patch loss + KoLeo, with an EMA teacher.

Defaults are DINOv2's ``ssl_default_config`` for ViT-L (with the Sinkhorn-Knopp
centering of its ViT-L/g recipes); docs/training.md's "matches the official recipe" table
lists each value with its source. The backbone half of the recipe (drop-path 0.3 in
every block, LayerScale 1e-5, DINOv2's position-table resizing for the local crops) is
this plugin's ``"backbone"`` preset, which ``biovfm train`` applies to the ViT options
the user did not set. The optimiser follows DINOv2 too: np.linspace warm-up, weight
decay on everything but biases, norms and LayerScale gammas, and each student module
(backbone, dino_head, ibot_head) clipped on its own (``clip_groups``). DINOv2's
1,250-step epochs are ``train.epoch_length=1250``; its 2,048 batch is
``--batch-size 2048`` (global). For a CPU demo use
``prototypes=1024, local_crops=4, global_size=64, local_size=32`` on ``vit_tiny``
(patch 16), and ``warmup_teacher_temp_epochs`` no longer than the run.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from lightly.models.utils import update_momentum
from torch import Tensor, nn

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import (
    Backbone,
    Batch,
    ObjectiveBase,
    OptimRecipe,
    StepInfo,
    TaskInfo,
    ViewSpec,
)
from biovfm_core.schedules import cosine_schedule, linspace_warmup
from biovfm_dinov2.gram_anchor import SOURCES as GRAM_SOURCES
from biovfm_dinov2.gram_anchor import GramTeacher, check_gram_options
from biovfm_dinov2.head import DINOHead
from biovfm_dinov2.loss import DINOClsTokenLoss, IBOTPatchLoss, KoLeoLoss
from biovfm_dinov2.loss.gram import gram_loss
from biovfm_dinov2.loss.teacher_targets import CENTERINGS, TeacherTargets
from biovfm_dinov2.masking import sample_ibot_masks

# DINOv2's ssl_default_config optim section: lr = 0.004 * sqrt(batch / 1024), 10 warm-up
# epochs, weight decay cosine 0.04 -> 0.4, clip 3.0, layer-wise decay 0.9, patch
# embedding at 0.2x. The warm-up is CosineScheduler's np.linspace (dinov2/utils/utils.py)
# and weight decay spares only biases, norms and LayerScale gammas
# (dinov2/utils/param_groups.py get_params_groups_with_decay).
RECIPE = OptimRecipe(
    base_lr=0.004,
    reference_batch=1024,
    lr_scaling="sqrt",
    min_lr=1e-6,
    warmup_epochs=10.0,
    weight_decay=0.04,
    weight_decay_end=0.4,
    betas=(0.9, 0.999),
    grad_clip=3.0,
    layer_decay=0.9,
    patch_embed_lr_mult=0.2,
    warmup="linspace",
    decay_exempt="bias_norm_gamma",
)


class DINOv2Objective(ObjectiveBase, nn.Module):
    """Student (backbone + heads, trained) and teacher (EMA copy, no gradient)."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        prototypes: int,
        head_hidden_dim: int,
        head_bottleneck_dim: int,
        head_nlayers: int,
        norm_last_layer: bool,
        ibot_separate_head: bool,
        ibot_head_n_prototypes: int,
        ibot_head_hidden_dim: int,
        ibot_head_bottleneck_dim: int,
        ibot_head_nlayers: int,
        centering: str,
        sinkhorn_iterations: int,
        center_momentum: float,
        student_temp: float,
        teacher_temp: float,
        warmup_teacher_temp: float,
        warmup_teacher_temp_epochs: float,
        momentum_teacher: float,
        final_momentum_teacher: float,
        freeze_last_layer_epochs: float,
        dino_loss_weight: float,
        ibot_loss_weight: float,
        koleo_loss_weight: float,
        mask_ratio_min_max: tuple[float, float],
        mask_sample_probability: float,
        views: ViewSpec,
        gram: dict | None = None,
    ) -> None:
        super().__init__()
        self.views = views
        self.optim_recipe = RECIPE
        self.prototypes = prototypes
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.momentum_teacher = momentum_teacher
        self.final_momentum_teacher = final_momentum_teacher
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        self.dino_loss_weight = dino_loss_weight
        self.ibot_loss_weight = ibot_loss_weight
        self.koleo_loss_weight = koleo_loss_weight
        self.mask_ratio_min_max = tuple(mask_ratio_min_max)
        self.mask_sample_probability = mask_sample_probability
        self.ibot_separate_head = ibot_separate_head
        # With iBOT on a shared head every trainable parameter gets a gradient in every
        # step (the mask token too: it is blended in even when no patch is masked), so
        # DDP need not search for unused ones. A separate iBOT head idles in a step
        # with no masked image; without iBOT the mask token is never used.
        self.uses_every_parameter = ibot_loss_weight > 0 and not ibot_separate_head

        dino_head = DINOHead(
            backbone.embed_dim,
            prototypes,
            hidden_dim=head_hidden_dim,
            bottleneck_dim=head_bottleneck_dim,
            nlayers=head_nlayers,
            norm_last_layer=norm_last_layer,
        )
        student = {"backbone": backbone, "dino_head": dino_head}
        ibot_prototypes = prototypes
        if ibot_separate_head:
            ibot_prototypes = ibot_head_n_prototypes
            student["ibot_head"] = DINOHead(
                backbone.embed_dim,
                ibot_head_n_prototypes,
                hidden_dim=ibot_head_hidden_dim,
                bottleneck_dim=ibot_head_bottleneck_dim,
                nlayers=ibot_head_nlayers,
                norm_last_layer=norm_last_layer,
            )
        self.student = nn.ModuleDict(student)
        # The teacher starts as the student's copy (DINOv2 loads the student's state).
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.teacher.eval()

        self.dino_targets = TeacherTargets(
            prototypes, centering, center_momentum, sinkhorn_iterations
        )
        self.ibot_targets = TeacherTargets(
            ibot_prototypes, centering, center_momentum, sinkhorn_iterations
        )
        self.dino_loss = DINOClsTokenLoss(student_temp)
        self.ibot_loss = IBOTPatchLoss(student_temp)
        self.koleo_loss = KoLeoLoss()

        # DINOv3's Gram anchoring (biovfm_dinov2.gram_anchor); off with weight 0, and
        # then the objective's state is exactly DINOv2's.
        gram = dict(gram or {})
        self.gram_loss_weight = float(gram.pop("weight", 0.0))
        self.gram_settings = {k: gram.pop(k) for k in ("normalized", "img_level", "remove_neg")}
        self.gram_tokens = gram.pop("tokens", "all")
        self.gram_teacher = (
            GramTeacher(self.teacher["backbone"], **gram) if self.gram_loss_weight > 0 else None
        )

    # The teacher never uses dropout / stochastic depth (DINOv2 builds it without).
    def train(self, mode: bool = True) -> DINOv2Objective:
        super().train(mode)
        self.teacher.eval()
        return self

    def _ibot_head(self, which: nn.ModuleDict) -> nn.Module:
        return which["ibot_head"] if self.ibot_separate_head else which["dino_head"]

    def current_teacher_temp(self, info: StepInfo) -> float:
        warmup_steps = round(self.warmup_teacher_temp_epochs * max(1, info.steps_per_epoch))
        return linspace_warmup(info.step, warmup_steps, self.warmup_teacher_temp, self.teacher_temp)

    def lr_freeze(self) -> dict[str, float]:
        """Parameter name -> epochs its learning rate is held at 0 (``biovfm_core.train.optim``).

        DINOv2 holds the prototype layers still in the first epoch by giving them lr 0,
        so AdamW's moments keep accumulating their gradients meanwhile.
        """
        return {
            f"student.{name}.last_layer.{param}": self.freeze_last_layer_epochs
            for name, head in self.student.items()
            if name != "backbone"
            for param, _ in head.last_layer.named_parameters()
        }

    def clip_groups(self) -> dict[str, nn.Module]:
        """The modules whose gradients are clipped each on their own: DINOv2 clips
        every student module (backbone, dino_head, ibot_head) separately
        (dinov2/train/train.py do_train, ``for v in model.student.values()``)."""
        return dict(self.student.items())

    def load_stage_state(self, weights: Mapping[str, Tensor]) -> list[str]:
        """Carry on from a previous run's objective (``init_mode: objective``): student,
        EMA teacher, heads and centering state. The Gram teacher is this stage's own
        (taken from the carried-over EMA teacher at its ``gram_load_step``), so the
        previous run's is left out; returns the keys not carried over."""
        own = self.state_dict()
        carried = {k: v for k, v in weights.items() if not k.startswith("gram_teacher.")}
        missing = sorted(k for k in own if k not in carried and not k.startswith("gram_teacher."))
        if missing:
            raise ConfigError(
                f"dinov2: the previous run's objective lacks {len(missing)} keys this one "
                f"needs (first: {missing[0]}); its heads or backbone differ"
            )
        for key, value in carried.items():
            if key in own and own[key].shape != value.shape:
                raise ConfigError(
                    f"dinov2: {key} is {tuple(value.shape)} in the previous run, "
                    f"{tuple(own[key].shape)} here; keep the heads' and backbone's options"
                )
        self.load_state_dict({**own, **{k: v for k, v in carried.items() if k in own}})
        return sorted(k for k in carried if k not in own)

    def current_momentum(self, info: StepInfo) -> float:
        return cosine_schedule(
            info.step, info.total_steps, self.momentum_teacher, self.final_momentum_teacher
        )

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        n_global = len(batch.global_views)
        n_local = len(batch.local_views)
        images = torch.cat(batch.global_views)
        backbone = self.student["backbone"]
        teacher_temp = self.current_teacher_temp(info)

        use_ibot = self.ibot_loss_weight > 0
        if self.gram_teacher is not None:
            self.gram_teacher.before_step(info.step, self.teacher["backbone"])
        masks = None
        if use_ibot:
            p = backbone.patch_size
            grid = (images.shape[-2] // p, images.shape[-1] // p)
            # Masks are drawn on the CPU; everything data-dependent about them (is any
            # patch masked, which ones) is computed there, so the device never has to
            # synchronise for a boolean index, as DINOv2 does with its index lists.
            cpu_masks = sample_ibot_masks(
                images.shape[0], grid, self.mask_ratio_min_max, self.mask_sample_probability
            )
            has_masked = bool(cpu_masks.any())
            masked_index = cpu_masks.flatten().nonzero().squeeze(1).to(images.device)
            masks = cpu_masks.to(images.device, non_blocking=True)

        def masked_patches(tokens: Tensor) -> Tensor:
            return tokens.flatten(0, 1).index_select(0, masked_index)

        with torch.no_grad():
            t_out = self.teacher["backbone"].forward_tokens(images)
            t_cls_logits = self.teacher["dino_head"](t_out.cls)
            t_cls_all = self.dino_targets(t_cls_logits, teacher_temp)
            t_cls_targets = t_cls_all.chunk(n_global)
            if use_ibot and has_masked:
                t_patch_logits = self._ibot_head(self.teacher)(masked_patches(t_out.patches))
                t_patch_targets = self.ibot_targets(t_patch_logits, teacher_temp)

        s_global = backbone.forward_tokens(images, mask=masks if use_ibot else None)
        student_logits = list(self.student["dino_head"](s_global.cls).chunk(n_global))
        if n_local:
            s_local = backbone.forward_tokens(torch.cat(batch.local_views)).cls
            student_logits += list(self.student["dino_head"](s_local).chunk(n_local))

        dino = self.dino_loss(student_logits, list(t_cls_targets))
        koleo = self.koleo_loss.per_crop_sum(s_global.cls, n_global)
        loss = self.dino_loss_weight * dino + self.koleo_loss_weight * koleo
        out = {"dino_loss": dino.detach(), "koleo_loss": koleo.detach()}
        if use_ibot:
            if has_masked:
                s_patch_logits = self._ibot_head(self.student)(masked_patches(s_global.patches))
                ibot = self.ibot_loss(s_patch_logits, t_patch_targets, cpu_masks)
            else:
                ibot = images.new_zeros(())
            loss = loss + self.ibot_loss_weight * ibot
            out["ibot_loss"] = ibot.detach()
        if self.gram_teacher is not None:
            # Logged as 0 before the snapshot exists: metrics.csv takes its columns
            # from the first step, and a column that appears later would be lost.
            gram = images.new_zeros(())
            if self.gram_teacher.ready:
                gram = self._gram_term(images, s_global.patches, t_out.patches, masks)
                loss = loss + self.gram_loss_weight * gram
            out["gram_loss"] = gram.detach()
        out["loss"] = loss
        # References for the loop's collapse sentinels, turned into numbers only on
        # log steps (biovfm_core/train/signals.py): no work here.
        out["signals"] = {
            "embeddings": t_out.cls,  # the teacher is the evaluation backbone
            "teacher_probs": t_cls_all,
            "koleo_embeddings": s_global.cls.detach().unflatten(0, (n_global, -1)),
            "loss_at_lnk": dino.detach() / math.log(max(2, self.prototypes)),
        }
        return out

    def _gram_term(
        self, images: Tensor, student: Tensor, ema_patches: Tensor, masks: Tensor | None
    ) -> Tensor:
        """DINOv3's Gram loss between the student's patch features of the (masked)
        global crops and the Gram teacher's of the same crops unmasked
        (ssl_meta_arch.py get_gram_teacher_output, lines 476-527)."""
        p = self.student["backbone"].patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        gt = self.gram_teacher
        teacher = ema_patches if gt.uses_ema else gt.patch_features(images, grid)
        if self.gram_tokens != "all":
            chosen = masks if self.gram_tokens == "masked" else ~masks
            student, teacher = student[chosen], teacher[chosen]
        return gram_loss(student, teacher.to(student.dtype), **self.gram_settings)

    @torch.no_grad()
    def after_optimizer_step(self, info: StepInfo) -> Mapping[str, float]:
        m = self.current_momentum(info)
        for name, module in self.student.items():
            update_momentum(module, self.teacher[name], m)
        out = {"teacher_momentum": m, "teacher_temp": self.current_teacher_temp(info)}
        if self.gram_teacher is not None:
            # DINOv3 refreshes the Gram teacher after the EMA update (train.py 532-544).
            out["gram_refreshed"] = float(
                self.gram_teacher.after_step(info.step, self.teacher["backbone"])
            )
        return out

    def eval_backbone(self) -> Backbone:
        return self.teacher["backbone"]


def build_dinov2(
    backbone: Backbone,
    task: TaskInfo,
    *,
    prototypes: int = 65536,
    head_hidden_dim: int = 2048,
    head_bottleneck_dim: int = 256,
    head_nlayers: int = 3,
    norm_last_layer: bool = False,
    ibot_separate_head: bool = False,
    ibot_head_n_prototypes: int = 65536,
    ibot_head_hidden_dim: int = 2048,
    ibot_head_bottleneck_dim: int = 256,
    ibot_head_nlayers: int = 3,
    centering: str = "sinkhorn_knopp",
    sinkhorn_iterations: int = 3,
    center_momentum: float = 0.9,
    student_temp: float = 0.1,
    teacher_temp: float = 0.07,
    warmup_teacher_temp: float = 0.04,
    warmup_teacher_temp_epochs: float = 30.0,
    momentum_teacher: float = 0.992,
    final_momentum_teacher: float = 1.0,
    freeze_last_layer_epochs: float = 1.0,
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
    gram_loss_weight: float = 0.0,
    gram_teacher: str = "snapshot",
    gram_load_step: int = 0,
    gram_update_frequency: int = 0,
    gram_first_update: int = 0,
    gram_max_updates: int | None = None,
    gram_crop_size: int | None = None,
    gram_img_level: bool = True,
    gram_normalized: bool = True,
    gram_remove_neg: bool = False,
    gram_tokens: str = "all",
) -> DINOv2Objective:
    """DINOv2 self-distillation (DINO + iBOT + KoLeo) with an EMA teacher.

    Heads: ``prototypes`` K (65,536), ``head_hidden_dim`` (2048), ``head_bottleneck_dim``
    (256), ``head_nlayers`` (3); the prototypes are weight-normalised with a learned
    norm, or a norm frozen at 1 with ``norm_last_layer``. ``ibot_separate_head`` gives
    iBOT its own head of ``ibot_head_n_prototypes`` (65,536), ``ibot_head_hidden_dim``
    (2048), ``ibot_head_bottleneck_dim`` (256), ``ibot_head_nlayers`` (3). Teacher targets:
    ``centering`` "sinkhorn_knopp" (``sinkhorn_iterations`` 3) or "centering"
    (running mean, ``center_momentum`` 0.9). Temperatures: ``student_temp`` 0.1, teacher
    ``warmup_teacher_temp`` 0.04 -> ``teacher_temp`` 0.07 linearly over
    ``warmup_teacher_temp_epochs`` (30). Teacher EMA momentum cosine
    ``momentum_teacher`` 0.992 -> ``final_momentum_teacher`` 1.0. Prototype layers get
    learning rate 0 for ``freeze_last_layer_epochs`` (1). Loss weights ``dino_loss_weight`` 1,
    ``ibot_loss_weight`` 1 (0 disables iBOT, allowing CNN backbones),
    ``koleo_loss_weight`` 0.1. iBOT masks: ratio in ``mask_ratio_min_max`` (0.1, 0.5) for
    a share ``mask_sample_probability`` (0.5) of the global crops. Views: 2 global crops
    of ``global_size`` (224, scale ``global_scale``) and ``local_crops`` (8) local crops of
    ``local_size`` (96, scale ``local_scale``). CPU demo: prototypes=1024,
    local_crops=4, global_size=64, local_size=32 with vit_tiny, patch 16.

    Gram anchoring (DINOv3) is off unless ``gram_loss_weight`` > 0; see docs/gram.md.
    Sources are facebookresearch/dinov3 at 6876159a, ``D3`` = dinov3/configs/ssl_default_config.yaml.

    Args:
        gram_loss_weight: weight of DINOv3's Gram loss; 0 turns it off (D3 line 46
            gram.use_loss false, line 48 gram.loss_weight 1.0; 2.0 at the end of
            dinov3_vit7b16_gram_anchor.yaml lines 64-69, 1.5 in
            dinov3_vit7b16_high_res_adapt.yaml lines 63-68).
        gram_teacher: where the Gram targets come from: "snapshot" (a frozen copy of
            the EMA teacher, D3 line 51 gram.it_load_ema_teacher), "ema" (the live EMA
            teacher, D3 line 49 gram.ema_teacher) or a path: a biovfm run or export,
            DINOv2 .pth or timm folder (D3 line 50 gram.ckpt).
        gram_load_step: the step before which the snapshot is taken; no Gram term
            until then (D3 line 51 gram.it_load_ema_teacher, -1 there = use gram.ckpt;
            0 here = the teacher the run starts with, a previous stage's with --init).
        gram_update_frequency: refresh the snapshot from the EMA teacher every this
            many steps; 0 never (D3 lines 52-53 gram.rep_update true, update_frequency
            50000; 10000 in dinov3_vit7b16_gram_anchor.yaml line 54; rep_update false in
            dinov3_vit7b16_high_res_adapt.yaml line 52).
        gram_first_update: no refresh before this step (D3 line 54
            gram.it_first_update 0; 1010000 in dinov3_vit7b16_gram_anchor.yaml line 55).
        gram_max_updates: at most this many refreshes; None unlimited (D3 line 55
            gram.max_updates null; 3 in dinov3_vit7b16_gram_anchor.yaml line 56).
        gram_crop_size: the Gram teacher sees the global crops resampled to this size,
            its feature map resized back (bicubic) to the student's; None the student's
            size (D3 line 159 crops.gram_teacher_crops_size null; 512 for 256 crops in
            dinov3_vit7b16_gram_anchor.yaml line 165, 768 for 512 in
            dinov3_vit7b16_high_res_adapt.yaml line 181; D3 lines 61-62 bicubic, no
            antialias).
        gram_img_level: one Gram matrix per image; false one over the batch's patches
            (D3 line 57 gram.img_level false; true in dinov3_vit7b16_gram_anchor.yaml
            line 58 and dinov3_vit7b16_high_res_adapt.yaml line 57).
        gram_normalized: L2-normalise patch features first, so the Gram matrix holds
            cosine similarities (D3 line 56 gram.normalized true).
        gram_remove_neg: clamp negative similarities of both matrices to 0 (D3 line 58
            gram.remove_neg false).
        gram_tokens: the patches compared: all, masked or unmasked by iBOT (D3 line 60
            gram.tokens_used all; masked/unmasked need gram_img_level=false).
    """
    del task  # self-supervised: labels, if any, are ignored
    if centering not in CENTERINGS:
        raise ConfigError(
            f"dinov2: centering must be one of {', '.join(CENTERINGS)}, got {centering!r}"
        )
    if prototypes < 1 or ibot_head_n_prototypes < 1 or local_crops < 0:
        raise ConfigError(
            "dinov2: prototypes and ibot_head_n_prototypes must be >= 1, local_crops >= 0"
        )
    if ibot_loss_weight > 0:
        if backbone.patch_size <= 1:
            raise ConfigError(
                f"dinov2: the iBOT term masks patch tokens, which {type(backbone).__name__} "
                "lacks; use a ViT or set ibot_loss_weight=0"
            )
        if global_size % backbone.patch_size:
            raise ConfigError(
                f"dinov2: global_size {global_size} must be a multiple of the patch size "
                f"{backbone.patch_size}"
            )
    check_gram_options(
        weight=gram_loss_weight,
        source=gram_teacher,
        tokens=gram_tokens,
        img_level=gram_img_level,
        crop_size=gram_crop_size,
        update_frequency=gram_update_frequency,
        patch_size=backbone.patch_size,
    )
    if gram_loss_weight > 0 and gram_tokens != "all" and ibot_loss_weight <= 0:
        raise ConfigError(
            "dinov2: gram_tokens masked/unmasked needs iBOT's masks (ibot_loss_weight > 0)"
        )
    if (
        gram_loss_weight > 0
        and gram_teacher not in GRAM_SOURCES
        and not gram_teacher.startswith("timm:")
        and not Path(gram_teacher).expanduser().exists()
    ):
        raise ConfigError(
            f"dinov2: gram_teacher {gram_teacher!r}: no such file or folder (expected "
            f"{', '.join(GRAM_SOURCES)}, or a biovfm run/export, DINOv2 .pth or timm folder)"
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
    return DINOv2Objective(
        backbone,
        prototypes=prototypes,
        head_hidden_dim=head_hidden_dim,
        head_bottleneck_dim=head_bottleneck_dim,
        head_nlayers=head_nlayers,
        norm_last_layer=norm_last_layer,
        ibot_separate_head=ibot_separate_head,
        ibot_head_n_prototypes=ibot_head_n_prototypes,
        ibot_head_hidden_dim=ibot_head_hidden_dim,
        ibot_head_bottleneck_dim=ibot_head_bottleneck_dim,
        ibot_head_nlayers=ibot_head_nlayers,
        centering=centering,
        sinkhorn_iterations=sinkhorn_iterations,
        center_momentum=center_momentum,
        student_temp=student_temp,
        teacher_temp=teacher_temp,
        warmup_teacher_temp=warmup_teacher_temp,
        warmup_teacher_temp_epochs=warmup_teacher_temp_epochs,
        momentum_teacher=momentum_teacher,
        final_momentum_teacher=final_momentum_teacher,
        freeze_last_layer_epochs=freeze_last_layer_epochs,
        dino_loss_weight=dino_loss_weight,
        ibot_loss_weight=ibot_loss_weight,
        koleo_loss_weight=koleo_loss_weight,
        mask_ratio_min_max=mask_ratio_min_max,
        mask_sample_probability=mask_sample_probability,
        views=views,
        gram={
            "weight": gram_loss_weight,
            "normalized": gram_normalized,
            "img_level": gram_img_level,
            "remove_neg": gram_remove_neg,
            "tokens": gram_tokens,
            "source": gram_teacher,
            "load_step": gram_load_step,
            "update_frequency": gram_update_frequency,
            "first_update": gram_first_update,
            "max_updates": gram_max_updates,
            "crop_size": gram_crop_size,
        },
    )


# The "backbone" preset (drop-path, LayerScale) is DINOv2's ViT recipe: only backbones
# declaring backbone_family "vit" get it.
build_dinov2.backbone_preset_family = "vit"  # type: ignore[attr-defined]

# Options whose effect the conformance kit cannot see with the defaults (see CONTRIBUTING).
_SEPARATE = "used only with ibot_separate_head=True; by default iBOT shares the DINO head"
build_dinov2.kit_exempt_options = {  # type: ignore[attr-defined]
    "ibot_head_n_prototypes": _SEPARATE,
    "ibot_head_hidden_dim": _SEPARATE,
    "ibot_head_bottleneck_dim": _SEPARATE,
    "ibot_head_nlayers": _SEPARATE,
    "center_momentum": "used only with centering='centering'; the default is sinkhorn_knopp",
    **{
        name: "Gram anchoring is off by default (gram_loss_weight=0)"
        for name in (
            "gram_teacher",
            "gram_load_step",
            "gram_update_frequency",
            "gram_first_update",
            "gram_max_updates",
            "gram_crop_size",
            "gram_img_level",
            "gram_normalized",
            "gram_remove_neg",
            "gram_tokens",
        )
    },
}
