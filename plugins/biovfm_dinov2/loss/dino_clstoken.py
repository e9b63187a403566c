"""DINO's CLS-token self-distillation loss over multi-crop views.

With teacher targets ``p_t^(j)`` for the global views ``j`` and student logits
``z_s^(i)`` for all views ``i`` (global views first, so student view ``i < n_global``
is the same crop as teacher view ``i``)::

    L_DINO = 1/|P| * sum_{(i, j) in P} 1/B * sum_b H(p_t^(j)_b, softmax(z_s^(i)_b / tau_s))

where ``H(p, q) = -sum_k p_k log q_k`` and ``P`` holds every (student view, teacher
view) pair except a crop with itself. With 2 global and 8 local crops ``|P| = 2 + 16``,
the normalisation DINOv2 uses.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DINOClsTokenLoss(nn.Module):
    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(self, student_logits: list[Tensor], teacher_targets: list[Tensor]) -> Tensor:
        """``student_logits``: one ``(B, K)`` per view, globals first;
        ``teacher_targets``: one ``(B, K)`` distribution per global view."""
        total = student_logits[0].new_zeros((), dtype=student_logits[0].dtype).float()
        n_pairs = 0
        for i, logits in enumerate(student_logits):
            log_q = F.log_softmax(logits.float() / self.student_temp, dim=-1)
            for j, target in enumerate(teacher_targets):
                if i == j:
                    continue
                total = total - (target * log_q).sum(dim=-1).mean()
                n_pairs += 1
        if n_pairs == 0:
            raise ValueError(
                "DINO loss needs a pair of different crops: got "
                f"{len(student_logits)} student and {len(teacher_targets)} teacher view(s)"
            )
        return total / n_pairs
