"""Starting a run from a previous run's whole objective (``init_mode: objective``).

A training stage that continues a run (DINOv3's high-resolution adaptation,
dinov3/configs/train/dinov3_vit7b16_high_res_adapt.yaml) needs more than the backbone:
the heads, the EMA teacher and the centering state go on where the run left them,
under the new stage's own schedule, optimizer and step count. The optimizer state is
not carried over: the stage has its own learning-rate schedule and a fresh AdamW, as
DINOv3's stage starts from the previous checkpoint's weights only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from biovfm_core.errors import ConfigError
from biovfm_core.models import checkpoint as ckpt

INHERITED = ("objective", "backbone")


def inherit_model_options(config, recipe_keys: set[str]) -> dict[str, object]:
    """``init_mode: objective``: the previous run's objective, backbone and their
    options, for every key neither the user nor the recipe set, so the state fits.

    Precedence: defaults < machine preset < the --init run's model < recipe < user.
    Returns what was filled (shown like a preset's values)."""
    if config.init_mode != "objective" or not config.init or config.resume:
        return {}
    path = Path(config.init).expanduser()
    run = path.parent.parent if ckpt.is_checkpoint_folder(path) else path
    saved = run / "config.yaml"
    if not saved.is_file():
        raise ConfigError(
            f"--init {config.init}: init_mode=objective needs a biovfm run folder "
            "(with config.yaml and a checkpoint); use init_mode=backbone for other weights"
        )
    from biovfm_core.config import RunConfig

    previous = RunConfig.from_yaml(saved)
    filled: dict[str, object] = {}
    wanted = {key: getattr(previous, key) for key in INHERITED}
    for kind in INHERITED:
        for name, value in previous.options.get(kind, {}).items():
            wanted[f"options.{kind}.{name}"] = value
    for key, value in wanted.items():
        if key in config.explicit or key in recipe_keys:
            continue
        config.set(key, value, source=f"--init {run}", record=False)
        config.origins[key] = f"--init run {run} (init_mode objective)"
        filled[key] = value
    return filled


def init_from_run(objective, objective_name: str, spec: str, say: Callable[[str], None]) -> Path:
    """Load the newest checkpoint of the run ``spec`` (or that checkpoint) into
    ``objective``; returns the checkpoint used."""
    path = Path(spec).expanduser()
    candidates = ckpt.resume_candidates(path) if path.is_dir() else []
    if not candidates:
        raise ConfigError(
            f"--init {spec}: init_mode=objective needs a biovfm run folder with a "
            "checkpoint (or a checkpoint folder); use init_mode=backbone for other weights"
        )
    checkpoint = candidates[0]
    run = checkpoint.parent.parent
    previous = _run_objective(run)
    if previous and previous != objective_name:
        raise ConfigError(
            f"--init {spec}: init_mode=objective carries a {previous} objective's state, "
            f"but this run's objective is {objective_name}"
        )
    weights, _ = ckpt.load_checkpoint(checkpoint)
    take = getattr(objective, "load_stage_state", None)
    if take is not None:
        skipped = take(weights)
    else:
        from biovfm_core.train.checkpoints import check_fits

        check_fits(checkpoint, objective.state_dict(), weights)
        objective.load_state_dict(weights)
        skipped = []
    say(
        f"starting from the whole {objective_name} objective of {checkpoint}"
        + (f" ({len(skipped)} of its tensors not carried over)" if skipped else "")
    )
    return checkpoint


def _run_objective(run: Path) -> str:
    try:
        raw = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return ""
    return str(raw.get("objective", ""))
