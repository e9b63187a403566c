"""Supervised objective plugin; lazy factory string keeps plugin listing free of torch."""

from __future__ import annotations

from biovfm_core import hookimpl
from biovfm_core.hookspecs import Register


@hookimpl
def biovfm_register_objectives(register: Register) -> None:
    register(
        "supervised",
        "biovfm_supervised.objective:build_supervised",
        description="classification head on the backbone; cross-entropy or multi-label BCE",
        presets={"cpu": {"image_size": 64}},
    )
