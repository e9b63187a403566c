"""The Gram teacher of DINOv3's Gram anchoring: where its patch features come from,
when it is refreshed, and at what resolution it sees the crops.

Sources (dinov3/train/ssl_meta_arch.py lines 178-227, dinov3/train/train.py 441-544):

- ``"ema"`` (``gram.ema_teacher: true``): the live EMA teacher's patch features of the
  same global crops; no extra model.
- ``"snapshot"`` (``gram.it_load_ema_teacher``, ``gram.rep_update``): a frozen copy of
  the EMA teacher's backbone, taken before step ``load_step`` and then replaced by the
  EMA teacher after every ``update_frequency`` steps from ``first_update`` on, at most
  ``max_updates`` times. Until it is taken there is no Gram term.
- a path (``gram.ckpt``): a frozen backbone loaded from any ``--init`` spec (a biovfm
  run or export, a DINOv2 ``.pth``, a timm folder), on the first step.

The snapshot is a submodule, so checkpoints hold it and a resumed run anchors to the
same features; whether it has been taken is its extra state, for the same reason. Refreshes
are a function of the step (as DINOv3 recounts them at start-up), not a counter.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biovfm_core.errors import ConfigError
from biovfm_core.frozen_weights import load_backbone_weights
from biovfm_core.protocols import Backbone

SOURCES = ("ema", "snapshot")


class GramTeacher(nn.Module):
    """A frozen backbone whose patch features anchor the student's (or the EMA teacher)."""

    def __init__(
        self,
        teacher_backbone: Backbone,
        *,
        source: str,
        load_step: int,
        update_frequency: int,
        first_update: int,
        max_updates: int | None,
        crop_size: int | None,
    ) -> None:
        super().__init__()
        self.source = source
        self.load_step = load_step
        self.update_frequency = update_frequency
        self.first_update = first_update
        self.max_updates = max_updates
        self.crop_size = crop_size
        self.uses_ema = source == "ema"
        self.backbone: nn.Module | None = None
        if not self.uses_ema:
            self.backbone = copy.deepcopy(teacher_backbone)
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.ready = self.uses_ema

    # Whether the snapshot exists is checkpointed with it (``gram_teacher._extra_state``)
    # but read as a Python bool, so that no step synchronises with the device for it
    # and the preflight's meta-device step can branch on it.
    def get_extra_state(self) -> Tensor:
        return torch.tensor(self.ready)

    def set_extra_state(self, state: Tensor) -> None:
        self.ready = bool(state)

    def train(self, mode: bool = True) -> GramTeacher:
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # no dropout / drop-path in a teacher
        return self

    @property
    def from_path(self) -> bool:
        return self.source not in SOURCES

    @torch.no_grad()
    def before_step(self, step: int, teacher_backbone: nn.Module) -> None:
        """Take the snapshot or load the checkpoint, once, before the step that needs it."""
        if self.ready:
            return
        if self.from_path:
            self._load(self.source)
            self.ready = True
        elif step >= self.load_step:
            self.backbone.load_state_dict(teacher_backbone.state_dict())
            self.ready = True

    @torch.no_grad()
    def after_step(self, step: int, teacher_backbone: nn.Module) -> bool:
        """Refresh from the EMA teacher after step ``step`` (0-based) when the schedule says.

        DINOv3 (train.py lines 535-544) refreshes after iteration ``it`` when
        ``it + 1 >= it_first_update`` and ``(it + 1) % update_frequency == 0``, while fewer
        than ``max_updates`` refreshes were made.
        """
        if self.uses_ema or self.update_frequency <= 0:
            return False
        done = step + 1
        if done < self.first_update or done % self.update_frequency:
            return False
        if self.max_updates is not None and self.refreshes_before(done) >= self.max_updates:
            return False
        self.backbone.load_state_dict(teacher_backbone.state_dict())
        self.ready = True
        return True

    def refreshes_before(self, done: int) -> int:
        """Refreshes made after steps 1..done-1: the multiples of the frequency from
        ``first_update`` on, at most ``max_updates``."""
        f = self.update_frequency
        first_multiple = -(-max(self.first_update, 1) // f) * f
        last = done - 1
        due = 0 if last < first_multiple else (last - first_multiple) // f + 1
        return due if self.max_updates is None else min(due, self.max_updates)

    def _load(self, spec: str) -> None:
        load_backbone_weights(self.backbone, spec, what="objective.gram_teacher")

    @torch.no_grad()
    def patch_features(self, images: Tensor, student_grid: tuple[int, int]) -> Tensor:
        """The Gram teacher's patch features of ``images``, on the student's patch grid.

        With ``crop_size`` the teacher sees the crops resampled to that size (bicubic);
        its feature map is then resized back to the student's grid as DINOv3 does it
        (ssl_meta_arch.py lines 493-510: bicubic, align_corners False, no antialias,
        ``gram.global_teacher_resize_method`` / ``_antialias`` defaults)."""
        if self.crop_size and images.shape[-1] != self.crop_size:
            images = F.interpolate(
                images, size=(self.crop_size, self.crop_size), mode="bicubic", align_corners=False
            )
        patches = self.backbone.forward_tokens(images).patches
        p = self.backbone.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        if grid != tuple(student_grid):
            fmap = patches.transpose(1, 2).unflatten(-1, grid)
            fmap = F.interpolate(
                fmap.float(), size=student_grid, mode="bicubic", align_corners=False
            )
            patches = fmap.flatten(2).transpose(1, 2)
        return patches


def check_gram_options(
    *,
    weight: float,
    source: str,
    tokens: str,
    img_level: bool,
    crop_size: int | None,
    update_frequency: int,
    patch_size: int,
) -> None:
    """DINOv3's own consistency checks (ssl_meta_arch.py lines 218-251), as ConfigErrors."""
    if weight < 0:
        raise ConfigError(f"dinov2: gram_loss_weight must be >= 0, got {weight}")
    if tokens not in ("all", "masked", "unmasked"):
        raise ConfigError(f"dinov2: gram_tokens must be all, masked or unmasked, got {tokens!r}")
    if tokens != "all" and img_level:
        raise ConfigError(
            "dinov2: gram_tokens masked/unmasked needs gram_img_level=false "
            "(the selected patches form one batch-level Gram matrix)"
        )
    if source == "ema" and (crop_size or update_frequency > 0):
        raise ConfigError(
            "dinov2: gram_teacher=ema uses the EMA teacher's own features; "
            "gram_crop_size and gram_update_frequency need gram_teacher=snapshot or a path"
        )
    if crop_size is not None and (crop_size <= 0 or crop_size % patch_size):
        raise ConfigError(
            f"dinov2: gram_crop_size {crop_size} must be a positive multiple of the patch "
            f"size {patch_size}"
        )
