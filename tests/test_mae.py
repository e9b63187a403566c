"""MAE: patch order, norm-pix targets and the masked-only loss against hand computations."""

from __future__ import annotations

import pytest
import torch
from biovfm_mae.loss import mae_loss, patchify, pixel_target, random_keep
from biovfm_mae.objective import build_mae
from biovfm_timm.vit import build_vit
from real_images import real_crops

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import Batch, StepInfo, TaskInfo

TINY_DECODER = {"decoder_depth": 1, "decoder_dim": 64, "decoder_heads": 4}


def test_patchify_order() -> None:
    img = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    patches = patchify(img, 2)
    assert patches.shape == (1, 4, 8)
    # Patch 1 is the top-right 2x2 block; pixels row-major, channels innermost.
    block = img[0, :, 0:2, 2:4]
    expected = block.permute(1, 2, 0).reshape(-1)
    torch.testing.assert_close(patches[0, 1], expected)


def test_norm_pix_target_normalises_each_patch() -> None:
    patches = torch.tensor([[[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 9.0]]])
    target = pixel_target(patches, norm_pix_loss=True)
    for n in range(2):
        p = patches[0, n].tolist()
        mean = sum(p) / 4
        var = sum((v - mean) ** 2 for v in p) / 3  # unbiased, as MAE's code
        expected = [(v - mean) / (var + 1e-6) ** 0.5 for v in p]
        torch.testing.assert_close(target[0, n], torch.tensor(expected))
    torch.testing.assert_close(pixel_target(patches, norm_pix_loss=False), patches)


def test_loss_counts_only_masked_patches() -> None:
    torch.manual_seed(0)
    pred, patches = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    loss = mae_loss(pred, patches, mask, norm_pix_loss=False)
    per = [
        [
            sum((pred[b, n, i] - patches[b, n, i]).item() ** 2 for i in range(4)) / 4
            for n in range(3)
        ]
        for b in range(2)
    ]
    expected = (per[0][0] + per[0][2] + per[1][2]) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    changed = pred.clone()
    changed[~mask] += 100.0  # visible patches are not part of the loss
    assert mae_loss(changed, patches, mask, False).item() == pytest.approx(loss.item(), rel=1e-6)


def test_random_keep_splits_patches() -> None:
    torch.manual_seed(0)
    keep, mask = random_keep(3, 16, 0.75, torch.device("cpu"))
    assert keep.shape == (3, 4)
    assert (mask.sum(dim=1) == 12).all()
    for b in range(3):
        assert len(set(keep[b].tolist())) == 4
        assert not mask[b, keep[b]].any()


@pytest.fixture
def mae():
    torch.manual_seed(0)
    return build_mae(build_vit("tiny", image_size=32), TaskInfo(), **TINY_DECODER)


def test_views_and_encoder(mae) -> None:
    v = mae.views
    assert (v.global_crops, v.local_crops, v.global_scale) == (1, 0, (0.2, 1.0))
    assert not v.color_augment and not v.needs_labels
    assert mae.eval_backbone() is mae.encoder
    defaults = build_mae.__kwdefaults__
    assert (defaults["mask_ratio"], defaults["decoder_depth"], defaults["decoder_dim"]) == (
        0.75,
        8,
        512,
    )
    assert defaults["decoder_heads"] == 16 and defaults["norm_pix_loss"] is True


def test_encoder_sees_only_visible_patches(mae) -> None:
    seen = []
    hook = mae.encoder.vit.blocks[0].register_forward_hook(
        lambda m, i, o: seen.append(i[0].shape[1])
    )
    mae.training_step(Batch(global_views=[torch.randn(2, 3, 32, 32)]), StepInfo(0, 1, 1))
    hook.remove()
    assert seen == [1 + 1]  # CLS + 25% of 4 patches


def test_wrong_crop_size_and_cnn_rejected(mae) -> None:
    from biovfm_timm.timm_any import build_timm

    with pytest.raises(ConfigError, match="32px"):
        mae.training_step(Batch(global_views=[torch.randn(1, 3, 64, 64)]), StepInfo(0, 1, 1))
    with pytest.raises(ConfigError):
        build_mae(build_timm("resnet18"), TaskInfo())


def test_a_few_adamw_steps_lower_the_mae_loss() -> None:
    torch.manual_seed(0)
    mae = build_mae(build_vit("tiny", image_size=32), TaskInfo(), **TINY_DECODER)
    batch = Batch(global_views=[real_crops(8, 32, seed=1)])
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-3)

    def loss_now() -> float:
        torch.manual_seed(123)  # same patches dropped for both measurements
        with torch.no_grad():
            return float(mae.training_step(batch, StepInfo(0, 1, 1))["loss"])

    before = loss_now()
    for step in range(10):
        opt.zero_grad()
        mae.training_step(batch, StepInfo(step, 10, 10))["loss"].backward()
        opt.step()
    after = loss_now()
    assert after < before, (before, after)


def test_sincos_table_by_hand() -> None:
    from biovfm_mae.init import sincos_2d

    dim, grid = 8, 3  # quarter = 2 channels per (sin|cos) x (column|row), omega = 1, 1/100
    table = sincos_2d(dim, grid)
    assert table.shape == (1 + 9, 8) and torch.equal(table[0], torch.zeros(8))
    r, c = 1, 2  # token 1 + 3 * r + c; MAE's meshgrid puts the column first
    row = table[1 + 3 * r + c].double()
    expect = [
        *(torch.tensor([c * 1.0, c / 100], dtype=torch.float64).sin()),
        *(torch.tensor([c * 1.0, c / 100], dtype=torch.float64).cos()),
        *(torch.tensor([r * 1.0, r / 100], dtype=torch.float64).sin()),
        *(torch.tensor([r * 1.0, r / 100], dtype=torch.float64).cos()),
    ]
    torch.testing.assert_close(row, torch.stack(expect), atol=1e-7, rtol=0)


def test_encoder_pos_embed_is_fixed_sincos_and_init_is_mae(mae) -> None:
    from biovfm_mae.init import sincos_2d

    vit = mae.encoder.vit
    # models_mae.py: pos_embed = get_2d_sincos_pos_embed(..., cls_token=True), requires_grad=False
    torch.testing.assert_close(vit.pos_embed[0], sincos_2d(192, 2))
    assert not vit.pos_embed.requires_grad
    # ... and the decoder's (lightly's table) is the same function of its width.
    torch.testing.assert_close(mae.decoder.pos_embed[0], sincos_2d(64, 2))
    # initialize_weights: xavier_uniform_ on every Linear (bound sqrt(6 / (fan_in + fan_out))),
    # zero biases, on the flattened patch embedding too; normal(0.02) cls and mask tokens.
    for lin in (vit.blocks[0].attn.qkv, mae.decoder_embed, mae.prediction_head):
        bound = (6 / sum(lin.weight.shape)) ** 0.5
        w = lin.weight
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    proj = vit.patch_embed.proj.weight
    assert proj.abs().max() <= (6 / (192 + 3 * 16 * 16)) ** 0.5
    for token in (vit.cls_token, mae.decoder.mask_token):
        assert 0.005 < token.std() < 0.04
    norm = vit.blocks[0].norm1
    assert torch.equal(norm.weight, torch.ones(192)) and torch.equal(norm.bias, torch.zeros(192))


def test_learned_pos_embed_option() -> None:
    obj = build_mae(
        build_vit("tiny", image_size=32), TaskInfo(), **TINY_DECODER, sincos_pos_embed=False
    )
    assert obj.encoder.vit.pos_embed.requires_grad
