"""Checkpoints as training uses them: which one to resume, what goes in one, and
which ones are known good.

The file format lives in :mod:`biovfm_core.models.checkpoint`; this module decides
what the trainer's state looks like inside it (model, optimizer, scaler, random
streams, data position) and how it gets back, whole or sharded under FSDP.
A run that diverges should be resumed from a checkpoint written while it was still
healthy, so each checkpoint is confirmed once the loss stayed finite after it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
import torch.distributed as dist

from biovfm_core.config import TrainConfig
from biovfm_core.data.order import check_order
from biovfm_core.errors import BiovfmError, ConfigError
from biovfm_core.models import checkpoint as ckpt
from biovfm_core.train import distributed as D
from biovfm_core.train import run_state

# A checkpoint counts as good once the loss stayed finite this many steps after it
# (at most until the next checkpoint): weights can explode a step before the loss
# turns NaN, so the newest checkpoint before a divergence may already be poisoned.
CONFIRM_STEPS = 10


class TrainingDiverged(BiovfmError):
    """The loss became NaN or infinite; the run stopped before corrupting its state."""


class Resumed(NamedTuple):
    path: Path
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]


class Restored(NamedTuple):
    """Where the loop carries on after a resume."""

    step: int
    epoch: int
    batch_in_epoch: int
    bad_images: int


class Trained(Protocol):
    """What a checkpoint saves and restores of what set-up built."""

    model: torch.nn.Module  # the objective as wrapped for DDP/FSDP
    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    identity: run_state.Identity


def pick_resume(resume: str | None, say: Callable[[str], None]) -> Resumed | None:
    """The checkpoint to resume, loaded; a corrupt newest one is passed over."""
    if not resume:
        return None
    candidates = ckpt.resume_candidates(Path(resume))
    if not candidates:
        raise ConfigError(f"--resume {resume}: no checkpoint found there")
    for i, path in enumerate(candidates):
        try:
            weights, state = ckpt.load_checkpoint(path)
        except ckpt.CheckpointError as exc:
            if i == len(candidates) - 1:
                raise
            say(f"warning: skipping unusable checkpoint: {exc}; trying an older one")
            continue
        return Resumed(path, weights, state)
    raise AssertionError("unreachable")


class RunCheckpoints:
    """The checkpoints of one run folder, as this process writes and reads them.

    Collective: :meth:`save` and :meth:`full_model_state` run on every rank; only
    rank 0 writes files.
    """

    def __init__(
        self,
        run_dir: Path,
        rt: D.Runtime,
        train: TrainConfig,
        *,
        sharded: bool,
        say: Callable[[str], None],
    ) -> None:
        self.run_dir = run_dir
        self.rt = rt
        self.train = train
        self.sharded = sharded
        self.say = say
        self.unconfirmed: tuple[Path, int] | None = None  # (checkpoint, its step)

    @property
    def optimizer_layout(self) -> str:
        return "fsdp_full" if self.sharded else "torch"

    def full_model_state(self, model, objective) -> dict[str, torch.Tensor]:
        """The objective's whole state on rank 0 (gathered from shards under FSDP)."""
        if not self.sharded:
            return objective.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return {k.removeprefix("objective."): v for k, v in full.items()}

    def save(
        self,
        step: int,
        p: Trained,
        position: list[int],
        bad_images: int,
        data_order: dict,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write the checkpoint of ``step``; ``position`` is (epoch, batch in it);
        ``extra`` entries join its state (the sentinel watch's)."""
        rt = self.rt
        rngs = [run_state.rng_state()]
        if rt.distributed:
            rngs = [None] * rt.world_size
            dist.all_gather_object(rngs, run_state.rng_state())
        model_state = self.full_model_state(p.model, p.objective)
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            optimizer_state = get_optimizer_state_dict(
                p.model,
                p.optimizer,
                options=StateDictOptions(full_state_dict=True, cpu_offload=True),
            )
        else:
            optimizer_state = p.optimizer.state_dict()
        if rt.is_main:
            bad = ckpt.nonfinite_keys(model_state)
            if bad:
                raise TrainingDiverged(
                    f"weights are not finite after step {step} ({len(bad)} tensors, first: "
                    f"{', '.join(bad[:3])}); no checkpoint written. {self.last_good_text()}"
                )
            state = {
                "step": step,
                "epoch": position[0],
                "batch_in_epoch": position[1],
                "bad_images": bad_images,
                "optimizer_layout": self.optimizer_layout,
                "optimizer": optimizer_state,
                "scaler": p.scaler.state_dict() if p.scaler else {},
                "rng": rngs,
                "identity": p.identity.to_dict(),
                "world_size": rt.world_size,
                "data_order": data_order,
                **(extra or {}),
            }
            written = ckpt.save_checkpoint(
                self.run_dir,
                step,
                model_state,
                state,
                keep_last=self.train.keep_last,
                protect=ckpt.last_confirmed(self.run_dir),
            )
            self.unconfirmed = (written, step)
        rt.barrier()

    def restore(self, resumed: Resumed, p: Trained, data_order: dict) -> Restored:
        """Load ``resumed`` into ``p`` after checking it belongs to this run."""
        path, weights, state = resumed
        rt = self.rt
        run_state.check_identity(path, state["identity"], p.identity)
        worlds = (int(state.get("world_size", rt.world_size)), rt.world_size)
        held_order, at = state.get("data_order"), int(state["batch_in_epoch"])
        note = check_order(path, held_order, data_order, at, worlds)
        if note:
            self.say(f"warning: {note}")
        layout = self.optimizer_layout
        if state.get("optimizer_layout", "torch") != layout:
            raise ConfigError(
                f"checkpoint {path} was written with train.distributed="
                f"{'fsdp' if layout == 'torch' else 'ddp'}; resume it with the same setting"
            )
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            set_model_state_dict(
                p.model,
                {f"objective.{k}": v for k, v in weights.items()},
                options=StateDictOptions(full_state_dict=True),
            )
            # Parameters that never got a gradient yet (DINOv2's last layer during its
            # frozen first epoch) have no AdamW state to restore; that is expected.
            set_optimizer_state_dict(
                p.model,
                p.optimizer,
                state["optimizer"],
                options=StateDictOptions(full_state_dict=True, strict=False),
            )
        else:
            check_fits(path, p.objective.state_dict(), weights)
            p.objective.load_state_dict(weights)
            p.optimizer.load_state_dict(state["optimizer"])
        if p.scaler and state.get("scaler"):
            p.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) == rt.world_size:
            run_state.set_rng_state(rngs[rt.rank])
        else:
            torch.manual_seed(self.train.seed + rt.rank + state["step"])
            self.say(
                f"warning: checkpoint was written by {len(rngs)} processes, this run has "
                f"{rt.world_size}; random streams restart (data order is kept)"
            )
        if rt.is_main and not ckpt.is_confirmed(path):
            self.unconfirmed = (path, int(state["step"]))
        self.say(f"resumed from {path} at step {state['step']}")
        return Restored(
            int(state["step"]),
            int(state["epoch"]),
            int(state["batch_in_epoch"]),
            int(state.get("bad_images", 0)),
        )

    def set_aside_newer(self, resumed: Resumed) -> None:
        """Resuming an older checkpoint: newer ones move to RUN/set_aside/, out of the way.

        They belong to the abandoned continuation (often a diverged one); left in
        checkpoints/ they would be taken for this run's newest and pruned against it.
        """
        path, _, state = resumed
        newer = [c for c in ckpt.list_checkpoints(self.run_dir) if _step_of(c) > state["step"]]
        if not newer:
            return
        aside = self.run_dir / "set_aside"
        aside.mkdir(exist_ok=True)
        for folder in newer:
            target = aside / folder.name
            if target.exists():
                target = aside / f"{folder.name}-{int(time.time())}"
            os.replace(folder, target)
        self.say(
            f"resuming {path.name}: the {len(newer)} newer checkpoints "
            f"({', '.join(c.name for c in newer)}) were moved to {aside}"
        )

    def confirm(self, step: int) -> None:
        """Mark the newest checkpoint good once the loss stayed finite long enough after it."""
        if self.unconfirmed is None or not self.rt.is_main:
            return
        path, written = self.unconfirmed
        wanted = min(CONFIRM_STEPS, self.train.checkpoint_every)
        if step - written >= wanted and path.is_dir():
            ckpt.confirm(path, finite_steps_after=step - written, through_step=step)
            self.unconfirmed = None

    def last_good_text(
        self,
        what: str = "the loss stayed finite",
        advice: str = "perhaps with a lower optim.lr",
        event: str = "the divergence",
        risk: str = "exploding weights",
    ) -> str:
        """Which checkpoint to resume after a divergence (or a collapse), and why that one."""
        good = ckpt.last_confirmed(self.run_dir)
        newest = ckpt.latest_checkpoint(self.run_dir)
        text = (
            f"Last good checkpoint: {good} ({what} for the steps after it); "
            f"resume it with --resume {good}, {advice}"
            if good is not None
            else "No checkpoint of this run is confirmed good yet"
        )
        if newest is not None and newest != good:
            text += (
                f". The newer {newest.name} was written shortly before {event} and may hold {risk}"
            )
        return text


def check_fits(path: Path, expected: dict[str, torch.Tensor], weights: dict) -> None:
    """Refuse weights whose names or shapes differ from the model's, saying how."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = ckpt.shape_mismatches({k: v.shape for k, v in expected.items()}, weights)
    if not (missing or unexpected or shapes):
        return
    parts = []
    if shapes:
        parts.append(
            f"{len(shapes)} tensors differ in shape, first "
            + ", ".join(f"{k} {list(a)} (model {list(b)})" for k, a, b in shapes[:3])
        )
    if missing:
        parts.append(f"missing {missing[:5]}")
    if unexpected:
        parts.append(f"unexpected {unexpected[:5]}")
    stored = ckpt.describe_stored_vit(weights)
    hint = f"; the stored shapes fit a backbone with {stored}" if stored else ""
    raise ckpt.CheckpointError(
        f"checkpoint {path / 'model.safetensors'} does not fit this model: {'; '.join(parts)}{hint}"
    )


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))
