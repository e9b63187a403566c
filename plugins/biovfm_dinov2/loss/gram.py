"""Gram anchoring (DINOv3, Siméoni et al., 2025, section 4.2), as the official loss has it.

For the student's patch features ``X_S`` and the Gram teacher's ``X_G`` of one image,
both ``(P, D)`` and L2-normalised per patch::

    L_Gram = || X_S X_S^T - X_G X_G^T ||_F^2 / P^2

i.e. the mean squared difference of the two patch-similarity (Gram) matrices. The
student's patch features keep the pairwise similarities of an earlier, cleaner
teacher, while their values are free to move; that is what stops dense features
from degrading over long training.

Options of the official ``GramLoss`` (dinov3/loss/gram_loss.py, lines 14-20 and 34):

- ``normalized`` (``apply_norm``, default true): L2-normalise each patch first, so
  the Gram matrix holds cosine similarities;
- ``img_level`` (true in dinov3_vit7b16_gram_anchor.yaml line 58): one Gram matrix per
  image, mean over images; false: one Gram matrix over every patch of the batch
  (``(B*P, B*P)``);
- ``remove_neg``: clamp negative similarities of both matrices to 0 first.

The official ``remove_only_teacher_neg`` zeroes the teacher's negative entries and
then the student's where the (already clamped) teacher is negative, which never
happens, so it equals clamping the teacher alone; we offer only ``remove_neg``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gram_matrix(features: Tensor, *, normalized: bool) -> Tensor:
    """``X X^T`` over the last two dimensions, in float32 (after L2 norm if asked)."""
    x = features.float()
    if normalized:
        x = F.normalize(x, dim=-1)
    return x @ x.transpose(-1, -2)


def gram_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    normalized: bool = True,
    img_level: bool = True,
    remove_neg: bool = False,
) -> Tensor:
    """Mean squared difference of the student's and the teacher's Gram matrices.

    ``student`` and ``teacher``: ``(B, P, D)`` patch features of the same images (or
    ``(N, D)`` selected patches, with ``img_level=False``). The teacher gets no
    gradient.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"gram loss: student features {tuple(student.shape)} and teacher features "
            f"{tuple(teacher.shape)} differ in shape"
        )
    if img_level and student.dim() != 3:
        raise ValueError("gram loss: img_level needs (B, P, D) features")
    teacher = teacher.detach()
    if not img_level and student.dim() == 3:
        student, teacher = student.flatten(0, 1), teacher.flatten(0, 1)
    # float32 throughout, as the official loss casts (gram_loss.py line 50): under bf16
    # autocast the similarities would lose the small differences the loss is about.
    # The preflight's meta device has no autocast to turn off.
    device_type = "cpu" if student.device.type == "meta" else student.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        g_student = gram_matrix(student, normalized=normalized)
        g_teacher = gram_matrix(teacher, normalized=normalized)
        if remove_neg:
            g_student = g_student.clamp(min=0.0)
            g_teacher = g_teacher.clamp(min=0.0)
        return (g_student - g_teacher).pow(2).mean()
