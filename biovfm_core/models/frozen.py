"""A model an objective learns from but never trains: a distillation teacher.

``specs.frozen_loader(registry)`` is the ``TaskInfo.load_model`` the engine, preflight
and conformance kit hand to objectives: any model spec ``biovfm eval`` takes (run,
export, DINOv2 hub ``.pth``, timm/HF folder, ``random:NAME``) becomes a ``FrozenTeacher``.

The teacher is kept outside the objective's module tree on purpose: registered as a
sub-module it would enter the optimizer's parameter scan, the checkpoint (a ViT-g's
4.4 GB in every student checkpoint), FSDP's sharding and every EMA ``deepcopy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class FrozenTeacher:
    """``protocols.FrozenModel``: eval mode, no gradients, shared by deep copies."""

    def __init__(
        self,
        spec: str,
        identity: str,
        backbone: nn.Module,
        heads: Mapping[str, nn.Module] | None = None,
        input_norm: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.identity = identity
        self.backbone = backbone
        self.heads = dict(heads or {})
        # What the teacher was trained on; the teacher sees the run's views as its
        # recipe normalises them (docs/distillation.md, "Inputs").
        self.input_norm = dict(input_norm) if input_norm else None
        for module in (backbone, *self.heads.values()):
            module.eval()
            module.requires_grad_(False)

    def to(self, device: Any) -> FrozenTeacher:
        for module in (self.backbone, *self.heads.values()):
            module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    # A copy of the objective (an EMA, a twin in the conformance kit) shares the teacher:
    # it is read-only, and copying a ViT-g per copy would double the memory.
    def __deepcopy__(self, memo: dict) -> FrozenTeacher:
        return self

    def __repr__(self) -> str:
        heads = f", heads {sorted(self.heads)}" if self.heads else ""
        return f"FrozenTeacher({self.spec!r}, identity {self.identity}{heads})"


def teacher_heads(objective: Any) -> dict[str, nn.Module]:
    """The modules a self-distillation objective keeps beside its eval backbone in its
    ``teacher`` ModuleDict (DINOv2's ``dino_head`` and ``ibot_head``)."""
    teacher = getattr(objective, "teacher", None)
    if not isinstance(teacher, nn.ModuleDict):
        return {}
    return {name: module for name, module in teacher.items() if name != "backbone"}
