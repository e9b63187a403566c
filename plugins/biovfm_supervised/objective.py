"""Supervised training of a backbone with a classification head (the study's baseline)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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

HEADS = ("linear", "mlp")
POOLS = ("cls", "mean")


# DeiT's recipe for ViTs trained from scratch: lr = 5e-4 * batch / 512, 5 warm-up
# epochs, cosine to 1e-5, weight decay 0.05.
RECIPE = OptimRecipe(
    base_lr=5e-4,
    reference_batch=512,
    lr_scaling="linear",
    min_lr=1e-5,
    warmup_epochs=5.0,
    weight_decay=0.05,
    betas=(0.9, 0.999),
    grad_clip=None,
)


class SupervisedObjective(ObjectiveBase, nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        *,
        num_classes: int,
        multilabel: bool,
        head: str,
        hidden_dim: int,
        pool: str,
        label_smoothing: float,
        views: ViewSpec,
    ) -> None:
        super().__init__()
        self.views = views
        self.optim_recipe = RECIPE
        self.backbone = backbone
        self.multilabel = multilabel
        self.pool = pool
        self.label_smoothing = label_smoothing
        dim = backbone.embed_dim
        if head == "linear":
            self.head: nn.Module = nn.Linear(dim, num_classes)
        else:
            self.head = nn.Sequential(
                nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, num_classes)
            )

    def logits(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))

    def features(self, images: Tensor) -> Tensor:
        out = self.backbone.forward_tokens(images)
        return out.cls if self.pool == "cls" else out.patches.mean(dim=1)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.multilabel:
            target = labels.float()
            # Smoothing towards 1/2 for each independent binary label.
            target = target * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
            return F.binary_cross_entropy_with_logits(logits.float(), target)
        return F.cross_entropy(logits.float(), labels.long(), label_smoothing=self.label_smoothing)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        if batch.labels is None:
            raise ConfigError("supervised: the batch has no labels; use labelled sources")
        images = torch.cat(batch.global_views)
        labels = torch.cat([batch.labels] * len(batch.global_views))
        features = self.features(images)
        logits = self.head(features)
        loss = self.loss(logits, labels)
        with torch.no_grad():
            if self.multilabel:
                acc = ((logits > 0) == (labels > 0.5)).float().mean()
            else:
                acc = (logits.argmax(dim=-1) == labels).float().mean()
        # The pooled embeddings for the loop's collapse sentinels (train/signals.py).
        return {"loss": loss, "accuracy": acc, "signals": {"embeddings": features.detach()}}

    def eval_backbone(self) -> Backbone:
        return self.backbone


def build_supervised(
    backbone: Backbone,
    task: TaskInfo,
    *,
    head: str = "linear",
    hidden_dim: int = 1024,
    pool: str = "cls",
    label_smoothing: float = 0.0,
    image_size: int | None = None,
    global_scale: tuple[float, float] = (0.08, 1.0),
) -> SupervisedObjective:
    """Supervised classification on the backbone's embedding.

    ``head`` "linear" or "mlp" (one hidden layer of ``hidden_dim``, GELU); ``pool``
    "cls" (CLS token) or "mean" (mean of patch tokens); ``label_smoothing`` for
    cross-entropy, or towards 1/2 per label for multi-label BCE; ``image_size`` crop side
    (default: the backbone's); ``global_scale`` random-resized-crop scale (0.08, 1.0).
    """
    if task.num_classes is None:
        raise ConfigError(
            "supervised: the data has no labels (task.num_classes is None); use sources "
            "with labels, or a self-supervised objective (dinov2, mae)"
        )
    if task.num_classes < 1:
        raise ConfigError(f"supervised: num_classes must be >= 1, got {task.num_classes}")
    if head not in HEADS:
        raise ConfigError(f"supervised: head must be one of {', '.join(HEADS)}, got {head!r}")
    if pool not in POOLS:
        raise ConfigError(f"supervised: pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"supervised: label_smoothing must be in [0, 1), got {label_smoothing}")
    size = backbone.image_size if image_size is None else image_size
    views = ViewSpec(
        global_crops=1,
        global_size=size,
        global_scale=tuple(global_scale),
        local_crops=0,
        color_augment=False,
        needs_labels=True,
    )
    return SupervisedObjective(
        backbone,
        num_classes=task.num_classes,
        multilabel=task.multilabel,
        head=head,
        hidden_dim=hidden_dim,
        pool=pool,
        label_smoothing=label_smoothing,
        views=views,
    )


# Options whose effect the conformance kit cannot see with the defaults (see CONTRIBUTING).
build_supervised.kit_exempt_options = {  # type: ignore[attr-defined]
    "hidden_dim": "used only with head='mlp'; the default head is linear",
}
