"""Patch features and the last block's attention weights of a backbone.

timm's blocks use fused attention (``scaled_dot_product_attention``), which never
materialises the weights, so a forward pre-hook keeps the last block's input and the
weights are recomputed from that block's own ``norm1``, ``qkv``, ``q_norm``/``k_norm``
and ``scale`` (the same arithmetic as timm's unfused path).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Features:
    """One model on the shown images: ``cls`` ``(N, D)``, ``patches`` ``(N, h*w, D)``
    on a ``grid`` of ``(h, w)``; ``attention`` ``(N, heads, h*w)`` CLS→patch weights
    of the last block (renormalised over patches), ``None`` where the model has none."""

    cls: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]
    attention: torch.Tensor | None


def find_vit(backbone: nn.Module) -> nn.Module | None:
    """The timm ``VisionTransformer`` inside a biovfm backbone (through the input
    adapter of trained models), when its last block has timm's ``Attention``."""
    inner = getattr(backbone, "inner", backbone)
    vit = getattr(inner, "vit", None)
    blocks = getattr(vit, "blocks", None)
    if vit is None or blocks is None or len(blocks) == 0:
        return None
    attn = getattr(blocks[-1], "attn", None)
    if not all(hasattr(attn, a) for a in ("qkv", "num_heads", "head_dim", "scale")):
        return None
    if not getattr(vit, "has_class_token", False):
        return None
    return vit


def attention_weights(block: nn.Module, block_input: torch.Tensor) -> torch.Tensor:
    """Softmax attention ``(B, heads, T, T)`` of ``block`` on its input tokens."""
    attn = block.attn
    x = block.norm1(block_input)
    b, t, _ = x.shape
    qkv = attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def _grid(n: int, size: int, patch: int) -> tuple[int, int]:
    side = size // patch if patch > 1 else 0
    if side and side * side == n:
        return side, side
    root = round(n**0.5)
    if root * root != n:
        raise ValueError(f"{n} patch tokens do not form a square grid")
    return root, root


@torch.no_grad()
def extract(backbone: nn.Module, images: torch.Tensor, *, batch_size: int = 16) -> Features:
    """CLS, patch tokens and CLS attention of ``backbone`` on prepared ``images``."""
    vit = find_vit(backbone)
    kept: list[torch.Tensor] = []
    handle = None
    if vit is not None:
        handle = vit.blocks[-1].register_forward_pre_hook(lambda _m, args: kept.append(args[0]))
    device = next(backbone.parameters()).device
    cls, patches, attention = [], [], []
    try:
        for start in range(0, len(images), batch_size):
            out = backbone.forward_tokens(images[start : start + batch_size].to(device))
            cls.append(out.cls.float().cpu())
            patches.append(out.patches.float().cpu())
            if vit is not None:
                weights = attention_weights(vit.blocks[-1], kept.pop())
                # CLS row over patch tokens only (prefix: CLS and registers), as a
                # distribution over the image: DINO's maps drop the CLS→CLS weight too.
                row = weights[:, :, 0, int(vit.num_prefix_tokens) :]
                attention.append((row / row.sum(dim=-1, keepdim=True)).float().cpu())
    finally:
        if handle is not None:
            handle.remove()
    patch_tokens = torch.cat(patches)
    size = images.shape[-1]
    grid = _grid(patch_tokens.shape[1], size, int(getattr(backbone, "patch_size", 1)))
    return Features(torch.cat(cls), patch_tokens, grid, torch.cat(attention) if attention else None)
