"""Processes, devices and precision: PyTorch's own distributed engine, launched by torchrun.

``torchrun --nproc_per_node 8 -m biovfm_core.cli.main train ...`` sets RANK,
WORLD_SIZE and LOCAL_RANK; without them the run is one process. NCCL on CUDA,
gloo on CPU.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from biovfm_core.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    precision: str  # fp32 | bf16 | fp16

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def start(device: str, precision: str) -> Runtime:
    """Join the process group torchrun describes (if any) and pick device and precision."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = _device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(
            backend,
            timeout=timedelta(minutes=30),
            device_id=resolved if backend == "nccl" else None,
        )
    return Runtime(rank, world_size, local_rank, resolved, _precision(precision, resolved))


def stop(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name!r}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def _precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return precision


class StepModule(nn.Module):
    """Routes ``forward`` to ``objective.training_step`` so DDP sees the step as a forward.

    DDP synchronises gradients only for work done inside its ``forward``; calling
    ``training_step`` on the bare module would silently train each rank alone.
    """

    def __init__(self, objective: nn.Module) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, batch, info):
        return self.objective.training_step(batch, info)


def wrap(objective: nn.Module, runtime: Runtime, strategy: str) -> nn.Module:
    """The module the loop calls: DDP (default) or FSDP around the objective."""
    step = StepModule(objective)
    if not runtime.distributed:
        return step
    if strategy in ("auto", "ddp"):
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        # Objectives may leave a parameter unused in a step (MAE never feeds the
        # backbone's mask token; a separate iBOT head idles when no image is masked),
        # which DDP must be told or it hangs waiting for that gradient. One that says
        # it uses every parameter in every step skips DDP's search for unused ones,
        # and with it DDP's warning that the search found none.
        find_unused = not getattr(objective, "uses_every_parameter", False)
        return nn.parallel.DistributedDataParallel(
            step, device_ids=device_ids, find_unused_parameters=find_unused, **_no_buffer_sync()
        )
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for module in _repeated_blocks(objective):
            fully_shard(module)
        fully_shard(step)
        return step
    raise ConfigError(f"train.distributed must be auto, ddp or fsdp, not {strategy!r}")


def _no_buffer_sync() -> dict[str, bool]:
    """No buffer broadcast before each forward: every rank updates its buffers (the
    DINOv2 centre, all-reduced) identically. torch 2.13 renamed the argument
    (``broadcast_buffers`` warns as deprecated); the new one still syncs buffers once at
    construction, which changes nothing as every rank built or resumed the same state."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def is_sharded(module: nn.Module) -> bool:
    """Whether ``wrap`` sharded the model with FSDP (its state must be gathered)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def no_sync(module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on accumulation micro-steps (DDP only)."""
    if enabled and isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()


def _repeated_blocks(model: nn.Module) -> Iterator[nn.Module]:
    # Transformer blocks live in a `blocks` container in timm and lightly models;
    # they are the units worth sharding, checkpointing and compiling one by one.
    for module in model.modules():
        blocks = getattr(module, "blocks", None)
        if isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            yield from blocks


def for_each_block(model: nn.Module, fn: Callable[[nn.Module], None]) -> int:
    count = 0
    for block in list(_repeated_blocks(model)):
        fn(block)
        count += 1
    return count


def accelerate(
    objective: nn.Module, *, activation_checkpointing: bool, compile_blocks: bool
) -> None:
    """Trade compute for memory (recomputed activations) or start-up for speed (compiled
    blocks), one transformer block at a time: the blocks hold the activations and FLOPs."""
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            apply_activation_checkpointing,
        )

        blocks = {id(b) for b in _repeated_blocks(objective)}
        apply_activation_checkpointing(objective, check_fn=lambda m: id(m) in blocks)
    if compile_blocks:
        # Whole-step compilation would break on data-dependent masking; the
        # transformer blocks carry the FLOPs and compile cleanly one by one.
        for_each_block(objective, lambda block: block.compile())


def all_equal_across_ranks(value: float, runtime: Runtime) -> list[float]:
    """Every rank's ``value`` (e.g. a weight checksum), gathered on all ranks."""
    if not runtime.distributed:
        return [value]
    tensor = torch.tensor([value], dtype=torch.float64, device=runtime.device)
    gathered = [torch.zeros_like(tensor) for _ in range(runtime.world_size)]
    dist.all_gather(gathered, tensor)
    return [float(t.item()) for t in gathered]
