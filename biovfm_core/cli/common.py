"""Options and config resolution shared by the commands that start work."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from biovfm_core.config import RunConfig
from biovfm_core.errors import ConfigError


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
            help="Plugin option, e.g. --opt objective.teacher_temp=0.07 (repeatable); "
            "dataset.KEY=VALUE goes to the reader of every --data source.",
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
    *,
    resume_from_run: bool = False,
) -> RunConfig:
    """Defaults < YAML file < --set < named flags (those not left at None) < --opt.

    With ``resume_from_run`` and ``--resume RUN`` but no ``--config``, the run's own
    saved config is the starting point, so ``biovfm train --resume RUN`` continues
    the same run and flags such as ``--max-steps`` extend it.
    """
    resume = named.get("resume")
    if config_path:
        config = RunConfig.from_yaml(config_path)
    elif resume_from_run and resume and resume != "auto":
        config = RunConfig.from_yaml(_saved_config(Path(resume)))
    else:
        config = RunConfig()
    config.apply_sets(list(sets))
    for key, value in named.items():
        if value is None or value == ():
            continue
        config.set(key, list(value) if isinstance(value, tuple) else value, source="--" + key)
    config.apply_opts(list(opts))
    return config


def _saved_config(path: Path) -> Path:
    # RUN/config.yaml, or RUN/checkpoints/step_N/ -> RUN/config.yaml
    for candidate in (path / "config.yaml", path.parent.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"--resume {path}: no config.yaml of a biovfm run found there")


def _shard_note(folder: str) -> str:
    """A local shard set's manifest, read without touching its index or chunks."""
    from biovfm_core.data.catalog import is_url
    from biovfm_core.data.shards.format import read_manifest

    if is_url(folder):  # a dry run downloads nothing; training fetches the metadata
        return "  [a URL: its manifest is read when training starts]"

    try:
        m = read_manifest(folder)
    except ConfigError as exc:
        return f"  [{exc}]"
    return f"  [shard set: {m.images} images, {m.encoding}]"


def check_data(config: RunConfig, registry: Any) -> list[str]:
    """What ``--dry-run`` can check of ``--data`` without scanning: each source's reader
    is registered and imports, and its options (``?key=value``, catalog ``options:``
    and ``--opt dataset.KEY=VALUE``) are ones it accepts; the augmentation recipes
    the sources may use import. Returns one comment line per source."""
    from biovfm_core.data.catalog import resolve_data
    from biovfm_core.protocols import MODALITIES

    sources, _ = resolve_data(
        config.data.sources, check_paths=False, options=config.options["dataset"]
    )
    lines = []
    modalities: set[str] = set()
    for spec in sources:
        registration, _ = registry.get("datasets", spec.reader)
        try:
            checked = registry.validate("datasets", spec.reader, spec.options)
        except ConfigError as exc:
            raise ConfigError(f"{spec.where}: {exc}") from exc
        shown = ", ".join(f"{k}={v!r}" for k, v in checked.items())
        lines.append(
            f"# data: {spec.name} = {spec.reader}:{spec.path} (plugin {registration.plugin})"
            + (f" {shown}" if shown else "")
            + ("" if spec.exists else "  [path does not exist]")
            + (_shard_note(spec.path) if spec.reader == "shards" and spec.exists else "")
        )
        modalities.update(MODALITIES if spec.modality == "auto" else spec.modality.split(","))
    if config.augmentation == "auto":
        for name in registry.names("augmentations"):
            if name == "default" or name in modalities:
                registry.options("augmentations", name)  # imports the recipe's factory
    return lines
