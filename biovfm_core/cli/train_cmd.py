"""``biovfm train``: pretrain a backbone with an objective on a dataset."""

from __future__ import annotations

import os

import click

from biovfm_core.cli.common import check_data, config_options, resolve_config
from biovfm_core.errors import ConfigError
from biovfm_core.train.presets import apply_machine_preset, apply_objective_backbone_preset


@click.command("train")
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
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the step.")
@config_options
@click.option("--dry-run", is_flag=True, help="Resolve and check the config, print it, and stop.")
def train(dry_run: bool, config_path, sets, opts, compile_, **flags) -> None:
    """Pretrain a backbone (DINOv2 on the built-in demo data when no flags are given)."""
    from biovfm_core.registry import get_registry

    named = {
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
    applied = apply_machine_preset(config, registry, device_type)
    recipe = apply_objective_backbone_preset(config, registry)
    config.validate(registry)
    for label, filled in (
        (f"{device_type} preset", applied),
        (f"{config.objective} recipe", recipe),
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

        world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; 1 without it
        click.echo(f"# {batch_text(config.train.batch_size, world, config.optim.accumulate)}")
        click.echo("\n".join(data_lines))
        click.echo(config.to_yaml(), nl=False)
        return
    from biovfm_core.train.loop import train as run_training

    run_training(config, registry)


def _device_type(device: str) -> str:
    if device != "auto":
        return device.split(":")[0]
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
