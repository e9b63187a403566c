"""Barlow Twins as a biovfm objective: two views, one cross-correlation loss."""

from __future__ import annotations

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from torch import nn

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import Backbone, Batch, ObjectiveBase, StepInfo, TaskInfo, ViewSpec


class BarlowTwins(ObjectiveBase, nn.Module):
    """Barlow Twins: make the cross-correlation of two views' embeddings the identity.

    Options
    -------
    projection_dim: width of the projector's three layers.
    lambda_offdiag: weight of the redundancy-reduction (off-diagonal) term.
    global_size: side of both global crops in pixels (the name dinov2 uses).
    """

    def __init__(
        self,
        backbone: Backbone,
        task: TaskInfo,
        *,
        projection_dim: int = 2048,
        lambda_offdiag: float = 5e-3,
        global_size: int = 224,
    ) -> None:
        super().__init__()
        # Types are checked by biovfm; ranges are the objective's to check. A
        # ConfigError is shown to the user as one line, without a traceback.
        if projection_dim < 1:
            raise ConfigError(f"barlow_twins: projection_dim must be >= 1, got {projection_dim}")
        if lambda_offdiag < 0:
            raise ConfigError(f"barlow_twins: lambda_offdiag must be >= 0, got {lambda_offdiag}")
        self.backbone = backbone
        self.projector = BarlowTwinsProjectionHead(
            backbone.embed_dim, projection_dim, projection_dim
        )
        self.criterion = BarlowTwinsLoss(lambda_param=lambda_offdiag)
        self.views = ViewSpec(global_crops=2, global_size=global_size, local_crops=0)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, torch.Tensor]:
        first, second = batch.global_views[:2]
        z_a = self.projector(self.backbone.forward_tokens(first).cls)
        z_b = self.projector(self.backbone.forward_tokens(second).cls)
        return {"loss": self.criterion(z_a, z_b)}

    def eval_backbone(self) -> Backbone:
        return self.backbone
