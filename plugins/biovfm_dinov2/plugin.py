"""DINOv2 objective plugin; the factory is a lazy string so listing plugins stays cheap."""

from __future__ import annotations

from biovfm_core import hookimpl
from biovfm_core.hookspecs import Register

# Options of the backbone that belong to DINOv2's recipe (set where the backbone has them).
# pos_interpolation: DINOv2's ViT resizes its position table for the 98 px local crops
# with interpolate_pos_encoding (dinov2/models/vision_transformer.py: bicubic, scale
# factor (n + interpolate_offset 0.1) / N, no antialias), not timm's antialiased resize.
BACKBONE_RECIPE = {
    "drop_path_rate": 0.3,
    "drop_path_uniform": True,
    "layer_scale_init": 1e-5,
    "pos_interpolation": "dinov2",
}


@hookimpl
def biovfm_register_objectives(register: Register) -> None:
    register(
        "dinov2",
        "biovfm_dinov2.objective:build_dinov2",
        description="DINOv2: DINO CLS + iBOT masked-patch + KoLeo, EMA teacher, "
        "Sinkhorn-Knopp or running-mean centering",
        presets={
            # The 65,536-prototype head alone takes seconds per step on a CPU.
            "cpu": {
                "prototypes": 1024,
                "head_hidden_dim": 512,
                "ibot_head_n_prototypes": 1024,
                "ibot_head_hidden_dim": 512,
                "local_crops": 4,
                "global_size": 64,
                "local_size": 32,
            },
            # DINOv2's student: ssl_default_config student.drop_path_rate,
            # student.drop_path_uniform, student.layerscale; vision_transformer.py's
            # interpolate_offset 0.1 and interpolate_antialias False.
            "backbone": dict(BACKBONE_RECIPE),
        },
    )
