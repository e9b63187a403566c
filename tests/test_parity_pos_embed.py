"""Published DINOv2 hub files give the official model's features, with and without
registers, at the table's own size (518 px) and resized (224 px).

The reference is DINOv2's ViT forward re-written here in plain torch, independent of
timm, lightly and biovfm: facebookresearch/dinov2 ``dinov2/models/vision_transformer.py``
(``DinoVisionTransformer.prepare_tokens_with_masks``, ``interpolate_pos_encoding`` with
the hub's ``interpolate_offset=0.1, interpolate_antialias=False`` from
``dinov2/hub/backbones.py``, ``forward_features``), ``dinov2/layers/block.py``
(``Block``: ``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))``),
``dinov2/layers/attention.py`` and ``dinov2/layers/layer_scale.py``. The weights are
random (seeded) in the hub's key layout, saved as a ``.pth`` and read by biovfm's
``--init`` / eval loader.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from biovfm_core.models.normalisation import unwrapped
from biovfm_core.models.published import backbone_for, load_init, read_init
from biovfm_core.models.specs import load_model
from biovfm_core.registry import get_registry

DIM, DEPTH, HEADS, PATCH, GRID = 384, 12, 6, 14, 37  # ViT-S/14 at 518 px


def hub_state(registers: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A ``dinov2_vits14[_reg4]_pretrain.pth`` state dict with random weights."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    state = {
        "cls_token": rnd(1, 1, DIM, std=1.0),
        # Large, smooth-free positions so resizing rules visibly differ.
        "pos_embed": rnd(1, 1 + GRID * GRID, DIM, std=1.0),
        "mask_token": rnd(1, DIM),
        "patch_embed.proj.weight": rnd(DIM, 3, PATCH, PATCH),
        "patch_embed.proj.bias": rnd(DIM),
        "norm.weight": 1 + rnd(DIM, std=0.1),
        "norm.bias": rnd(DIM),
    }
    if registers:
        state["register_tokens"] = rnd(1, registers, DIM, std=1.0)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        state.update(
            {
                b + "norm1.weight": 1 + rnd(DIM, std=0.1),
                b + "norm1.bias": rnd(DIM),
                b + "attn.qkv.weight": rnd(3 * DIM, DIM, std=0.05),
                b + "attn.qkv.bias": rnd(3 * DIM),
                b + "attn.proj.weight": rnd(DIM, DIM, std=0.05),
                b + "attn.proj.bias": rnd(DIM),
                b + "ls1.gamma": rnd(DIM, std=0.5),
                b + "norm2.weight": 1 + rnd(DIM, std=0.1),
                b + "norm2.bias": rnd(DIM),
                b + "mlp.fc1.weight": rnd(4 * DIM, DIM, std=0.05),
                b + "mlp.fc1.bias": rnd(4 * DIM),
                b + "mlp.fc2.weight": rnd(DIM, 4 * DIM, std=0.05),
                b + "mlp.fc2.bias": rnd(DIM),
                b + "ls2.gamma": rnd(DIM, std=0.5),
            }
        )
    return state


def official_interpolate_pos_encoding(pos: torch.Tensor, npatch: int, w: int, h: int):
    """vision_transformer.py interpolate_pos_encoding, hub settings (offset 0.1, no
    antialias): bicubic with ``scale_factor=((w0 + 0.1) / M, (h0 + 0.1) / M)``."""
    n = pos.shape[1] - 1
    if npatch == n and w == h:
        return pos
    cls_pos, patch_pos = pos[:, 0], pos[:, 1:]
    w0, h0 = w // PATCH, h // PATCH
    m = int(math.sqrt(n))
    patch_pos = F.interpolate(
        patch_pos.float().reshape(1, m, m, DIM).permute(0, 3, 1, 2),
        scale_factor=((w0 + 0.1) / m, (h0 + 0.1) / m),
        mode="bicubic",
        antialias=False,
    )
    assert (w0, h0) == patch_pos.shape[-2:]
    patch_pos = patch_pos.permute(0, 2, 3, 1).view(1, -1, DIM)
    return torch.cat((cls_pos.unsqueeze(0), patch_pos), dim=1)


def official_forward(state: dict[str, torch.Tensor], x: torch.Tensor):
    """DinoVisionTransformer.forward_features: (x_norm_clstoken, x_norm_patchtokens)."""
    b, _, w, h = x.shape
    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], PATCH)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat((state["cls_token"].expand(b, -1, -1), t), dim=1)
    t = t + official_interpolate_pos_encoding(state["pos_embed"], t.shape[1] - 1, w, h)
    regs = state.get("register_tokens")
    if regs is not None:
        t = torch.cat((t[:, :1], regs.expand(b, -1, -1), t[:, 1:]), dim=1)
    hd = DIM // HEADS
    for i in range(DEPTH):
        p = lambda k, i=i: state[f"blocks.{i}.{k}"]  # noqa: E731
        y = F.layer_norm(t, (DIM,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        n = y.shape[1]
        qkv = F.linear(y, p("attn.qkv.weight"), p("attn.qkv.bias"))
        q, k, v = qkv.reshape(b, n, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        attn = ((q * hd**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, DIM)
        t = t + p("ls1.gamma") * F.linear(y, p("attn.proj.weight"), p("attn.proj.bias"))
        y = F.layer_norm(t, (DIM,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, p("mlp.fc1.weight"), p("mlp.fc1.bias"))),
                     p("mlp.fc2.weight"), p("mlp.fc2.bias"))  # fmt: skip
        t = t + p("ls2.gamma") * y
    t = F.layer_norm(t, (DIM,), state["norm.weight"], state["norm.bias"], eps=1e-6)
    n_regs = 0 if regs is None else regs.shape[1]
    return t[:, 0], t[:, 1 + n_regs :]


def _max_diff(backbone, state, size: int) -> float:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        cls_ref, patches_ref = official_forward(state, x)
        out = backbone.forward_tokens(x)
    assert out.patches.shape == patches_ref.shape
    return max(
        float((out.cls - cls_ref).abs().max()), float((out.patches - patches_ref).abs().max())
    )


@pytest.fixture(scope="module", params=[0, 4], ids=["no-registers", "reg4"])
def hub_file(request, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = hub_state(request.param)
    path = tmp_path_factory.mktemp("hub") / f"dinov2_vits14{'_reg4' if request.param else ''}.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("size", [518, 224])
def test_eval_loader_gives_official_features(hub_file, size: int) -> None:
    """biovfm eval / inspect (models/specs.py load_model): the backbone keeps the hub's
    518 px table and resizes it at forward time by DINOv2's rule."""
    path, state = hub_file
    model = load_model(str(path), get_registry())
    diff = _max_diff(unwrapped(model.backbone), state, size)
    assert diff < 1e-5, diff


def test_init_into_a_224_px_backbone_gives_official_features(hub_file) -> None:
    """``biovfm train --init``: the table is resized to the run's 224 px grid at load,
    by DINOv2's rule, so the run starts from the official model's 224 px features."""
    path, state = hub_file
    source = read_init(str(path))
    name, options = backbone_for(source)
    backbone = get_registry().build("backbones", name, options={**options, "image_size": 224})
    load_init(source, backbone)
    backbone.eval()
    assert _max_diff(backbone, state, 224) < 1e-5


def test_timms_antialiased_resize_is_not_dinov2s(hub_file) -> None:
    """The check above is sharp: timm's rule (biovfm's default) misses by far more."""
    path, state = hub_file
    source = read_init(str(path))
    name, options = backbone_for(source)
    backbone = get_registry().build(
        "backbones", name, options={**options, "pos_interpolation": "timm"}
    )
    load_init(source, backbone)
    backbone.eval()
    assert _max_diff(backbone, state, 224) > 1e-3
