"""A backbone loaded for evaluation, with what identifies it for caches and tables."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from biovfm_core.models.normalisation import TrainedInput


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


def model_hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_hash(path: Path) -> str:
    # Content, not path or mtime: the same weights copied elsewhere share a cache.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def with_input(model: LoadedModel, norm: dict | None) -> LoadedModel:
    if norm:
        model.backbone = TrainedInput(model.backbone, norm["mean"], norm["std"])
        model.identity = model_hash(model.identity, norm)
        model.extra["input"] = norm
    return model


def ready(model: LoadedModel) -> LoadedModel:
    model.backbone.eval()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    return model
