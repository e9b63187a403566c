"""The models ``biovfm eval`` takes: a run folder, an exported backbone, a random-init
backbone (``random:<name>``), any timm model (``timm:<name>``), and the published
checkpoints ``biovfm train --init`` starts from (a DINOv2 hub or MAE ``.pth``, a timm or
Hugging Face folder), which are named in results by their spec."""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from biovfm_core.errors import ConfigError, PluginError
from biovfm_core.models import checkpoint as ckpt
from biovfm_core.models.frozen import FrozenTeacher, teacher_heads
from biovfm_core.models.loaded import LoadedModel, model_hash, ready, with_input
from biovfm_core.models.normalisation import unwrapped
from biovfm_core.models.published import (
    NOT_CACHED_ERRORS,
    backbone_for,
    hub_cache_only,
    load_init,
    not_cached,
    read_init,
)
from biovfm_core.models.runs import is_biovfm_folder, load_biovfm, load_checkpoint_objective

MODEL_HELP = (
    "a biovfm run or export folder (or its backbone.json), a DINOv2 hub or MAE .pth, a "
    "timm/Hugging Face folder (config.json + model.safetensors), random:<backbone> or "
    "timm:<name>"
)


def near_path(path: Path) -> Path | None:
    """An existing path one typo per part away from ``path`` (difflib over the names
    beside each missing part), or None: ``runs/dmeo`` -> ``runs/demo``."""
    found = Path(path.anchor) if path.is_absolute() else Path()
    parts = path.parts[1:] if path.is_absolute() else path.parts
    for part in parts:
        if (found / part).exists():
            found = found / part
            continue
        try:
            names = [p.name for p in (found if str(found) else Path(".")).iterdir()]
        except OSError:
            return None
        close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
        if not close:
            return None
        found = found / close[0]
    return found if found != path else None


def check_models(
    specs: list[str],
    registry,
    *,
    options: dict[str, Any] | None = None,
    seed: int = 0,
    image_size: int | None = None,
    what: str = "model",
) -> None:
    """Every spec exists, reads and fits ``image_size`` (a multiple of its patch size),
    before any work, so a typo in the second model does not surface after the first
    was evaluated. Each is loaded and let go (one in memory at a time)."""
    for spec in specs:
        model = load_model(spec, registry, options=options, seed=seed, what=what)
        check_image_size(model, spec, image_size, what)
        del model


def check_image_size(model: LoadedModel, spec: str, image_size: int | None, what: str) -> None:
    """A ViT takes sides that are a multiple of its patch size; anything else fails
    deep in the first forward with an assertion."""
    patch = getattr(unwrapped(model.backbone), "patch_size", None)
    if image_size is not None and isinstance(patch, int) and image_size % patch:
        raise ConfigError(
            f"{what} {spec}: --image-size {image_size} is not a multiple of its patch "
            f"size {patch}; pass e.g. --image-size {max(patch, image_size // patch * patch)}"
        )


def load_model(
    spec: str,
    registry,
    *,
    options: dict[str, Any] | None = None,
    seed: int = 0,
    what: str = "model",
) -> LoadedModel:
    """Resolve ``spec`` to a backbone in eval mode.

    ``what`` begins errors about the spec: how the user gave it (``model`` for
    ``biovfm eval`` and ``inspect``).

    ``options`` are backbone options for ``random:`` and ``timm:`` models
    (``pretrained`` defaults to true for ``timm:``); runs and exports carry their own.
    """
    options = dict(options or {})
    if spec.startswith("random:"):
        name = spec.removeprefix("random:")
        torch.manual_seed(seed)
        backbone = registry.build("backbones", name, options=options)
        ident = model_hash("random", name, registry.validate("backbones", name, options), seed)
        return ready(LoadedModel(f"random:{name}", backbone, ident, name, "random", spec))
    if spec.startswith("timm:") and not os.path.exists(spec):
        options.setdefault("pretrained", True)
        torch.manual_seed(seed)
        # As `train --init timm:NAME`: the weights come from the local cache or not at
        # all, so an offline machine fails at once instead of retrying for a minute.
        try:
            with hub_cache_only():
                backbone = registry.build("backbones", spec, options=options)
        except PluginError as wrapped:
            exc = wrapped.__cause__
            if not isinstance(exc, NOT_CACHED_ERRORS):
                raise
            raise not_cached(what, spec, exc) from None
        checked = registry.validate("backbones", spec, options)
        ident = model_hash("timm", spec, checked, None if checked.get("pretrained") else seed)
        objective = "timm-pretrained" if checked.get("pretrained") else "random"
        return ready(LoadedModel(spec, backbone, ident, spec, objective, spec))
    path = Path(spec).expanduser()
    if not path.exists():
        near = near_path(path)
        hint = f" (did you mean {near}?)" if near else ""
        raise ConfigError(f"{what} {spec}: no such file or folder{hint}; a model is {MODEL_HELP}")
    if options:
        raise ConfigError(
            f"model {spec}: --opt backbone.* applies only to random: and timm: models; "
            "runs and exports carry their own backbone options"
        )
    if path.is_file() and path.name == "backbone.json":
        path = path.parent
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent
    if is_biovfm_folder(path):
        return load_biovfm(path, registry, frozen_loader(registry))
    if path.is_file() or (path / "config.json").is_file():
        return ready(load_published(spec, registry, what))
    raise ConfigError(
        f"{spec}: neither a biovfm run (config.yaml), an export (backbone.json) nor a "
        "timm / Hugging Face folder (config.json)"
    )


def load_published(spec: str, registry, what: str = "model") -> LoadedModel:
    """A published checkpoint (DINOv2 hub or MAE ``.pth``, timm/HF folder, safetensors)
    in the biovfm ViT of its shapes, fed the normalisation it was trained with."""
    source = read_init(spec, registry, what=what)
    name, options = backbone_for(source)
    backbone = registry.build("backbones", name, options=options)
    load_init(source, backbone, f"backbone {name!r} with options {options}")
    model = LoadedModel(
        spec,
        backbone,
        model_hash("published", source.sha256, name, options),
        name,
        source.kind,
        spec,
        {"init": source.record()},
    )
    return with_input(model, source.input_norm)


def load_frozen(spec: str, registry, *, what: str = "teacher") -> FrozenTeacher:
    """``spec`` as a frozen model; a biovfm run with a checkpoint brings its heads."""
    # Loading a random: or timm: model seeds torch; the caller's streams (the student's
    # initialisation) must not depend on which teacher it names.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # The preflight builds the teacher on the meta device, where loading weights is
        # a no-op by design; torch warns once per tensor.
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
        path = Path(spec).expanduser()
        run = path if (path / "config.yaml").is_file() else None
        if run is not None and ckpt.latest_checkpoint(run) is not None:
            model, objective = load_checkpoint_objective(
                run, registry, None, frozen_loader(registry)
            )
            heads = teacher_heads(objective)
        else:
            model, heads = load_model(spec, registry, what=what), {}
    return FrozenTeacher(
        spec, model.identity, unwrapped(model.backbone), heads, model.extra.get("input")
    )


def frozen_loader(registry, *, what: str = "objective.teacher") -> Callable[[str], FrozenTeacher]:
    """The ``TaskInfo.load_model`` for ``registry`` (protocols.FrozenModel); loads each
    spec once per loader."""
    cache: dict[str, FrozenTeacher] = {}

    def load(spec: str) -> FrozenTeacher:
        if spec not in cache:
            cache[spec] = load_frozen(spec, registry, what=what)
        return cache[spec]

    return load
