"""Resizing a ViT's learned position table to another patch grid, the published ways.

Three rules are in use, and a model's features at a size other than its table's
depend on which one it was trained and released with:

- ``"timm"``: timm's ``resample_abs_pos_embed`` (bicubic to the new size,
  antialiased when shrinking). biovfm's default, what timm models do.
- ``"dinov2"``: the DINOv2 torch-hub models' ``interpolate_pos_encoding``
  (dinov2/models/vision_transformer.py, built by dinov2/hub/backbones.py with
  ``interpolate_offset=0.1, interpolate_antialias=False``): bicubic, no antialias,
  given the *scale factor* ``(new + 0.1) / old`` rather than the size, so the
  sampling positions differ slightly from a resize to the size. The table is
  returned as is when the grid is its own.
- ``"bicubic"``: bicubic to the size, no antialias: DINOv2 with
  ``interpolate_offset=0`` and Hugging Face transformers' ``Dinov2Model``.

Only the patch rows are resized; class-token and register rows never move. Torch only,
no timm: the models layer (loading published weights) and the backbone plugins both
use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["POS_INTERPOLATIONS", "resize_patch_pos"]

POS_INTERPOLATIONS = ("timm", "dinov2", "bicubic")

# dinov2/hub/backbones.py _make_dinov2_model: interpolate_offset=0.1 for every hub model.
DINOV2_OFFSET = 0.1


def resize_patch_pos(
    patch_pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int], rule: str
) -> torch.Tensor:
    """``(1, old_h * old_w, dim)`` patch position rows resized to ``new`` by ``rule``.

    Computed in float32 (as DINOv2, timm and transformers do) and returned in the
    table's dtype.
    """
    if rule not in POS_INTERPOLATIONS:
        raise ValueError(f"rule must be one of {', '.join(POS_INTERPOLATIONS)}, got {rule!r}")
    if tuple(old) == tuple(new):
        return patch_pos
    dim = patch_pos.shape[-1]
    grid = patch_pos.float().reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    if rule == "dinov2":
        # The scale factor, not the size: the kernel then maps output pixel i to input
        # (i + 0.5) * old / (new + 0.1) - 0.5, DINOv2's released behaviour.
        scale = ((new[0] + DINOV2_OFFSET) / old[0], (new[1] + DINOV2_OFFSET) / old[1])
        out = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    else:
        out = F.interpolate(
            grid, size=tuple(new), mode="bicubic", antialias=rule == "timm", align_corners=False
        )
    if tuple(out.shape[-2:]) != tuple(new):
        raise ValueError(f"position table resized to {tuple(out.shape[-2:])}, not {tuple(new)}")
    return out.permute(0, 2, 3, 1).reshape(1, -1, dim).to(patch_pos.dtype)
