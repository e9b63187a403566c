"""Sinkhorn-Knopp teacher targets (SwAV; DINOv2's ``centering: sinkhorn_knopp``).

Instead of subtracting a running mean, the teacher's scores ``exp(z / tau_t)`` over a
batch of ``B`` samples and ``K`` prototypes are alternately rescaled so that every
prototype receives the same total mass ``1/K`` and every sample the mass ``1/B``
(an approximate equipartition, i.e. a transport plan between samples and prototypes).
The last step is a sample normalisation, so each returned row is a distribution over
prototypes that sums to exactly 1; prototype marginals are ``B/K`` up to the error of
the finite number of iterations (DINOv2 uses 3).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(t: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    if _distributed():
        dist.all_reduce(t, op=op)
    return t


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
) -> Tensor:
    """Teacher targets ``(B, K)`` from logits ``(B, K)``; each row sums to 1.

    Across processes the marginals are global: ``B`` is the batch summed over ranks,
    and row/column sums are all-reduced, so the result equals the one-process result
    on the concatenated batch.
    """
    scores = teacher_logits.float() / teacher_temp
    # A global shift cancels in the first normalisation and keeps exp() finite; it
    # must be the same on every rank for that to hold.
    shift = _all_reduce(scores.max().clone(), op=dist.ReduceOp.MAX)
    q = torch.exp(scores - shift).t()  # (K, B): prototypes x samples
    num_prototypes = q.shape[0]
    num_samples = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device))

    # A prototype whose scores all underflow (far from every sample at a low
    # temperature) has zero mass; clamping keeps it at zero instead of 0/0 = NaN.
    tiny = torch.finfo(q.dtype).tiny
    q /= _all_reduce(q.sum())
    for _ in range(n_iterations):
        # Each prototype (row) gets total mass 1/K ...
        q /= _all_reduce(q.sum(dim=1, keepdim=True)).clamp_min(tiny)
        q /= num_prototypes
        # ... then each sample (column) gets mass 1/B.
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)
        q /= num_samples
    # Rescale columns from mass 1/B to probability distributions.
    q *= num_samples
    return q.t()
