"""Vision Transformers from timm, wrapped to the ``biovfm_core.protocols.Backbone`` contract.

Token masking (iBOT) and token dropping (MAE) go through lightly's
``MaskedVisionTransformerTIMM``, which inserts the mask token / gathers kept tokens
between patch embedding and the transformer blocks, exactly where DINOv2 and MAE do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from lightly.models.modules import MaskedVisionTransformerTIMM
from timm.layers import DropPath, GluMlp, SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from biovfm_core.errors import ConfigError
from biovfm_core.pos_embed import POS_INTERPOLATIONS, resize_patch_pos
from biovfm_core.protocols import BackboneOutput


@dataclass(frozen=True)
class ViTSize:
    embed_dim: int
    depth: int
    num_heads: int


# Same widths/depths/heads as timm's vit_*_patch16_224 configs and DINOv2's vit_giant2.
VIT_SIZES: dict[str, ViTSize] = {
    "tiny": ViTSize(192, 12, 3),
    "small": ViTSize(384, 12, 6),
    "base": ViTSize(768, 12, 12),
    "large": ViTSize(1024, 24, 16),
    "huge": ViTSize(1280, 32, 16),
    "giant": ViTSize(1536, 40, 24),
}


def _swiglu_mlp_ratio(dim: int) -> float:
    """The ``mlp_ratio`` that gives timm's SwiGLUPacked DINOv2's SwiGLUFFNFused widths.

    DINOv2 takes 2/3 of the GELU MLP's 4x width per branch, rounded up to a multiple
    of 8 (1536 -> 4096 for ViT-g, 1280 -> 3416 for the study's ViT-H); SwiGLUPacked
    takes the fused (gate + value) width ``int(dim * mlp_ratio)``.
    """
    hidden = (int(dim * 4 * 2 / 3) + 7) // 8 * 8
    return (2 * hidden + 0.5) / dim


class _Encoder(MaskedVisionTransformerTIMM):
    """lightly's masked ViT whose position table is resized by ``pos_interpolation``
    (``biovfm_core.pos_embed``) at input sizes other than the table's."""

    def __init__(self, vit: VisionTransformer, pos_interpolation: str) -> None:
        super().__init__(vit, weight_initialization="skip", pos_embed_initialization="skip")
        self.pos_interpolation = pos_interpolation

    def add_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        if self.pos_interpolation == "timm" or not vit.dynamic_img_size:
            return super().add_pos_embed(x)  # timm's antialiased resample_abs_pos_embed
        n = vit.num_prefix_tokens
        prefix, patches = x[:, :n], x[:, n:]
        side = math.isqrt(patches.shape[1])  # square grids, as lightly assumes
        rows = 0 if vit.no_embed_class else n  # position rows of the prefix tokens
        table = vit.pos_embed
        old = tuple(vit.patch_embed.grid_size)
        patch_pos = resize_patch_pos(table[:, rows:], old, (side, side), self.pos_interpolation)
        if vit.no_embed_class:  # prefix tokens carry no position (DINOv2 with registers)
            x = torch.cat([prefix, patches + patch_pos], dim=1)
        else:  # DINOv2's prepare_tokens_with_masks: cat(cls, patches) + positions
            x = torch.cat([prefix, patches], dim=1) + torch.cat([table[:, :rows], patch_pos], 1)
        return vit.pos_drop(x)


class ViTBackbone(nn.Module):
    """A timm ``VisionTransformer`` exposing CLS and patch tokens, with mask/keep support."""

    def __init__(self, vit: VisionTransformer, name: str, pos_interpolation: str = "timm") -> None:
        super().__init__()
        if not getattr(vit, "dynamic_img_size", False):
            raise ConfigError(f"{name}: the ViT must be built with dynamic_img_size=True")
        if pos_interpolation not in POS_INTERPOLATIONS:
            raise ConfigError(
                f"{name}: pos_interpolation must be one of {', '.join(POS_INTERPOLATIONS)}, "
                f"got {pos_interpolation!r}"
            )
        # "skip" (in _Encoder): keep timm's own initialisation (learned, trunc-normal
        # position embeddings as in DINOv2) instead of lightly's MAE-specific defaults.
        self.encoder = _Encoder(vit, pos_interpolation)
        self.pos_interpolation = pos_interpolation
        self.name = name
        self.embed_dim = int(vit.embed_dim)
        patch = vit.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        img = vit.patch_embed.img_size
        self.image_size = int(img[0] if isinstance(img, (tuple, list)) else img)
        self.in_chans = int(vit.patch_embed.proj.in_channels)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.has_class_token = bool(vit.has_class_token)

    @property
    def vit(self) -> VisionTransformer:
        return self.encoder.vit

    def forward_tokens(
        self,
        images: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> BackboneOutput:
        if mask is not None and keep is not None:
            raise ValueError(f"{self.name}: give at most one of mask and keep")
        b = images.shape[0]
        p = self.num_prefix_tokens
        # lightly indexes the whole sequence (prefix tokens first); our contract indexes
        # patches only, so shift indices and never mask or drop the prefix tokens.
        full_mask = None
        full_keep = None
        if mask is not None:
            prefix = torch.zeros(b, p, dtype=torch.bool, device=mask.device)
            full_mask = torch.cat([prefix, mask.bool()], dim=1)
        if keep is not None:
            prefix_idx = torch.arange(p, device=keep.device).expand(b, p)
            full_keep = torch.cat([prefix_idx, keep.long() + p], dim=1)
        tokens = self.encoder.encode(images, idx_keep=full_keep, mask=full_mask)
        patches = tokens[:, p:]
        cls = tokens[:, 0] if self.has_class_token else patches.mean(dim=1)
        return BackboneOutput(cls=cls, patches=patches)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(images).cls

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def export_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Weights in timm's own ``VisionTransformer`` layout, and how timm rebuilds it.

        The description's ``timm`` entry is ``create_model`` arguments: with
        ``pretrained=True`` and ``pretrained_cfg_overlay={"file": <the safetensors>}``
        timm loads the exported weights itself (``num_classes=0``: no classifier).
        """
        vit = self.vit
        size = self.name.removeprefix("vit_")
        swiglu = isinstance(vit.blocks[0].mlp, GluMlp)  # SwiGLUPacked is a GluMlp partial
        model_args = {
            "img_size": self.image_size,
            "patch_size": self.patch_size,
            "reg_tokens": int(getattr(vit, "num_reg_tokens", 0)),
            "init_values": _layer_scale_init(vit),
            "dynamic_img_size": True,
            "num_classes": 0,
        }
        description: dict = {"embed_dim": self.embed_dim, "patch_size": self.patch_size}
        # timm's registered model whose widths match; kwargs above override the rest.
        base = _TIMM_NAMES.get(size)
        if base is not None and swiglu == (size == "giant"):
            description["timm"] = {"model_name": base, "kwargs": model_args}
        return dict(vit.state_dict()), description

    def load_export_state(self, state: dict[str, torch.Tensor]) -> None:
        """The inverse of ``export_state``: weights in timm's layout into this backbone."""
        self.vit.load_state_dict(state)


# timm's registered models with our sizes' widths, depths and heads (and, for giant,
# DINOv2's SwiGLU MLP); patch and image size are passed as overrides.
_TIMM_NAMES = {
    "tiny": "vit_tiny_patch16_224",
    "small": "vit_small_patch16_224",
    "base": "vit_base_patch16_224",
    "large": "vit_large_patch16_224",
    "huge": "vit_huge_patch14_224",
    "giant": "vit_giant_patch14_dinov2",
}


def _layer_scale_init(vit: VisionTransformer) -> float | None:
    ls = getattr(vit.blocks[0], "ls1", None)
    gamma = getattr(ls, "gamma", None)
    # The trained gamma no longer equals the init; any value re-creates the parameter.
    return None if gamma is None else 1e-5


def build_vit(
    size: str,
    *,
    patch_size: int = 16,
    image_size: int = 224,
    drop_path_rate: float = 0.0,
    drop_path_uniform: bool = False,
    layer_scale_init: float | None = None,
    num_register_tokens: int = 0,
    swiglu: bool | None = None,
    pos_interpolation: str = "timm",
    pretrained: bool = False,
    depth: int | None = None,
) -> ViTBackbone:
    """Build a ViT of the given size (``tiny`` ... ``giant``).

    Options: ``patch_size`` 14 or 16; ``image_size`` the side the position embeddings
    are made for (other sizes are interpolated, so 96 px local crops work; sides should
    be multiples of the patch size); ``drop_path_rate`` stochastic depth, rising
    linearly from 0 to this rate over the blocks (timm) or, with ``drop_path_uniform``,
    this rate in every block (DINOv2); ``layer_scale_init`` LayerScale init value or
    None (no LayerScale); ``num_register_tokens`` extra tokens (Darcet et al.), excluded
    from the patches; ``swiglu`` SwiGLU FFN (default: only for giant, as DINOv2's
    ViT-g); ``pos_interpolation`` how the position table is resized for other input
    sizes: "timm" (antialiased bicubic), "dinov2" (DINOv2's hub models: bicubic with
    scale factor (n + 0.1) / N, no antialias) or "bicubic" (to the size, no antialias,
    as transformers' Dinov2Model); ``pretrained`` is not available for these
    configurations; ``depth`` the number of blocks, None for the size's own (fewer
    only for quick checks: the conformance kit uses 2). The dinov2 objective sets
    drop-path 0.3 uniform, LayerScale 1e-5 and pos_interpolation "dinov2" unless told
    otherwise.
    """
    if size not in VIT_SIZES:
        raise ConfigError(f"unknown ViT size {size!r}; valid: {', '.join(VIT_SIZES)}")
    if patch_size not in (14, 16):
        raise ConfigError(f"vit_{size}: patch_size must be 14 or 16, got {patch_size}")
    if image_size % patch_size:
        raise ConfigError(
            f"vit_{size}: image_size {image_size} is not a multiple of patch_size {patch_size}"
        )
    if num_register_tokens < 0:
        raise ConfigError(f"vit_{size}: num_register_tokens must be >= 0")
    if depth is not None and depth < 1:
        raise ConfigError(f"vit_{size}: depth must be >= 1 (or None for the size's own)")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ConfigError(f"vit_{size}: drop_path_rate must be in [0, 1), got {drop_path_rate}")
    if pretrained:
        raise NotImplementedError(
            f"vit_{size}: pretrained weights are not bundled for this configuration; "
            "use a timm name with weights, e.g. timm:vit_small_patch14_dinov2, with pretrained=true"
        )
    cfg = VIT_SIZES[size]
    use_swiglu = (size == "giant") if swiglu is None else swiglu
    extra: dict = {}
    if use_swiglu:
        extra = {
            "mlp_ratio": _swiglu_mlp_ratio(cfg.embed_dim),
            "mlp_layer": SwiGLUPacked,
            "act_layer": nn.SiLU,
        }
    vit = VisionTransformer(
        img_size=image_size,
        patch_size=patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth if depth is None else depth,
        num_heads=cfg.num_heads,
        num_classes=0,
        drop_path_rate=drop_path_rate,
        init_values=layer_scale_init,
        reg_tokens=num_register_tokens,
        dynamic_img_size=True,
        **extra,
    )
    if drop_path_uniform and drop_path_rate > 0:
        # timm only builds the linear rule; DropPath holds no weights, so swapping it
        # leaves the state dict as timm's.
        for block in vit.blocks:
            block.drop_path1 = DropPath(drop_path_rate)
            block.drop_path2 = DropPath(drop_path_rate)
    return ViTBackbone(vit, name=f"vit_{size}", pos_interpolation=pos_interpolation)


def _size_factory(size: str):
    def factory(
        *,
        patch_size: int = 16,
        image_size: int = 224,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        layer_scale_init: float | None = None,
        num_register_tokens: int = 0,
        swiglu: bool | None = None,
        pos_interpolation: str = "timm",
        pretrained: bool = False,
        depth: int | None = None,
    ) -> ViTBackbone:
        return build_vit(
            size,
            patch_size=patch_size,
            image_size=image_size,
            drop_path_rate=drop_path_rate,
            drop_path_uniform=drop_path_uniform,
            layer_scale_init=layer_scale_init,
            num_register_tokens=num_register_tokens,
            swiglu=swiglu,
            pos_interpolation=pos_interpolation,
            pretrained=pretrained,
            depth=depth,
        )

    factory.__name__ = f"build_vit_{size}"
    # Objectives' backbone recipes meant for ViTs (DINOv2's drop-path) apply here.
    factory.backbone_family = "vit"  # type: ignore[attr-defined]
    factory.__doc__ = build_vit.__doc__
    return factory


build_vit_tiny = _size_factory("tiny")
build_vit_small = _size_factory("small")
build_vit_base = _size_factory("base")
build_vit_large = _size_factory("large")
build_vit_huge = _size_factory("huge")
build_vit_giant = _size_factory("giant")
