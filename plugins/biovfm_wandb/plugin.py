"""Registers ``wandb``; the factory string keeps `biovfm plugins` free of wandb."""

from __future__ import annotations

from biovfm_core import hookimpl
from biovfm_core.hookspecs import Register


@hookimpl
def biovfm_register_loggers(register: Register) -> None:
    register(
        "wandb",
        "biovfm_wandb.logger:WandbLogger",
        description="Weights & Biases runs, online or offline (WANDB_MODE=offline); "
        "extra: biovfm[wandb]",
    )
