"""The models ``biovfm eval`` takes: a run folder, an exported backbone, a random-init
backbone (``random:<name>``), any timm model (``timm:<name>``), and the published
checkpoints ``biovfm train --init`` starts from (a DINOv2 hub or MAE ``.pth``, a timm or
Hugging Face folder), which are named in results by their spec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from biovfm_core.errors import ConfigError, PluginError
from biovfm_core.models.loaded import LoadedModel, model_hash, ready, with_input
from biovfm_core.models.published import backbone_for, load_init, read_init
from biovfm_core.models.runs import is_biovfm_folder, load_biovfm


def load_model(
    spec: str,
    registry,
    *,
    options: dict[str, Any] | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Resolve ``spec`` to a backbone in eval mode.

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
        try:
            backbone = registry.build("backbones", spec, options=options)
        except PluginError as wrapped:
            exc = wrapped.__cause__
            if not isinstance(exc, OSError):  # huggingface_hub's offline / not-found errors
                raise
            raise ConfigError(
                f"{spec}: cannot get timm's pretrained weights ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); this machine cannot download them. "
                "Put them in the Hugging Face cache, or evaluate the architecture with "
                "random weights: --opt backbone.pretrained=false"
            ) from None
        checked = registry.validate("backbones", spec, options)
        ident = model_hash("timm", spec, checked, None if checked.get("pretrained") else seed)
        objective = "timm-pretrained" if checked.get("pretrained") else "random"
        return ready(LoadedModel(spec, backbone, ident, spec, objective, spec))
    path = Path(spec)
    if not path.exists():
        raise ConfigError(
            f"model {spec!r}: no such run folder or export; models are a run folder, an "
            "export folder or backbone.json, random:<backbone> or timm:<name>"
        )
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
        return load_biovfm(path, registry)
    if path.is_file() or (path / "config.json").is_file():
        return ready(load_published(spec, registry))
    raise ConfigError(
        f"{spec}: neither a biovfm run (config.yaml), an export (backbone.json) nor a "
        "timm / Hugging Face folder (config.json)"
    )


def load_published(spec: str, registry) -> LoadedModel:
    """A published checkpoint (DINOv2 hub or MAE ``.pth``, timm/HF folder, safetensors)
    in the biovfm ViT of its shapes, fed the normalisation it was trained with."""
    source = read_init(spec, registry)
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
