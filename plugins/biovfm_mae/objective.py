"""Masked autoencoder (He et al., 2022): encode the visible 25%, reconstruct the rest."""

from __future__ import annotations

import torch
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM
from torch import Tensor, nn

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import (
    Backbone,
    Batch,
    ObjectiveBase,
    OptimRecipe,
    StepInfo,
    TaskInfo,
    ViewSpec,
)
from biovfm_mae.init import fix_sincos_pos_embed, mae_initialize
from biovfm_mae.loss import mae_loss, patchify, random_keep

# MAE's pre-training recipe (He et al., 2022, Table 8): lr = 1.5e-4 * batch / 256,
# 40 warm-up epochs, cosine to 0, weight decay 0.05, betas (0.9, 0.95), no clipping.
RECIPE = OptimRecipe(
    base_lr=1.5e-4,
    reference_batch=256,
    lr_scaling="linear",
    min_lr=0.0,
    warmup_epochs=40.0,
    weight_decay=0.05,
    betas=(0.9, 0.95),
    grad_clip=None,
    # util/lr_sched.py adjust_learning_rate: lr * epoch / warmup_epochs (peak at the
    # warm-up's end); main_pretrain.py: timm 0.3.2 add_weight_decay (1-D and biases).
    warmup="linear",
    decay_exempt="1d_and_bias",
)


class MAEObjective(ObjectiveBase, nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        *,
        image_size: int,
        mask_ratio: float,
        decoder_depth: int,
        decoder_dim: int,
        decoder_heads: int,
        norm_pix_loss: bool,
        sincos_pos_embed: bool,
        mae_init: bool,
        views: ViewSpec,
    ) -> None:
        super().__init__()
        self.views = views
        self.optim_recipe = RECIPE
        self.encoder = backbone
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = backbone.patch_size
        self.image_size = image_size
        self.num_patches = (image_size // self.patch_size) ** 2
        self.decoder_embed = nn.Linear(backbone.embed_dim, decoder_dim)
        # One prefix slot carries the encoder's CLS token, as in MAE.
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=self.num_patches,
            embed_dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            num_prefix_tokens=1,
        )
        self.prediction_head = nn.Linear(
            decoder_dim, self.patch_size**2 * backbone.in_chans, bias=True
        )
        vit = backbone.vit
        if mae_init:
            tokens = [t for t in (vit.cls_token, self.decoder.mask_token) if t is not None]
            mae_initialize(self, vit.patch_embed.proj, tokens)
        if sincos_pos_embed:
            fix_sincos_pos_embed(vit)

    def reconstruct(self, images: Tensor, keep: Tensor) -> Tensor:
        """Predicted pixels ``(B, N, p*p*C)`` for every patch, given the kept indices."""
        return self._decode(self.encoder.forward_tokens(images, keep=keep), keep)

    def _decode(self, enc, keep: Tensor) -> Tensor:
        visible = self.decoder_embed(enc.patches)
        b, _, d = visible.shape
        tokens = self.decoder.mask_token.to(visible.dtype).expand(b, self.num_patches, d)
        index = keep.unsqueeze(-1).expand(-1, -1, d)
        tokens = tokens.scatter(1, index, visible)
        tokens = torch.cat([self.decoder_embed(enc.cls).unsqueeze(1), tokens], dim=1)
        decoded = self.decoder(tokens)
        return self.prediction_head(decoded[:, 1:])

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        images = torch.cat(batch.global_views)
        side = images.shape[-1]
        if images.shape[-2] != self.image_size or side != self.image_size:
            raise ConfigError(
                f"mae: the decoder was built for {self.image_size}px crops, got "
                f"{tuple(images.shape[-2:])}; set the objective's image_size option"
            )
        keep, mask = random_keep(images.shape[0], self.num_patches, self.mask_ratio, images.device)
        enc = self.encoder.forward_tokens(images, keep=keep)
        pred = self._decode(enc, keep)
        loss = mae_loss(pred, patchify(images, self.patch_size), mask, self.norm_pix_loss)
        # The encoder's CLS embeddings (of the visible patches) for the loop's collapse
        # sentinels (biovfm_core/train/signals.py).
        return {"loss": loss, "signals": {"embeddings": enc.cls.detach()}}

    def eval_backbone(self) -> Backbone:
        return self.encoder


def build_mae(
    backbone: Backbone,
    task: TaskInfo,
    *,
    mask_ratio: float = 0.75,
    decoder_depth: int = 8,
    decoder_dim: int = 512,
    decoder_heads: int = 16,
    norm_pix_loss: bool = True,
    sincos_pos_embed: bool = True,
    mae_init: bool = True,
    image_size: int | None = None,
    global_scale: tuple[float, float] = (0.2, 1.0),
) -> MAEObjective:
    """Masked autoencoder.

    ``mask_ratio`` share of patches dropped before the encoder (0.75); decoder
    ``decoder_depth`` (8) blocks of width ``decoder_dim`` (512) with ``decoder_heads``
    (16); ``norm_pix_loss`` regress per-patch normalised pixels (True);
    ``sincos_pos_embed`` give the encoder MAE's fixed 2-D sin-cos position embedding
    instead of the backbone's learned one (True); ``mae_init`` MAE's initialisation of
    encoder and decoder: xavier-uniform linear and patch-embedding weights, normal(0.02)
    cls and mask tokens (True); set both false to start from a pretrained backbone's
    weights. The decoder's position embedding is always the fixed sin-cos table. ``image_size``
    crop side (default: the backbone's); ``global_scale`` random-resized-crop scale
    (0.2, 1.0). One crop per image, no colour augmentation. CPU demo: vit_tiny patch 16,
    image_size=64, decoder_depth=2, decoder_dim=128, decoder_heads=4.
    """
    del task
    if backbone.patch_size <= 1 or not hasattr(backbone, "vit"):
        raise ConfigError(
            f"mae: {type(backbone).__name__} has no patch tokens to drop; use a ViT backbone"
        )
    size = backbone.image_size if image_size is None else image_size
    if size % backbone.patch_size:
        raise ConfigError(
            f"mae: image_size {size} is not a multiple of patch size {backbone.patch_size}"
        )
    if not 0.0 < mask_ratio < 1.0:
        raise ConfigError(f"mae: mask_ratio must be in (0, 1), got {mask_ratio}")
    if decoder_dim % decoder_heads:
        raise ConfigError("mae: decoder_dim must be divisible by decoder_heads")
    views = ViewSpec(
        global_crops=1,
        global_size=size,
        global_scale=tuple(global_scale),
        local_crops=0,
        color_augment=False,
        needs_labels=False,
    )
    return MAEObjective(
        backbone,
        image_size=size,
        mask_ratio=mask_ratio,
        decoder_depth=decoder_depth,
        decoder_dim=decoder_dim,
        decoder_heads=decoder_heads,
        norm_pix_loss=norm_pix_loss,
        sincos_pos_embed=sincos_pos_embed,
        mae_init=mae_init,
        views=views,
    )
