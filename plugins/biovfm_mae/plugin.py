"""MAE objective plugin; lazy factory string keeps plugin listing free of torch."""

from __future__ import annotations

from biovfm_core import hookimpl
from biovfm_core.hookspecs import Register


@hookimpl
def biovfm_register_objectives(register: Register) -> None:
    register(
        "mae",
        "biovfm_mae.objective:build_mae",
        description="masked autoencoder: 75% patches dropped, ViT decoder, norm-pix loss",
        presets={
            "cpu": {"image_size": 64, "decoder_depth": 2, "decoder_dim": 128, "decoder_heads": 4}
        },
    )
