"""Turning teacher logits into targets: running-mean centering or Sinkhorn-Knopp."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models.modules.center import Center
from torch import Tensor, nn

from biovfm_dinov2.sinkhorn import sinkhorn_knopp

CENTERINGS = ("sinkhorn_knopp", "centering")


class TeacherTargets(nn.Module):
    """``p_t = softmax((z_t - c) / tau_t)`` with ``c`` an EMA of batch means (DINO),
    or ``p_t = SinkhornKnopp(z_t / tau_t)`` (DINOv2 / SwAV).

    The running center is a buffer, so it is saved with the objective's state.
    It is kept (at zero) in Sinkhorn mode too, so checkpoints of both modes have the
    same keys.
    """

    def __init__(
        self,
        prototypes: int,
        centering: str = "sinkhorn_knopp",
        center_momentum: float = 0.9,
        sinkhorn_iterations: int = 3,
    ) -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.center = Center(size=(1, prototypes), momentum=center_momentum)

    @torch.no_grad()
    def forward(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Targets ``(T, K)`` for teacher logits ``(T, K)``; updates the center."""
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, teacher_temp, self.sinkhorn_iterations)
        logits = teacher_logits.float()
        targets = F.softmax((logits - self.center.value) / teacher_temp, dim=-1)
        # The center used for this step is the one from before it, as in DINO.
        self.center.update(logits)
        return targets
