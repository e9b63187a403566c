"""Distillation objective plugin; the factory is a lazy string so listing plugins stays cheap.

Registered through the ``biovfm`` entry-point group in pyproject.toml, exactly as a
third party's plugin would be.
"""

from __future__ import annotations

from biovfm_core import hookimpl
from biovfm_core.hookspecs import Register


@hookimpl
def biovfm_register_objectives(register: Register) -> None:
    register(
        "distill",
        "biovfm_distill.objective:build_distill",
        description="distillation from a frozen teacher (objective.teacher=RUN|export|"
        ".pth|folder): DINO CLS + iBOT patches against the teacher's heads, or "
        "projected-feature regression for a teacher without heads",
        presets={
            # As the dinov2 objective's CPU preset: small heads and crops.
            "cpu": {
                "head_hidden_dim": 512,
                "local_crops": 4,
                "global_size": 64,
                "local_size": 32,
            },
        },
    )
