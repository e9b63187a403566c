"""The smallest DINOv2 run config the loop tests share: ViT-Ti, 32-px crops, no local
crops, small heads, no loader workers. Each test passes only what it is about."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from biovfm_core.config import RunConfig

TINY_DINOV2 = {
    "train.batch_size": 4,
    "data.num_workers": 0,
    "options.objective.prototypes": 128,
    "options.objective.head_hidden_dim": 64,
    "options.objective.head_bottleneck_dim": 32,
    "options.objective.local_crops": 0,
    "options.objective.global_size": 32,
}


def tiny_dinov2(output: Path, name: str, **sets: Any) -> RunConfig:
    """A DINOv2 ViT-Ti run ``name`` under ``output`` with ``TINY_DINOV2``, then ``sets``
    (dotted config keys) on top."""
    config = RunConfig(backbone="vit_tiny", output=str(output), name=name)
    for key, value in {**TINY_DINOV2, **sets}.items():
        config.set(key, value)
    return config
