"""iBOT's masked-patch self-distillation loss, weighted as in DINOv2.

For global crop ``m`` with masked patch set ``M_m`` (possibly empty), teacher targets
``p_t`` computed from the *unmasked* crop and student logits ``z_s`` from the masked
crop::

    L_iBOT = 1/M * sum_m 1/|M_m| * sum_{n in M_m} H(p_t[m, n], softmax(z_s[m, n] / tau_s))

``M`` counts all global crops, masked or not, so unmasked images dilute the term
exactly as in DINOv2 (each masked image weighs the same whatever its mask ratio).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class IBOTPatchLoss(nn.Module):
    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(self, student_logits: Tensor, teacher_targets: Tensor, mask: Tensor) -> Tensor:
        """``student_logits``/``teacher_targets``: ``(T, K)`` for the ``T`` masked patches
        in ``mask[mask]`` order; ``mask``: bool ``(M, N)``.

        Pass ``mask`` on the CPU: the per-patch weights are then gathered there, and
        moved, instead of forcing the device to synchronise for boolean indexing.
        """
        n_masked = mask.sum(dim=1, keepdim=True).clamp(min=1).float()
        weight = (1.0 / n_masked).expand_as(mask)[mask].to(student_logits.device)
        log_q = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        per_patch = -(teacher_targets * log_q).sum(dim=-1)
        return (per_patch * weight).sum() / mask.shape[0]
