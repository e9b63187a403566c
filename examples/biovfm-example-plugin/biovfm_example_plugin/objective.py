"""Barlow Twins as a biovfm objective: two views, one cross-correlation loss."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from torch import nn

from biovfm_core.protocols import Backbone, Batch, ObjectiveBase, StepInfo, TaskInfo, ViewSpec


class BarlowTwins(ObjectiveBase, nn.Module):
    """Barlow Twins: make the cross-correlation of two views' embeddings the identity.

    Options: ``projection_dim`` (width of the projector), ``lambda_offdiag`` (weight of
    the redundancy-reduction term), ``image_size`` (side of both global crops).
    """

    def __init__(
        self,
        backbone: Backbone,
        task: TaskInfo,
        *,
        projection_dim: int = 2048,
        lambda_offdiag: float = 5e-3,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = BarlowTwinsProjectionHead(
            backbone.embed_dim, projection_dim, projection_dim
        )
        self.criterion = BarlowTwinsLoss(lambda_param=lambda_offdiag)
        self.views = ViewSpec(global_crops=2, global_size=image_size, local_crops=0)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, torch.Tensor]:
        first, second = batch.global_views[:2]
        z_a = self.projector(self.backbone.forward_tokens(first).cls)
        z_b = self.projector(self.backbone.forward_tokens(second).cls)
        return {"loss": self.criterion(z_a, z_b)}

    def after_optimizer_step(self, info: StepInfo) -> Mapping[str, float]:
        return {}

    def eval_backbone(self) -> Backbone:
        return self.backbone
