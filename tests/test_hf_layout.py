"""Hugging Face transformers folders, both directions: a ``Dinov2Model`` / ``ViTMAEModel``
folder loads into biovfm's ViT with transformers' own features, and biovfm's export
``hf/`` folder loads with ``transformers.AutoModel`` with biovfm's features (CLS and
patch tokens within 1e-5). The reference in each direction is transformers' own forward
(``modeling_dinov2.py``, ``modeling_vit_mae.py``)."""

from __future__ import annotations

import pytest
import torch

# A dev dependency, imported unconditionally: a broken install fails here, never skips.
import transformers

from biovfm_core.models.export import export_backbone
from biovfm_core.models.normalisation import unwrapped
from biovfm_core.models.specs import load_model
from biovfm_core.registry import get_registry


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial biases, norms and layer scales, so every weight is checked."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _images(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _ours(spec: str, x: torch.Tensor):
    backbone = unwrapped(load_model(spec, get_registry()).backbone)
    with torch.no_grad():
        out = backbone.forward_tokens(x)
    return out.cls, out.patches


def _assert_close(ours, theirs) -> float:
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True))
    assert diff < 1e-5, diff
    return diff


@pytest.mark.parametrize("size", [56, 84])  # the table's own size, and resized (bicubic)
def test_dinov2_model_folder_gives_transformers_features(tmp_path, size) -> None:
    config = transformers.Dinov2Config(
        hidden_size=192, num_hidden_layers=12, num_attention_heads=3, patch_size=14,
        image_size=56, layerscale_value=0.5,
    )  # fmt: skip
    model = transformers.Dinov2Model(config).eval()
    _perturb(model, 1)
    model.save_pretrained(tmp_path / "hf")
    x = _images(size)
    with torch.no_grad():
        tokens = model(pixel_values=x).last_hidden_state
    _assert_close(_ours(str(tmp_path / "hf"), x), (tokens[:, 0], tokens[:, 1:]))


def test_vit_mae_model_folder_gives_transformers_features(tmp_path) -> None:
    config = transformers.ViTMAEConfig(
        hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
        patch_size=16, image_size=64, mask_ratio=0.0, layer_norm_eps=1e-6,
    )  # fmt: skip
    # layer_norm_eps: official MAE's (models_mae.py partial(nn.LayerNorm, eps=1e-6)) and
    # biovfm's; transformers' ViTMAEConfig defaults to 1e-12 (about 1e-4 apart).
    model = transformers.ViTMAEModel(config).eval()
    _perturb(model, 2)
    model.save_pretrained(tmp_path / "hf")
    x = _images(64)
    # mask_ratio 0 keeps every patch; an increasing noise keeps them in order.
    noise = torch.arange(16, dtype=torch.float32).expand(2, 16)
    with torch.no_grad():
        tokens = model(pixel_values=x, noise=noise).last_hidden_state
    _assert_close(_ours(str(tmp_path / "hf"), x), (tokens[:, 0], tokens[:, 1:]))


@pytest.mark.parametrize("options", [{}, {"layer_scale_init": 1e-5}], ids=["plain", "layerscale"])
def test_export_hf_folder_loads_in_transformers_with_our_features(
    tmp_path, monkeypatch, options
) -> None:
    # No hub kernels: the test machine is offline and the plain modules are the reference.
    monkeypatch.setenv("USE_HUB_KERNELS", "0")
    registry = get_registry()
    torch.manual_seed(0)
    options = {"patch_size": 14, "image_size": 56, **options}
    backbone = registry.build("backbones", "vit_tiny", options=options).eval()
    _perturb(backbone, 3)
    export_backbone(
        backbone, tmp_path / "export", backbone_name="vit_tiny", backbone_options=options,
        step=0, source="test", hf=True,
    )  # fmt: skip
    model = transformers.AutoModel.from_pretrained(tmp_path / "export" / "hf").eval()
    assert type(model).__name__ == "Dinov2Model"
    x = _images(56, seed=4)
    with torch.no_grad():
        ours = backbone.forward_tokens(x)
        tokens = model(pixel_values=x).last_hidden_state
    _assert_close((ours.cls, ours.patches), (tokens[:, 0], tokens[:, 1:]))
    # And back: biovfm reads its own hf/ folder (transformers 4.x key spelling).
    _assert_close(_ours(str(tmp_path / "export" / "hf"), x), (ours.cls, ours.patches))
