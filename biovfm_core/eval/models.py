"""The models ``biovfm eval`` takes: a run folder, an exported backbone, a random-init
backbone (``random:<name>``), any timm model (``timm:<name>``), and the published
checkpoints ``biovfm train --init`` starts from (a DINOv2 hub or MAE ``.pth``, a timm or
Hugging Face folder), which are named in results by their spec."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from biovfm_core.errors import ConfigError, PluginError


@dataclass
class LoadedModel:
    """A backbone ready for evaluation, with what identifies it for caches and tables."""

    name: str
    backbone: torch.nn.Module
    identity: str  # hash of weights + construction; keys the feature cache
    backbone_name: str = ""
    objective: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params_m(self) -> float:
        return sum(p.numel() for p in self.backbone.parameters()) / 1e6


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _file_hash(path: Path) -> str:
    # Content, not path or mtime: the same weights copied elsewhere share a cache.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


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
        ident = _hash("random", name, registry.validate("backbones", name, options), seed)
        return _ready(LoadedModel(f"random:{name}", backbone, ident, name, "random", spec))
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
        ident = _hash("timm", spec, checked, None if checked.get("pretrained") else seed)
        objective = "timm-pretrained" if checked.get("pretrained") else "random"
        return _ready(LoadedModel(spec, backbone, ident, spec, objective, spec))
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
    if (path / "backbone.json").is_file():
        return _ready(load_export(path, registry))
    if (path / "config.yaml").is_file():
        if (path / "export" / "backbone.json").is_file():
            model = load_export(path / "export", registry)
            model.name = path.name
            return _ready(model)
        return _ready(load_checkpoint_backbone(path, registry))
    if (path / "state.pt").is_file() and (path.parent.parent / "config.yaml").is_file():
        return _ready(load_checkpoint_backbone(path.parent.parent, registry, checkpoint=path))
    if path.is_file() or (path / "config.json").is_file():
        return _ready(load_published(spec, registry))
    raise ConfigError(
        f"{spec}: neither a biovfm run (config.yaml), an export (backbone.json) nor a "
        "timm / Hugging Face folder (config.json)"
    )


def load_published(spec: str, registry) -> LoadedModel:
    """A published checkpoint (DINOv2 hub or MAE ``.pth``, timm/HF folder, safetensors)
    in the biovfm ViT of its shapes, fed the normalisation it was trained with."""
    from biovfm_core.train.init_weights import backbone_for, load_init, read_init

    source = read_init(spec, registry)
    name, options = backbone_for(source)
    backbone = registry.build("backbones", name, options=options)
    load_init(source, backbone, f"backbone {name!r} with options {options}")
    model = LoadedModel(
        spec,
        backbone,
        _hash("published", source.sha256, name, options),
        name,
        source.kind,
        spec,
        {"init": source.record()},
    )
    return _with_input(model, source.input_norm)


class TrainedInput(torch.nn.Module):
    """Feeds a backbone the normalisation it was trained with.

    Evaluation prepares every image as the study did, ``x = (u - 0.5) / 0.5`` of [0, 1]
    intensities ``u``; a backbone pretrained on views normalised as ``(u - mean) / std``
    (ImageNet statistics, say) gets ``x * 0.5 / std + (0.5 - mean) / std`` instead, the
    very inputs it learned from.
    """

    def __init__(self, backbone: torch.nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.inner = backbone
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 0.5 / std_t, persistent=False)
        self.register_buffer("shift", (0.5 - mean_t) / std_t, persistent=False)
        for attr in ("embed_dim", "patch_size", "image_size", "in_chans"):
            setattr(self, attr, getattr(backbone, attr))

    def forward_tokens(self, images: torch.Tensor, **kwargs: Any):
        return self.inner.forward_tokens(images * self.scale + self.shift, **kwargs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(images).cls

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.inner.parameters())


def _with_input(model: LoadedModel, norm: dict | None) -> LoadedModel:
    if norm:
        model.backbone = TrainedInput(model.backbone, norm["mean"], norm["std"])
        model.identity = _hash(model.identity, norm)
        model.extra["input"] = norm
    return model


def _ready(model: LoadedModel) -> LoadedModel:
    model.backbone.eval()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    return model


def load_export(folder: Path, registry) -> LoadedModel:
    """An export of ``biovfm train`` (``backbone.json`` + ``backbone.safetensors``)."""
    from biovfm_core.eval.weights import load_checked, read_safetensors

    try:
        description = json.loads((folder / "backbone.json").read_text())
        info = description["biovfm"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{folder / 'backbone.json'}: not a biovfm export: {exc}") from None
    weights_file = folder / "backbone.safetensors"
    if not weights_file.is_file():
        raise ConfigError(f"{folder}: backbone.json without backbone.safetensors")
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
        _file_hash(weights_file),
        info["backbone"],
        objective,
        str(folder),
        {"step": info.get("step")},
    )
    return _with_input(model, info.get("input"))


def _run_objective(run: Path) -> str:
    try:
        import yaml

        return str(yaml.safe_load((run / "config.yaml").read_text()).get("objective", ""))
    except Exception:
        return ""


def load_checkpoint_backbone(run: Path, registry, checkpoint: Path | None = None) -> LoadedModel:
    """The eval backbone of a run's latest checkpoint (no export yet): rebuild objective
    and backbone from ``config.yaml`` and ask the objective for ``eval_backbone()``."""
    from biovfm_core.config import RunConfig
    from biovfm_core.eval.weights import load_checked, read_safetensors
    from biovfm_core.protocols import TaskInfo
    from biovfm_core.train import checkpoint as ckpt

    latest = checkpoint or ckpt.latest_checkpoint(run)
    if latest is None:
        raise ConfigError(f"{run}: the run has neither export/ nor a checkpoint yet")
    config = RunConfig.from_yaml(run / "config.yaml")
    weights = read_safetensors(latest / "model.safetensors")
    backbone = registry.build("backbones", config.backbone, options=config.options["backbone"])
    task = TaskInfo()
    heads = [v for k, v in weights.items() if k.startswith("head") and v.ndim == 2]
    if heads:
        # A supervised run's head fixes the class count its objective is built with.
        task = TaskInfo(num_classes=int(heads[-1].shape[0]))
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
        _file_hash(latest / "model.safetensors"),
        config.backbone,
        config.objective,
        str(latest),
        {"step": step},
    )
    return _with_input(model, _training_normalisation(config, objective, registry))


def _training_normalisation(config, objective, registry) -> dict | None:
    """The normalisation the run's recipe gave its views (what its export records)."""
    from biovfm_core.train.loop import input_normalisation

    name = "default" if config.augmentation == "auto" else config.augmentation
    accepted = registry.options("augmentations", name)
    options = {k: v for k, v in config.options["augmentation"].items() if k in accepted}
    recipe = registry.build("augmentations", name, objective.views, options=options)
    return input_normalisation(recipe)
