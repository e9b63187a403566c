"""Defaults that depend on the machine: a CPU gets a run that finishes in minutes.

The paper-scale defaults (ViT-S, 65,536 prototypes, 2×224 + 8×96 crops) would take
hours per epoch on a laptop. On a CPU, every value the user did not set comes from
the CPU preset below and from the plugins' own ``"cpu"`` presets; on a GPU nothing
changes. What was applied is printed and saved with the resolved config.
"""

from __future__ import annotations

from typing import Any

from biovfm_core.config import CROP_OPTIONS, RunConfig

CPU_RUN: dict[str, Any] = {
    "backbone": "vit_tiny",
    "train.batch_size": 16,
    "train.max_steps": 60,
    "train.checkpoint_every": 20,
    "train.log_every": 5,
    "data.num_workers": 2,
}


def apply_machine_preset(config: RunConfig, registry, device_type: str) -> dict[str, Any]:
    """Fill unset values for ``device_type``; return ``{key: value}`` of what was filled.

    Keys the user or the recipe set are left alone (a recipe is the real thing: its
    sizes win over the CPU's). Crop sides are rounded down to the patch size the
    backbone will have (64/32 px become 56/28 for patch 14).
    """
    if device_type != "cpu":
        return {}
    applied: dict[str, Any] = {}
    run_length_set = any(config.is_set(k) for k in ("train.max_steps", "train.epochs"))
    for key, value in CPU_RUN.items():
        if config.is_set(key) or (key == "train.max_steps" and run_length_set):
            continue
        config.set(key, value, record=False)
        applied[key] = value
    patch = _patch_size(config, registry)
    for kind, name in (("objective", config.objective), ("backbone", config.backbone)):
        for option, value in registry.preset(kind + "s", name, "cpu").items():
            key = f"options.{kind}.{option}"
            if config.is_set(key):
                continue
            if patch and (kind, option) in CROP_OPTIONS and isinstance(value, int):
                value = max(patch, value // patch * patch)
            config.options[kind][option] = value
            applied[key] = value
    for key in applied:
        config.origins[key] = f"{device_type} preset"
    return applied


def _patch_size(config: RunConfig, registry) -> int | None:
    """The backbone's patch size as its options will give it, or None (not a ViT)."""
    specs = registry.options("backbones", config.backbone)
    if "patch_size" not in specs:
        return None
    patch = config.options["backbone"].get("patch_size", specs["patch_size"].default)
    try:
        return int(patch)
    except (TypeError, ValueError):
        return None  # validation names the bad value


def apply_objective_backbone_preset(config: RunConfig, registry) -> dict[str, Any]:
    """Fill the backbone options the objective's recipe sets (its ``"backbone"`` preset),
    on every machine, where the backbone has the option and neither the user nor a
    named recipe set it.

    DINOv2's drop-path and LayerScale are properties of the backbone it trains, not of
    the ViT in general (MAE trains the same ViT without them), so the objective names
    them. Filled values are saved with the config, so every rebuild of the backbone
    (resume, export, eval) gets the same model.
    """
    recipe = registry.preset("objectives", config.objective, "backbone")
    if not recipe or backbone_preset_skipped(config, registry):
        return {}
    accepted = registry.options("backbones", config.backbone)
    applied: dict[str, Any] = {}
    for option, value in recipe.items():
        key = f"options.backbone.{option}"
        if option in accepted and not config.is_set(key):
            config.options["backbone"][option] = value
            applied[key] = value
            config.origins[key] = f"{config.objective} backbone preset"
    return applied


def backbone_preset_skipped(config: RunConfig, registry) -> str | None:
    """Why the objective's backbone recipe does not apply to this backbone, or None.

    An objective names the family its recipe is for (its factory's
    ``backbone_preset_family``, e.g. ``"vit"``) and a backbone its own (its factory's
    ``backbone_family``, a string or a function of the variant): having an option of
    the same name (a ResNet's drop_path_rate) is not enough.
    """
    objective, _ = registry.get("objectives", config.objective)
    meant = getattr(objective.resolve(), "backbone_preset_family", None)
    if meant is None:
        return None
    backbone, variant = registry.get("backbones", config.backbone)
    family = getattr(backbone.resolve(), "backbone_family", None)
    if callable(family):
        family = family(variant)
    if family == meant:
        return None
    return (
        f"{config.objective}'s backbone recipe is for {meant} backbones; "
        f"{config.backbone} is {family or 'of an undeclared family'}"
    )
