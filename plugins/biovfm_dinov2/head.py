"""The DINO / iBOT projection head: MLP, L2 normalisation, weight-normalised prototypes.

Built as DINOv2's ``layers/dino_head.py`` describes it: ``nlayers`` linear layers
(GELU between, trunc-normal(0.02) weights, zero biases) down to the bottleneck, L2
normalisation, then a bias-free prototype layer under weight normalisation whose norm
``g`` starts at 1. DINOv2 trains ``g``; ``norm_last_layer=True`` freezes it at 1 (the
DINO v1 / lightly default) instead.

The weight norm is torch's parametrization (``weight`` = ``g * v / ||v||`` per
prototype), not the deprecated ``torch.nn.utils.weight_norm`` hook, so the head
deep-copies and prints no FutureWarning. Its parameters are
``last_layer.parametrizations.weight.original0`` (g, shape ``(K, 1)``) and
``...original1`` (v, shape ``(K, bottleneck)``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = False,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(nlayers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.layers = nn.Sequential(*layers)
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.prototype_norm.fill_(1.0)
        self.prototype_norm.requires_grad_(not norm_last_layer)

    @property
    def prototype_norm(self) -> nn.Parameter:
        """``g``: each prototype's norm, ``(K, 1)``."""
        return self.last_layer.parametrizations.weight.original0

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(x)
        # DINOv2's eps: 1e-12 underflows in fp16.
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = nn.functional.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)
