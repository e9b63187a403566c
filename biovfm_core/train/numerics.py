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


def clip_groups(objective: torch.nn.Module, mode: str) -> list[list[torch.nn.Parameter]]:
    """The parameter lists clipped each on their own under ``optim.clip_mode=mode``.

    ``per_module`` takes the objective's ``clip_groups()`` (name -> module) and puts
    the parameters in none of them in one more group; without that method, or with
    ``global``, there is one group of everything.
    """
    everything = list(objective.parameters())
    named = getattr(objective, "clip_groups", None)
    if mode == "global" or not callable(named):
        return [everything]
    groups: list[list[torch.nn.Parameter]] = []
    seen: set[int] = set()
    for module in dict(named()).values():
        params = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        groups.append(params)
    rest = [p for p in everything if id(p) not in seen]
    return [*groups, rest] if rest else groups


def clip_gradients(
    objective: torch.nn.Module,
    max_norm: float | None,
    device: torch.device,
    mode: str = "per_module",
) -> torch.Tensor:
    """The total gradient norm before clipping (a device tensor: no sync); each group
    of ``clip_groups(objective, mode)`` clipped to ``max_norm`` on its own.

    DINOv2 clips every student module separately (dinov2/train/train.py do_train:
    ``for v in model.student.values(): v.clip_grad_norm_(cfg.optim.clip_grad)``), so
    the heads' large gradients do not shrink the backbone's step.
    """
    limit = max_norm if max_norm is not None else float("inf")
    norms = []
    for group in clip_groups(objective, mode):
        params = [p for p in group if p.grad is not None]
        if params:
            norm = torch.nn.utils.clip_grad_norm_(params, limit)
            # Under FSDP the norm of sharded gradients is a DTensor; make it a plain one.
            full = getattr(norm, "full_tensor", None)
            norms.append((full() if full is not None else norm).float())
    if not norms:
        return torch.zeros((), device=device)
    if len(norms) == 1:
        return norms[0]
    return torch.linalg.vector_norm(torch.stack(norms))


def weights_checksum(state: dict[str, torch.Tensor]) -> float:
    """A sum over all floating-point weights: equal on every rank that stayed in step."""
    with torch.no_grad():
        return float(sum(t.double().sum() for t in state.values() if t.is_floating_point()))
