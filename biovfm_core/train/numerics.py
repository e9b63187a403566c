"""The few numbers a step and a run's end compute over all parameters or all ranks.

Each costs at most one collective and one host sync: on a GPU a sync per logged
value would stall the device every step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from biovfm_core.train import distributed as D


def mean_over_ranks(parts: dict[str, torch.Tensor], rt: D.Runtime) -> dict[str, float]:
    """Mean over ranks of each logged value, in one collective and one sync."""
    keys = sorted(parts)
    stacked = torch.stack([parts[k].reshape(()) for k in keys])
    if rt.distributed:
        dist.all_reduce(stacked)
        stacked /= rt.world_size
    return dict(zip(keys, stacked.tolist(), strict=True))


def clip_gradients(
    objective: torch.nn.Module, max_norm: float | None, device: torch.device
) -> torch.Tensor:
    """The total gradient norm (a device tensor: no sync), clipped to ``max_norm``."""
    params = [p for p in objective.parameters() if p.grad is not None]
    if not params:
        return torch.zeros((), device=device)
    limit = max_norm if max_norm is not None else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    # Under FSDP the norm of sharded gradients is a DTensor; make it a plain one.
    full = getattr(norm, "full_tensor", None)
    return (full() if full is not None else norm).float()


def weights_checksum(state: dict[str, torch.Tensor]) -> float:
    """A sum over all floating-point weights: equal on every rank that stayed in step."""
    with torch.no_grad():
        return float(sum(t.double().sum() for t in state.values() if t.is_floating_point()))
