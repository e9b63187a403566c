"""The input normalisation a backbone was trained with, and how evaluation meets it.

Evaluation prepares every image as the study did; a backbone pretrained on views
normalised otherwise (ImageNet statistics, say) is wrapped so that it sees the very
inputs it learned from. Training records its recipe's normalisation in the export
(``input_normalisation``), and a run without an export has it rebuilt from its config.
"""

from __future__ import annotations

from typing import Any

import torch

# DINOv2 and MAE both train on ImageNet-normalised views.
IMAGENET_NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def input_normalisation(recipe) -> dict[str, list[float]] | None:
    """The ``mean``/``std`` a recipe's views end with, if it says (see protocols)."""
    mean, std = getattr(recipe, "mean", None), getattr(recipe, "std", None)
    if mean is None or std is None:
        return None
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def training_normalisation(config, objective, registry) -> dict | None:
    """The normalisation the run's recipe gave its views (what its export records)."""
    name = "default" if config.augmentation == "auto" else config.augmentation
    accepted = registry.options("augmentations", name)
    options = {k: v for k, v in config.options["augmentation"].items() if k in accepted}
    recipe = registry.build("augmentations", name, objective.views, options=options)
    return input_normalisation(recipe)


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


def unwrapped(backbone: torch.nn.Module) -> torch.nn.Module:
    """The backbone inside a ``TrainedInput`` (itself otherwise)."""
    return backbone.inner if isinstance(backbone, TrainedInput) else backbone
