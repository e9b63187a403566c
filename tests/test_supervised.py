"""Supervised objective: losses equal their formulas; a clear error without labels."""

from __future__ import annotations

import math

import pytest
import torch
from biovfm_supervised.objective import build_supervised
from biovfm_timm.vit import build_vit
from real_images import real_crops

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import Batch, StepInfo, TaskInfo


def _backbone():
    return build_vit("tiny", image_size=32)


def test_no_labels_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no labels"):
        build_supervised(_backbone(), TaskInfo(num_classes=None))


def test_views_need_labels() -> None:
    obj = build_supervised(_backbone(), TaskInfo(num_classes=3))
    assert obj.views.needs_labels and obj.views.global_crops == 1 and obj.views.local_crops == 0
    assert obj.eval_backbone() is obj.backbone


def test_cross_entropy_with_label_smoothing_by_hand() -> None:
    obj = build_supervised(_backbone(), TaskInfo(num_classes=3), label_smoothing=0.1)
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1])
    expected = 0.0
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        logp = [v - log_z for v in row]
        target = [0.1 / 3 + (0.9 if k == y else 0.0) for k in range(3)]
        expected -= sum(t * lp for t, lp in zip(target, logp, strict=True)) / 2
    assert obj.loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_multilabel_bce_by_hand() -> None:
    obj = build_supervised(
        _backbone(), TaskInfo(num_classes=2, multilabel=True), label_smoothing=0.2
    )
    logits = torch.tensor([[1.0, -2.0]])
    labels = torch.tensor([[1.0, 0.0]])
    sig = [1 / (1 + math.exp(-v)) for v in (1.0, -2.0)]
    targets = [0.9, 0.1]  # smoothed towards 1/2
    expected = (
        -sum(t * math.log(s) + (1 - t) * math.log(1 - s) for t, s in zip(targets, sig, strict=True))
        / 2
    )
    assert obj.loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_mlp_head_and_mean_pool() -> None:
    torch.manual_seed(0)
    obj = build_supervised(_backbone(), TaskInfo(num_classes=4), head="mlp", pool="mean")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = obj.head(obj.backbone.forward_tokens(x).patches.mean(dim=1))
        torch.testing.assert_close(obj.logits(x), expected)
    with pytest.raises(ConfigError):
        build_supervised(_backbone(), TaskInfo(num_classes=4), head="transformer")


def test_a_few_adamw_steps_lower_the_supervised_loss() -> None:
    torch.manual_seed(0)
    obj = build_supervised(_backbone(), TaskInfo(num_classes=2))
    images = real_crops(8, 32, seed=1)
    labels = torch.arange(8) % 2  # crops alternate histology / fundus
    batch = Batch(global_views=[images], labels=labels)
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-3)
    with torch.no_grad():
        before = float(obj.training_step(batch, StepInfo(0, 1, 1))["loss"])
    for step in range(5):
        opt.zero_grad()
        obj.training_step(batch, StepInfo(step, 5, 5))["loss"].backward()
        opt.step()
    with torch.no_grad():
        out = obj.training_step(batch, StepInfo(5, 5, 5))
    assert float(out["loss"]) < before
    assert float(out["accuracy"]) == 1.0
