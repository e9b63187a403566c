"""Backbones built on timm: the ViT sizes of the study and any timm model as a baseline.

Factories are registered as ``"module:attr"`` strings so that listing plugins never
imports torch or timm.
"""

from __future__ import annotations

from biovfm_core import hookimpl
from biovfm_core.hookspecs import Register

_VIT_SIZES = {
    "vit_tiny": "ViT-Ti (192 wide, 12 blocks, 3 heads, ~5.5M params)",
    "vit_small": "ViT-S (384 wide, 12 blocks, 6 heads, ~21M params)",
    "vit_base": "ViT-B (768 wide, 12 blocks, 12 heads, ~86M params)",
    "vit_large": "ViT-L (1024 wide, 24 blocks, 16 heads, ~300M params)",
    "vit_huge": "ViT-H (1280 wide, 32 blocks, 16 heads, ~630M params)",
    "vit_giant": "ViT-g as DINOv2's vit_giant2 (1536 wide, 40 blocks, 24 heads, SwiGLU, ~1.1B)",
}


@hookimpl
def biovfm_register_backbones(register: Register) -> None:
    for name, description in _VIT_SIZES.items():
        register(name, f"biovfm_timm.vit:build_{name}", description=description)
    register(
        "timm:",
        "biovfm_timm.timm_any:build_timm",
        description="any timm model by name (timm:resnet50, timm:convnext_tiny); "
        "ViTs keep token masking, CNNs give pooled + feature-map tokens",
    )
