"""KoLeo regulariser (Sablayrolles et al., 2019), as DINOv2 applies it.

For L2-normalised features ``x_1..x_n`` of one crop batch::

    L_KoLeo = -1/n * sum_i log(min_{j != i} ||x_i - x_j|| + eps)

It pushes each feature away from its nearest neighbour, spreading the batch
uniformly over the sphere. DINOv2 applies it to the student's backbone CLS tokens,
separately for each global crop, and sums the per-crop terms.
"""

from __future__ import annotations

import torch
from lightly.loss import KoLeoLoss as _LightlyKoLeo
from torch import Tensor


class KoLeoLoss(_LightlyKoLeo):
    """lightly's KoLeo, computed in float32 (nearest neighbours are unstable in bf16)."""

    def forward(self, x: Tensor) -> Tensor:
        # The preflight runs steps on the meta device, which autocast does not know;
        # there is no autocast to turn off there.
        device_type = "cpu" if x.device.type == "meta" else x.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return super().forward(x.float())

    def per_crop_sum(self, features: Tensor, n_crops: int) -> Tensor:
        """Sum of the per-crop terms for ``features`` stacked crop by crop."""
        return sum(self(chunk) for chunk in features.chunk(n_crops))  # type: ignore[return-value]
