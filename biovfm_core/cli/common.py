"""Options and config resolution shared by the commands that start work."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

from biovfm_core.config import RunConfig


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--config``, ``--set`` and ``--opt``: the generic way to reach every field."""
    decorators = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            help="Run config YAML; flags given here override it.",
        ),
        click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override any config field, e.g. --set optim.lr=1e-3 (repeatable).",
        ),
        click.option(
            "--opt",
            "opts",
            multiple=True,
            metavar="KIND.KEY=VALUE",
            help="Plugin option, e.g. --opt objective.teacher_temp=0.07 (repeatable).",
        ),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def resolve_config(
    config_path: str | None,
    sets: tuple[str, ...],
    opts: tuple[str, ...],
    named: Mapping[str, Any],
) -> RunConfig:
    """Defaults < YAML file < --set < named flags (those not left at None) < --opt."""
    config = RunConfig.from_yaml(config_path) if config_path else RunConfig()
    config.apply_sets(list(sets))
    for key, value in named.items():
        if value is None or value == ():
            continue
        config.set(key, list(value) if isinstance(value, tuple) else value, source="--" + key)
    config.apply_opts(list(opts))
    return config
