"""Nearest neighbours among the shown images by cosine similarity of features."""

from __future__ import annotations

import torch


def global_features(cls: torch.Tensor, patches: torch.Tensor, kind: str) -> torch.Tensor:
    """``mean``: mean of patch tokens (the study's eval features); ``cls``: CLS token."""
    if kind == "mean":
        return patches.mean(dim=1)
    if kind == "cls":
        return cls
    raise ValueError(f"features must be 'mean' or 'cls', not {kind!r}")


def neighbours(features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` neighbours of each row among the other rows: indices and cosines,
    ``(N, k)`` each, most similar first; a row is never its own neighbour."""
    f = torch.nn.functional.normalize(features.double(), dim=1)
    sim = f @ f.T
    sim.fill_diagonal_(float("-inf"))
    k = min(k, len(f) - 1)
    values, indices = sim.topk(k, dim=1)
    return indices, values.float()
