"""``biovfm train``: pretrain a backbone with an objective on a dataset."""

from __future__ import annotations

import os

import click

from biovfm_core.cli.common import check_data, config_options, resolve_config
from biovfm_core.config import RunConfig
from biovfm_core.errors import ConfigError
from biovfm_core.recipes import apply_recipe, load
from biovfm_core.train.presets import (
    apply_machine_preset,
    apply_objective_backbone_preset,
    backbone_preset_skipped,
)


@click.command("train")
@click.option(
    "--recipe",
    metavar="NAME",
    help="A named official recipe (biovfm recipes): its values fill every key you do not "
    "set in --config, --set, --opt or a flag.",
)
@click.option("--objective", help="Registered objective (dinov2, mae, supervised, ...).")
@click.option("--backbone", help="Registered backbone (vit_tiny ... vit_giant, timm:<name>).")
@click.option("--augmentation", help="Augmentation recipe, or 'auto' (per modality).")
@click.option(
    "--data",
    multiple=True,
    metavar="CATALOG|KIND:PATH",
    help="Catalog YAML or one source (folder:, dicom:, nifti:, medmnist:), with tags and "
    "reader options after '?': folder:/data/cxr?modality=xray&verify=false; repeatable. "
    "--opt dataset.KEY=VALUE gives a reader option to every source (a source's own "
    "?key=value wins). Omitted: the built-in demo data.",
)
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps.")
@click.option("--epochs", type=int, help="Stop after this many passes over the data.")
@click.option(
    "--batch-size",
    type=int,
    help="GLOBAL batch: images per optimizer step over all GPUs together (DINOv2's "
    "recipe is 2048 = 64 per GPU x 32, MAE's 4096); each GPU gets batch-size / GPUs.",
)
@click.option("--output", help="Folder holding run folders (default: runs).")
@click.option("--name", help="Run folder name.")
@click.option(
    "--resume",
    help="Run folder or checkpoint to continue; 'auto' continues --name if it has a "
    "checkpoint and starts it otherwise (for requeued cluster jobs).",
)
@click.option(
    "--init",
    metavar="SPEC",
    help="Start from published weights: a DINOv2 hub .pth (dinov2_vits14_pretrain.pth), "
    "an MAE .pth (mae_pretrain_vit_base.pth), a timm/Hugging Face folder (config.json + "
    "model.safetensors), a biovfm run or export, or timm:NAME (weights in the cache). "
    "Position embeddings are resized to the backbone's image_size.",
)
@click.option("--device", help="auto, cpu, cuda, cuda:1 ...")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]))
@click.option("--seed", type=int)
@click.option(
    "--logger",
    "loggers",
    multiple=True,
    metavar="NAME",
    help="Experiment logger (csv, tensorboard, mlflow, wandb; biovfm plugins lists them); "
    "repeatable, replaces train.loggers; metrics.csv is always written. Options: "
    "--opt logger.NAME.OPTION=VALUE.",
)
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the step.")
@config_options
@click.option("--dry-run", is_flag=True, help="Resolve and check the config, print it, and stop.")
def train(dry_run: bool, config_path, sets, opts, compile_, **flags) -> None:
    """Pretrain a backbone (DINOv2 on the built-in demo data when no flags are given)."""
    from biovfm_core.registry import get_registry

    named = {
        "recipe": flags["recipe"],
        "objective": flags["objective"],
        "backbone": flags["backbone"],
        "augmentation": flags["augmentation"],
        "data.sources": flags["data"],
        "train.max_steps": flags["max_steps"],
        "train.epochs": flags["epochs"],
        "train.batch_size": flags["batch_size"],
        "output": flags["output"],
        "name": flags["name"],
        "resume": flags["resume"],
        "init": flags["init"],
        "train.device": flags["device"],
        "train.precision": flags["precision"],
        "train.seed": flags["seed"],
        "train.compile": compile_,
        "train.loggers": flags["loggers"],
    }
    config = resolve_config(config_path, sets, opts, named, resume_from_run=True)
    from biovfm_core.train.run_folder import check_resume_names, resolve_auto_resume

    resolve_auto_resume(config)
    if config.resume:
        check_resume_names(config)
    if config.init and not config.resume and not config.init.startswith("timm:"):
        from pathlib import Path

        if not Path(config.init).expanduser().exists():
            # Before any data scan or model build: the commonest --init mistake.
            raise ConfigError(f"--init {config.init}: no such file or folder")
    registry = get_registry()
    device_type = _device_type(config.train.device)
    # Recipe first: the machine preset and the objective's backbone preset fill only
    # what neither the user nor the recipe set.
    from_recipe = {key: entry.value for key, entry in apply_recipe(config).items()}
    from biovfm_core.train.stage_init import inherit_model_options

    inherited = inherit_model_options(config, set(from_recipe))
    applied = apply_machine_preset(config, registry, device_type)
    backbone_preset = apply_objective_backbone_preset(config, registry)
    skipped = backbone_preset_skipped(config, registry)
    if skipped:
        click.echo(f"# {config.objective} recipe not applied: {skipped}", err=not dry_run)
    config.validate(registry)
    for label, filled in (
        (f"recipe {config.recipe}", from_recipe),
        (f"--init run {config.init}", inherited),
        (f"{device_type} preset", applied),
        (f"{config.objective} backbone preset", backbone_preset),
    ):
        if filled:
            click.echo(
                f"# {label} for values not set: "
                + ", ".join(f"{k}={v}" for k, v in filled.items()),
                err=not dry_run,
            )
    if dry_run:
        data_lines = check_data(config, registry)
        for kind in ("objective", "backbone"):
            name = getattr(config, kind)
            registration, _ = registry.get(kind + "s", name)
            click.echo(f"# {kind}: {name} (plugin {registration.plugin})")
            # Every option the factory will get: set, preset, or its default.
            resolved = {k: spec.default for k, spec in registry.options(kind + "s", name).items()}
            resolved.update(registry.validate(kind + "s", name, config.options[kind]))
            click.echo(f"#   {', '.join(f'{k}={v}' for k, v in resolved.items())}")
        from biovfm_core.train.batching import batch_text

        click.echo(f"# loggers: {', '.join(config.loggers_in_use())}")
        world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; 1 without it
        click.echo(f"# {batch_text(config.train.batch_size, world, config.optim.accumulate)}")
        click.echo("\n".join(data_lines))
        if config.augmentation == "auto":
            click.echo(_augmentation_line(config, registry))
        for line in provenance_lines(config):
            click.echo(line)
        from biovfm_core.train.preflight import preflight_report

        for line in preflight_report(config, registry):
            click.echo(line)
        click.echo(config.to_yaml(), nl=False)
        return
    from biovfm_core.train.loop import train as run_training

    monitor_factory = None
    if config.train.monitor:
        from biovfm_core.eval.monitor import build_monitor as monitor_factory
    run_training(config, registry, monitor_factory=monitor_factory)


def _augmentation_line(config, registry) -> str:
    """The recipe ``auto`` gives each modality, and why where it is not the built-in."""
    from biovfm_core.protocols import MODALITIES
    from biovfm_core.train.data import recipe_plan

    plan = recipe_plan(config, registry, list(MODALITIES))
    shown = [
        f"{m}={name}" + ("" if why == "recipe of that name" else f" ({why})")
        for m, (name, why) in plan.items()
    ]
    return "# augmentation auto, by modality (others: default): " + ", ".join(shown)


def provenance_lines(config: RunConfig) -> list[str]:
    """``--dry-run``: each value not at its default and where it came from; then the
    recipe's official values biovfm cannot apply, and why."""
    lines = ["# resolved values and where each came from:"]
    for key in sorted(config.origins):
        lines.append(
            f"#   {key} = {_value_at(config, key)!r}  <- {_origin_label(config.origins[key])}"
        )
    if config.recipe:
        recipe = load(config.recipe)
        for entry in recipe.not_applied.values():
            lines.append(
                f"# not applied: {entry.key}={entry.value!r} ({entry.source}): {entry.why}"
            )
    return lines


def _value_at(config: RunConfig, key: str):
    parts = key.split(".")
    if parts[0] == "options":
        return config.options[parts[1]].get(".".join(parts[2:]))
    target = config
    for part in parts:
        target = getattr(target, part)
    return target


def _origin_label(origin: str) -> str:
    if origin.startswith("--"):
        return f"command line ({origin})"
    if origin.startswith("recipe ") or origin.endswith(" preset"):
        return origin
    return f"your config ({origin})"


def _device_type(device: str) -> str:
    if device != "auto":
        return device.split(":")[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
