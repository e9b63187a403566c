"""Backbones: sizes equal timm's reference configs, masking/dropping is the right math."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
from biovfm_timm.timm_any import build_timm
from biovfm_timm.vit import build_vit


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("size", "patch", "timm_name", "dims"),
    [
        ("tiny", 16, "vit_tiny_patch16_224", (192, 12, 3)),
        ("small", 16, "vit_small_patch16_224", (384, 12, 6)),
        ("base", 16, "vit_base_patch16_224", (768, 12, 12)),
        ("large", 16, "vit_large_patch16_224", (1024, 24, 16)),
        ("huge", 14, "vit_huge_patch14_224", (1280, 32, 16)),
    ],
)
def test_vit_sizes_match_timm(size: str, patch: int, timm_name: str, dims: tuple) -> None:
    with torch.device("meta"):
        ours = build_vit(size, patch_size=patch)
        ref = timm.create_model(timm_name, num_classes=0)
    assert (ours.embed_dim, len(ours.vit.blocks), ours.vit.blocks[0].attn.num_heads) == dims
    assert ours.patch_size == patch and ours.image_size == 224 and ours.in_chans == 3
    # Our wrapper adds exactly one parameter tensor: the iBOT mask token.
    assert ours.num_parameters() == _count(ref) + dims[0]


def test_giant_is_dinov2_vit_g_with_swiglu() -> None:
    with torch.device("meta"):
        ours = build_vit("giant", patch_size=14, layer_scale_init=1e-5)
        ref = timm.create_model("vit_giant_patch14_dinov2", num_classes=0, img_size=224)
    assert ours.embed_dim == 1536 and len(ours.vit.blocks) == 40
    mlp = ours.vit.blocks[0].mlp
    # timm's SwiGLUPacked is GluMlp with a SiLU gate.
    assert type(mlp).__name__ == "GluMlp" and isinstance(mlp.act, torch.nn.SiLU)
    # DINOv2's ViT-g FFN: 4096 hidden units per SwiGLU branch.
    assert mlp.fc2.in_features == 4096
    assert ours.num_parameters() == _count(ref) + 1536


def test_study_vit_huge_has_dinov2_swiglu_widths() -> None:
    # The study's dino_vit_huge: ffn_layer "swiglufused", whose hidden width is
    # (int(1280 * 4 * 2 / 3) + 7) // 8 * 8 = 3416 per branch (dinov2 layers/swiglu_ffn.py).
    with torch.device("meta"):
        ours = build_vit("huge", patch_size=14, swiglu=True)
    mlp = ours.vit.blocks[0].mlp
    assert mlp.fc1.out_features == 2 * 3416 and mlp.fc2.in_features == 3416


def test_drop_path_uniform_or_linear() -> None:
    def rates(vit) -> list[float]:
        return [getattr(b.drop_path1, "drop_prob", 0.0) for b in vit.blocks]

    with torch.device("meta"):
        uniform = build_vit("tiny", image_size=32, drop_path_rate=0.3, drop_path_uniform=True)
        linear = build_vit("tiny", image_size=32, drop_path_rate=0.3)
    assert rates(uniform.vit) == [0.3] * 12  # dinov2 vision_transformer.py: [rate] * depth
    assert [getattr(b.drop_path2, "drop_prob", 0.0) for b in uniform.vit.blocks] == [0.3] * 12
    assert rates(linear.vit) == pytest.approx([0.3 * i / 11 for i in range(12)])
    assert uniform.state_dict().keys() == linear.state_dict().keys()  # no weights added


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_vit("tiny", image_size=64, num_register_tokens=4).eval()


def test_registers_are_excluded_and_sizes_are_dynamic(tiny: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    out = tiny.forward_tokens(x)
    assert out.patches.shape == (2, 16, 192)
    assert tiny.forward_tokens(torch.randn(2, 3, 32, 32)).patches.shape == (2, 4, 192)
    tokens = tiny.encoder.encode(x)
    assert tokens.shape[1] == 1 + 4 + 16
    torch.testing.assert_close(out.cls, tokens[:, 0])
    torch.testing.assert_close(out.patches, tokens[:, 5:])


def test_mask_replaces_patch_embeddings_with_mask_token(tiny: torch.nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        tiny.encoder.mask_token.normal_()
        x = torch.randn(2, 3, 64, 64)
        mask = torch.rand(2, 16) < 0.4
        out = tiny.forward_tokens(x, mask=mask)
        # The reference computation, written out: patch-embed, swap masked tokens for
        # the mask token, prepend CLS + registers, add position embeddings, encode.
        vit = tiny.vit
        patches = vit.patch_embed(x).flatten(1, 2)
        patches = torch.where(mask[..., None], tiny.encoder.mask_token.expand_as(patches), patches)
        prefix = torch.cat([vit.cls_token, vit.reg_token], dim=1).expand(2, -1, -1)
        tokens = torch.cat([prefix, patches], dim=1) + vit.pos_embed
        tokens = vit.norm(vit.blocks(vit.norm_pre(tokens)))
    torch.testing.assert_close(out.patches, tokens[:, 5:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.cls, tokens[:, 0], atol=1e-5, rtol=1e-4)
    none_masked = tiny.forward_tokens(x, mask=torch.zeros_like(mask))
    torch.testing.assert_close(none_masked.patches, tiny.forward_tokens(x).patches)


def test_keep_is_a_gather_before_the_encoder(tiny: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = tiny.forward_tokens(x)
        # Keeping every patch in a shuffled order permutes the outputs (attention is
        # permutation-equivariant once position embeddings are added).
        perm = torch.stack([torch.randperm(16), torch.randperm(16)])
        shuffled = tiny.forward_tokens(x, keep=perm)
        torch.testing.assert_close(
            shuffled.patches,
            torch.gather(full.patches, 1, perm[..., None].expand(-1, -1, 192)),
            atol=1e-5,
            rtol=1e-4,
        )
        torch.testing.assert_close(shuffled.cls, full.cls, atol=1e-5, rtol=1e-4)
        # Dropping patches changes what the others see: a genuine drop, not a mask.
        part = tiny.forward_tokens(x, keep=perm[:, :4])
        assert part.patches.shape == (2, 4, 192)
        assert not torch.allclose(part.cls, full.cls, atol=1e-4)


def test_patch14_backbone() -> None:
    bb = build_vit("tiny", patch_size=14, image_size=56)
    assert bb.forward_tokens(torch.randn(1, 3, 56, 56)).patches.shape == (1, 16, 192)


def test_timm_cnn_gives_pooled_cls_and_feature_map_tokens() -> None:
    torch.manual_seed(0)
    cnn = build_timm("resnet18", image_size=64).eval()
    assert cnn.embed_dim == 512 and cnn.patch_size == 1
    with torch.no_grad():
        out = cnn.forward_tokens(torch.randn(2, 3, 64, 64))
    assert out.patches.shape == (2, 4, 512)
    # resnet's head is global average pooling: CLS is the mean of the map's tokens.
    torch.testing.assert_close(out.cls, out.patches.mean(dim=1))
    with pytest.raises(NotImplementedError, match="resnet18"):
        cnn.forward_tokens(torch.randn(1, 3, 64, 64), mask=torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="resnet18"):
        cnn.forward_tokens(torch.randn(1, 3, 64, 64), keep=torch.zeros(1, 2, dtype=torch.long))


def test_timm_vit_keeps_token_masking() -> None:
    bb = build_timm("vit_tiny_patch16_224", image_size=64)
    out = bb.forward_tokens(torch.randn(1, 3, 64, 64), keep=torch.tensor([[0, 5]]))
    assert out.patches.shape == (1, 2, 192)


def test_bad_options_are_config_errors() -> None:
    from biovfm_core.errors import ConfigError

    with pytest.raises(ConfigError):
        build_vit("tiny", patch_size=8)
    with pytest.raises(ConfigError):
        build_timm("no_such_model_xyz")
    with pytest.raises(NotImplementedError, match="pretrained"):
        build_vit("tiny", pretrained=True)


def test_plugins_register_lazily_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "import biovfm_timm.plugin as t, biovfm_dinov2.plugin as d\n"
        "import biovfm_mae.plugin as m, biovfm_supervised.plugin as s\n"
        "names = []\n"
        "reg = lambda name, factory, **kw: names.append((name, factory))\n"
        "t.biovfm_register_backbones(reg)\n"
        "for p in (d, m, s): p.biovfm_register_objectives(reg)\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules\n"
        "assert all(isinstance(f, str) for _, f in names)\n"
        "print(sorted(n for n, _ in names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for name in ["vit_tiny", "vit_giant", "timm:", "dinov2", "mae", "supervised"]:
        assert f"'{name}'" in out.stdout
