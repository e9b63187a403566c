"""MAE's reconstruction target and loss.

With ``patchify(x)[b, n]`` the pixels of patch ``n`` (row-major over the patch grid,
``(p, p, C)`` inside a patch) and ``M`` the set of masked (dropped) patches::

    target[b, n] = (patch - mean(patch)) / sqrt(var(patch) + 1e-6)   if norm_pix_loss
    L_MAE = sum_{(b,n) in M} mean_pixels (pred[b, n] - target[b, n])^2 / |M|

Visible patches contribute nothing (He et al., 2022, eq. and code).
"""

from __future__ import annotations

import torch
from torch import Tensor


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, H/p * W/p, p * p * C)``."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # B, h, w, p, p, C
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def pixel_target(patches: Tensor, norm_pix_loss: bool, eps: float = 1e-6) -> Tensor:
    if not norm_pix_loss:
        return patches
    mean = patches.mean(dim=-1, keepdim=True)
    # Unbiased variance, as MAE's reference code (Tensor.var default).
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def mae_loss(pred: Tensor, patches: Tensor, mask: Tensor, norm_pix_loss: bool = True) -> Tensor:
    """``pred``/``patches``: ``(B, N, P)``; ``mask``: ``(B, N)``, 1 where a patch was dropped."""
    target = pixel_target(patches.float(), norm_pix_loss)
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)


def random_keep(batch_size: int, num_patches: int, mask_ratio: float, device: torch.device):
    """Per-image random split into kept and dropped patch indices (MAE's shuffling).

    Returns ``keep (B, K)``, ``mask (B, N)`` bool with True at dropped patches,
    ``K = int(N * (1 - mask_ratio))``.
    """
    num_keep = int(num_patches * (1.0 - mask_ratio))
    if num_keep < 1:
        raise ValueError(f"mask_ratio {mask_ratio} leaves no visible patch of {num_patches}")
    order = torch.rand(batch_size, num_patches, device=device).argsort(dim=1)
    keep = order[:, :num_keep]
    mask = torch.ones(batch_size, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, keep, False)
    return keep, mask
