"""Any timm model as a backbone (``timm:<name>``), mainly CNN baselines."""

from __future__ import annotations

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import BackboneOutput
from biovfm_timm.vit import ViTBackbone


class TimmFeatureBackbone(nn.Module):
    """A timm model without tokens: CLS = its pooled features, patches = final feature map.

    ``patch_size`` is 1, as the protocol asks of models without patch tokens.
    """

    def __init__(self, model: nn.Module, name: str, image_size: int) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.embed_dim = int(model.num_features)
        self.patch_size = 1
        self.image_size = int(image_size)
        self.in_chans = 3
        self._nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"

    def forward_tokens(
        self,
        images: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> BackboneOutput:
        if mask is not None or keep is not None:
            raise NotImplementedError(
                f"timm:{self.name} has no patch tokens, so it cannot mask (iBOT) or drop "
                "(MAE) them; use a ViT backbone (vit_small, timm:vit_base_patch16_224) "
                "for those objectives"
            )
        feats = self.model.forward_features(images)
        cls = self.model.forward_head(feats, pre_logits=True)
        if feats.ndim == 4:
            if self._nhwc:
                feats = feats.permute(0, 3, 1, 2)
            patches = feats.flatten(2).transpose(1, 2)
        elif feats.ndim == 3:
            patches = feats
        else:
            patches = feats.unsqueeze(1)
        return BackboneOutput(cls=cls, patches=patches)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(images).cls

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_timm(
    variant: str,
    *,
    image_size: int = 224,
    drop_path_rate: float = 0.0,
    pretrained: bool = False,
) -> nn.Module:
    """Build timm model ``variant`` (``timm:resnet50`` → ``variant="resnet50"``).

    timm ViTs keep iBOT masking and MAE dropping; other models give pooled and
    feature-map tokens.

    Args:
        image_size: input side in pixels.
        drop_path_rate: stochastic depth, where the model supports it.
        pretrained: load timm's weights (needs them in the local cache or network access).
    """
    base = variant.split(".")[0]
    if not timm.is_model(base):
        raise ConfigError(f"timm has no model named {variant!r} (see timm.list_models())")
    kwargs: dict = {"pretrained": pretrained, "num_classes": 0}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if _is_vit(base):
        model = timm.create_model(variant, img_size=image_size, dynamic_img_size=True, **kwargs)
        if isinstance(model, VisionTransformer):
            return ViTBackbone(model, name=f"timm:{variant}")
    else:
        model = timm.create_model(variant, **kwargs)
    return TimmFeatureBackbone(model, variant, image_size)


def _family(variant: str) -> str:
    """``vit`` or ``cnn``: which objective backbone recipes apply (DINOv2's drop-path is
    a ViT recipe; a ResNet accepts drop_path_rate too, but was never trained with it)."""
    return "vit" if _is_vit(variant) else "cnn"


build_timm.backbone_family = _family  # type: ignore[attr-defined]


def _is_vit(variant: str) -> bool:
    # Only models built by timm's VisionTransformer class accept dynamic_img_size
    # with the token layout ViTBackbone expects.
    return variant.split(".")[0].startswith(("vit_", "deit_"))
