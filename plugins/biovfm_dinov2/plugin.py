"""DINOv2 objective plugin; the factory is a lazy string so listing plugins stays cheap."""

from __future__ import annotations

from biovfm_core import hookimpl
from biovfm_core.hookspecs import Register


@hookimpl
def biovfm_register_objectives(register: Register) -> None:
    register(
        "dinov2",
        "biovfm_dinov2.objective:build_dinov2",
        description="DINOv2: DINO CLS + iBOT masked-patch + KoLeo, EMA teacher, "
        "Sinkhorn-Knopp or running-mean centering",
        # The 65,536-prototype head alone takes seconds per step on a CPU.
        presets={
            "cpu": {
                "prototypes": 1024,
                "head_hidden_dim": 512,
                "local_crops": 4,
                "global_size": 64,
                "local_size": 32,
            }
        },
    )
