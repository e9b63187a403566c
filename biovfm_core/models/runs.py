"""biovfm's own files as a backbone: an export, a run folder, a checkpoint folder.

An export (``backbone.json`` + the weights file it names) is read as written; a run
without an export yet gives its newest checkpoint's evaluation backbone, rebuilt from
``config.yaml`` through the objective it was trained with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biovfm_core.errors import ConfigError
from biovfm_core.models import checkpoint as ckpt
from biovfm_core.models.export import export_weights
from biovfm_core.models.loaded import LoadedModel, file_hash, ready, with_input
from biovfm_core.models.normalisation import training_normalisation
from biovfm_core.models.weights import load_checked, read_safetensors


def is_biovfm_folder(path: Path) -> bool:
    """An export, a run or one of a run's checkpoints."""
    return (
        (path / "backbone.json").is_file()
        or (path / "config.yaml").is_file()
        or ((path / "state.pt").is_file() and (path.parent.parent / "config.yaml").is_file())
    )


def load_biovfm(path: Path, registry, load_model=None) -> LoadedModel:
    """The evaluation backbone of an export, a run (its export if it has one) or a
    checkpoint folder, in eval mode. ``load_model`` is the ``TaskInfo.load_model`` a
    run's objective is rebuilt with (a distilled run's teacher)."""
    if (path / "backbone.json").is_file():
        return ready(load_export(path, registry))
    if (path / "config.yaml").is_file():
        if (path / "export" / "backbone.json").is_file():
            model = load_export(path / "export", registry)
            model.name = path.name
            return ready(model)
        return ready(load_checkpoint_backbone(path, registry, load_model=load_model))
    if (path / "state.pt").is_file() and (path.parent.parent / "config.yaml").is_file():
        return ready(
            load_checkpoint_backbone(
                path.parent.parent, registry, checkpoint=path, load_model=load_model
            )
        )
    raise ConfigError(f"{path}: neither a biovfm run (config.yaml) nor an export (backbone.json)")


def load_export(folder: Path, registry) -> LoadedModel:
    """An export of ``biovfm train`` (``backbone.json`` + ``model.safetensors``, or
    ``backbone.safetensors`` for a backbone without a host layout and older exports)."""
    try:
        description = json.loads((folder / "backbone.json").read_text())
        info = description["biovfm"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{folder / 'backbone.json'}: not a biovfm export: {exc}") from None
    weights_file = export_weights(folder, info)
    if not weights_file.is_file():
        raise ConfigError(f"{folder}: backbone.json without its weights {weights_file.name}")
    state = read_safetensors(weights_file)  # a damaged file fails before any building
    backbone = registry.build("backbones", info["backbone"], options=info.get("options", {}))
    load = backbone.load_state_dict
    if info.get("layout") == "host":
        load = getattr(backbone, "load_export_state", None)
        if load is None:
            raise ConfigError(
                f"{weights_file}: saved in its host library's layout, but backbone "
                f"{info['backbone']!r} has no load_export_state() to read it"
            )
    options = info.get("options") or {}
    target = f"backbone {info['backbone']!r}" + (
        f" with options {options} (backbone.json)" if options else " (backbone.json)"
    )
    load_checked(load, state, weights_file, target)
    run = folder.parent if folder.name == "export" else folder
    objective = _run_objective(run)
    model = LoadedModel(
        run.name if folder.name == "export" else folder.name,
        backbone,
        file_hash(weights_file),
        info["backbone"],
        objective,
        str(folder),
        {"step": info.get("step")},
    )
    return with_input(model, info.get("input"))


def _run_objective(run: Path) -> str:
    try:
        import yaml

        return str(yaml.safe_load((run / "config.yaml").read_text()).get("objective", ""))
    except Exception:
        return ""


def load_checkpoint_backbone(
    run: Path, registry, checkpoint: Path | None = None, load_model=None
) -> LoadedModel:
    """The eval backbone of a run's latest checkpoint (no export yet): rebuild objective
    and backbone from ``config.yaml`` and ask the objective for ``eval_backbone()``."""
    return load_checkpoint_objective(run, registry, checkpoint, load_model)[0]


def load_checkpoint_objective(
    run: Path, registry, checkpoint: Path | None = None, load_model=None
) -> tuple[LoadedModel, Any]:
    """``(LoadedModel, objective)`` of a run's latest (or the given) checkpoint: the
    objective rebuilt from ``config.yaml`` with the checkpoint's weights, for callers
    that need more of it than the eval backbone (a distillation teacher's heads)."""
    from biovfm_core.config import RunConfig
    from biovfm_core.protocols import TaskInfo

    latest = checkpoint or ckpt.latest_checkpoint(run)
    if latest is None:
        raise ConfigError(f"{run}: the run has neither export/ nor a checkpoint yet")
    config = RunConfig.from_yaml(run / "config.yaml")
    weights = read_safetensors(latest / "model.safetensors")
    backbone = registry.build("backbones", config.backbone, options=config.options["backbone"])
    # A distilled run rebuilds its objective with its teacher.
    task = TaskInfo(load_model=load_model)
    heads = [v for k, v in weights.items() if k.startswith("head") and v.ndim == 2]
    if heads:
        # A supervised run's head fixes the class count its objective is built with.
        task = TaskInfo(num_classes=int(heads[-1].shape[0]), load_model=task.load_model)
    objective = registry.build(
        "objectives", config.objective, backbone, task, options=config.options["objective"]
    )
    load_checked(
        objective.load_state_dict,
        weights,
        latest / "model.safetensors",
        f"objective {config.objective!r} on backbone {config.backbone!r} ({run / 'config.yaml'})",
    )
    step = ckpt.read_meta(latest).get("step")
    model = LoadedModel(
        run.name,
        objective.eval_backbone(),
        file_hash(latest / "model.safetensors"),
        config.backbone,
        config.objective,
        str(latest),
        {"step": step},
    )
    return with_input(model, training_normalisation(config, objective, registry)), objective
