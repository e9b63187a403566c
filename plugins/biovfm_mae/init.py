"""MAE's model set-up (He et al., 2022; facebookresearch/mae ``models_mae.py``).

The encoder's position embedding is a fixed 2-D sin-cos table, not a trained one, and
``initialize_weights`` gives every linear layer (and the patch embedding, seen as one)
xavier-uniform weights and zero biases, LayerNorms weight 1 and bias 0, and the cls
and mask tokens normal(0.02) values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sincos_2d(dim: int, grid: int, prefix_tokens: int = 1) -> Tensor:
    """MAE's ``get_2d_sincos_pos_embed``: ``(prefix_tokens + grid², dim)``, prefix rows 0.

    Tokens run row by row. The first half of the channels encodes the token's column,
    the second its row (MAE's meshgrid puts the width coordinate first); each half is
    ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-k / (dim / 4))``.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embeddings need a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(cols), encode(rows)], dim=1)
    return torch.cat([table.new_zeros(prefix_tokens, dim), table]).float()


def fix_sincos_pos_embed(vit: nn.Module) -> None:
    """Replace a timm ViT's learned position embedding by the frozen sin-cos table."""
    pos = vit.pos_embed
    n_prefix = 0 if getattr(vit, "no_embed_class", False) else int(vit.num_prefix_tokens)
    grid = math.isqrt(pos.shape[1] - n_prefix)
    if grid * grid != pos.shape[1] - n_prefix:
        raise ValueError(f"position embedding of {pos.shape[1]} rows is not a square grid")
    with torch.no_grad():
        pos.copy_(sincos_2d(pos.shape[-1], grid, n_prefix).unsqueeze(0))
    pos.requires_grad_(False)


def mae_initialize(model: nn.Module, patch_proj: nn.Conv2d, tokens: list[nn.Parameter]) -> None:
    """``initialize_weights`` of models_mae.py over ``model`` (position tables untouched)."""
    weight = patch_proj.weight.data
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    for token in tokens:
        nn.init.normal_(token, std=0.02)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
