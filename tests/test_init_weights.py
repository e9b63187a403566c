"""``--init``: published checkpoints in their official layouts load into biovfm backbones.

Each checkpoint is written by the test from random weights, with key names and shapes
as the official repositories publish them (DINOv2 torch-hub ``*_pretrain.pth``: flat,
``mask_token``, ``register_tokens``, ``pos_embed`` covering the CLS token; MAE
``mae_pretrain_vit_*.pth``: under ``model``, with decoder keys) and as timm's own
converters read them. The source is a small timm ViT; the loaded backbone must give
its very features, at the source's size and, with position embeddings interpolated
(for DINOv2 files by DINOv2's own rule), at another.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from biovfm_timm.vit import ViTBackbone
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

from biovfm_core.config import RunConfig
from biovfm_core.errors import ConfigError
from biovfm_core.models import published
from biovfm_core.models.normalisation import IMAGENET_NORM
from biovfm_core.models.published import load_init, read_init
from biovfm_core.registry import get_registry

DIM, DEPTH, HEADS = 64, 2, 2


def timm_vit(*, img=518, patch=14, regs=0, no_embed_class=None, ls=1e-5, dim=DIM, depth=DEPTH):
    """A timm ViT with random (not zero or one) weights everywhere."""
    vit = VisionTransformer(
        img_size=img,
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=HEADS if dim == DIM else 3,
        init_values=ls,
        reg_tokens=regs,
        no_embed_class=bool(regs) if no_embed_class is None else no_embed_class,
        num_classes=0,
        dynamic_img_size=True,
    ).eval()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return vit


def dinov2_resized(source: VisionTransformer, img: int, **kwargs) -> VisionTransformer:
    """``source`` at ``img`` px with its position table resized as DINOv2's own model
    does for a hub file (dinov2/models/vision_transformer.py interpolate_pos_encoding,
    hub settings: bicubic, ``scale_factor=(n + 0.1) / N``, no antialias); the patch
    rows only."""
    resized = timm_vit(img=img, regs=int(source.num_reg_tokens), **kwargs)
    resized.load_state_dict(
        {k: v for k, v in source.state_dict().items() if k != "pos_embed"}, strict=False
    )
    pos = source.pos_embed.detach()
    rows = 0 if source.no_embed_class else source.num_prefix_tokens
    old, new = source.patch_embed.grid_size[0], resized.patch_embed.grid_size[0]
    grid = pos[:, rows:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    scale = (new + 0.1) / old
    grid = F.interpolate(grid, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    with torch.no_grad():
        resized.pos_embed.copy_(
            torch.cat([pos[:, :rows], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)], 1)
        )
    return resized


def target(**kwargs) -> ViTBackbone:
    """What ``build_vit`` makes (position rows for every token), at tiny widths."""
    kwargs.setdefault("no_embed_class", False)
    return ViTBackbone(timm_vit(**kwargs), "vit_test").eval()


def dinov2_hub_file(vit: VisionTransformer, path: Path) -> Path:
    """``vit`` as DINOv2's torch-hub file: flat keys, the iBOT ``mask_token`` (1, D); with
    registers, ``register_tokens`` and a ``pos_embed`` whose row 0 belongs to the CLS
    token (timm's ``_convert_dinov2`` folds it into ``cls_token``)."""
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    hub = {"mask_token": torch.randn(1, vit.embed_dim)}
    if "reg_token" in state:
        cls_pos = torch.randn(1, 1, vit.embed_dim)
        hub["cls_token"] = state.pop("cls_token") - cls_pos
        hub["register_tokens"] = state.pop("reg_token")
        hub["pos_embed"] = torch.cat([cls_pos, state.pop("pos_embed")], dim=1)
    hub.update(state)
    torch.save(hub, path)
    return path


def mae_file(vit: VisionTransformer, path: Path, decoder_dim: int = 32) -> Path:
    """``vit`` as MAE's ``mae_pretrain_vit_*.pth``: ``{"model": encoder + decoder}``."""
    model = {k: v.clone() for k, v in vit.state_dict().items()}
    n = vit.pos_embed.shape[1]
    model.update(
        {
            "mask_token": torch.randn(1, 1, decoder_dim),
            "decoder_pos_embed": torch.randn(1, n, decoder_dim),
            "decoder_embed.weight": torch.randn(decoder_dim, vit.embed_dim),
            "decoder_embed.bias": torch.randn(decoder_dim),
            "decoder_blocks.0.norm1.weight": torch.randn(decoder_dim),
            "decoder_norm.weight": torch.randn(decoder_dim),
            "decoder_pred.weight": torch.randn(16 * 16 * 3, decoder_dim),
        }
    )
    torch.save({"model": model}, path)
    return path


def same_features(source: VisionTransformer, backbone: ViTBackbone, size: int) -> None:
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = source.forward_features(images)
        got = backbone.forward_tokens(images)
    prefix = source.num_prefix_tokens
    torch.testing.assert_close(got.cls, want[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.patches, want[:, prefix:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("regs", [0, 4])
@pytest.mark.parametrize("train_size", [518, 224])  # 224: 37² position rows resampled to 16²
def test_dinov2_hub_checkpoint_gives_the_source_features(tmp_path, regs, train_size):
    source = timm_vit(regs=regs)
    name = f"dinov2_vits14{'_reg4' if regs else ''}_pretrain.pth"
    init = read_init(str(dinov2_hub_file(source, tmp_path / name)))
    assert init.kind == "dinov2" and init.state["patch_embed.proj.weight"].shape[-1] == 14
    backbone = target(img=train_size, regs=regs)
    load_init(init, backbone)
    assert backbone.vit.pos_embed.shape[1] == 1 + regs + (train_size // 14) ** 2
    # At 224 the table is resized as DINOv2's own model resizes it for a 224 px input.
    reference = source if train_size == 518 else dinov2_resized(source, train_size)
    same_features(reference, backbone, train_size)


@pytest.mark.parametrize("train_size", [224, 112])
def test_mae_checkpoint_drops_the_decoder_and_gives_the_source_features(tmp_path, train_size):
    source = timm_vit(img=224, patch=16, ls=None)
    init = read_init(str(mae_file(source, tmp_path / "mae_pretrain_vit_base.pth")))
    assert init.kind == "mae" and "mask_token" in init.dropped
    assert not any(k.startswith("decoder") for k in init.state)
    backbone = target(img=train_size, patch=16, ls=None)
    load_init(init, backbone)
    same_features(source, backbone, train_size)


def test_timm_folder_with_registers_loads_into_either_token_layout(tmp_path):
    # timm's DINOv2-reg layout (no position rows for prefix tokens), as timm writes a
    # model folder: config.json names the architecture, model.safetensors the weights.
    source = timm_vit(img=224, regs=4)
    folder = tmp_path / "vit_small_patch14_reg4_dinov2.lvd142m"
    folder.mkdir()
    save_file(source.state_dict(), str(folder / "model.safetensors"))
    config = {"architecture": "vit_small_patch14_reg4_dinov2", "num_classes": 0}
    (folder / "config.json").write_text(json.dumps(config))
    init = read_init(str(folder))
    assert init.kind == "timm-folder" and init.no_embed_class is True
    assert init.sha256 == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    for no_embed_class in (False, True):
        backbone = target(img=224, regs=4, no_embed_class=no_embed_class)
        load_init(init, backbone)
        same_features(source, backbone, 224)


def test_mismatches_are_clear_errors(tmp_path):
    hub = read_init(str(dinov2_hub_file(timm_vit(img=224), tmp_path / "dinov2_vits14.pth")))
    with pytest.raises(ConfigError, match=r"patch size 14 but .* patch size 16.*patch_size=14"):
        load_init(hub, target(img=224, patch=16))
    with pytest.raises(ConfigError, match=r"0 register token\(s\).*num_register_tokens=0"):
        load_init(hub, target(img=224, regs=4))
    with pytest.raises(ConfigError, match=r"missing key\(s\): blocks\.2\.attn\.proj\.bias"):
        load_init(hub, target(img=224, depth=3))
    with pytest.raises(ConfigError, match=r"unexpected key\(s\): blocks\.0\.ls1\.gamma.*=1e-5"):
        load_init(hub, target(img=224, ls=None))
    mae = read_init(str(mae_file(timm_vit(img=224, ls=None), tmp_path / "mae.pth")))
    with pytest.raises(ConfigError, match=r"missing key\(s\): blocks\.0\.ls1\.gamma.*=null"):
        load_init(mae, target(img=224))
    with pytest.raises(ConfigError, match=r"does not fit .*shape mismatch"):
        load_init(hub, target(img=224, dim=96))
    reg = read_init(str(dinov2_hub_file(timm_vit(img=224, regs=4), tmp_path / "reg.pth")))
    with pytest.raises(ConfigError, match=r"4 register token\(s\).*num_register_tokens=4"):
        load_init(reg, target(img=224))
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({"embeddings.cls_token": torch.zeros(1, 1, 8)}, str(hf / "model.safetensors"))
    (hf / "config.json").write_text('{"model_type": "dinov2"}')
    with pytest.raises(ConfigError, match="a Dinov2Model without layer_scale weights"):
        read_init(str(hf))
    (hf / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(ConfigError, match="a transformers 'clip' model; biovfm reads dinov2"):
        read_init(str(hf))
    with pytest.raises(ConfigError, match="no such file or folder"):
        read_init(str(tmp_path / "missing.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pth")
    with pytest.raises(ConfigError, match="not a ViT checkpoint"):
        read_init(str(tmp_path / "resnet.pth"))


def test_timm_name_reads_the_hub_cache_only(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        read_init("timm:vit_tiny_patch16_224.augreg_in21k")
    assert constants.HF_HUB_OFFLINE is False  # restored
    # The cache's own layout: models--ORG--NAME/refs/main and snapshots/REVISION/FILE.
    source = timm_vit(img=224, patch=16, dim=192, depth=12, ls=None)
    repo = tmp_path / "models--timm--vit_tiny_patch16_224.augreg_in21k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    init = read_init("timm:vit_tiny_patch16_224.augreg_in21k")
    assert init.kind == "timm" and init.no_embed_class is False
    backbone = target(img=224, patch=16, dim=192, depth=12, ls=None)
    load_init(init, backbone)
    same_features(source, backbone, 224)


def _dinov2_run_config(tmp_path: Path, init: str) -> RunConfig:
    from biovfm_core.train.presets import apply_machine_preset, apply_objective_backbone_preset

    registry = get_registry()
    config = RunConfig(objective="dinov2", backbone="vit_tiny", output=str(tmp_path), name="run")
    config.set("train.max_steps", 1)
    config.set("train.batch_size", 2)
    config.set("data.num_workers", 0)
    config.set("init", init)
    for key, value in {
        "prototypes": 64,
        "head_hidden_dim": 32,
        "head_bottleneck_dim": 16,
        "local_crops": 0,
        "global_size": 32,
    }.items():
        config.set(f"options.objective.{key}", value)
    apply_machine_preset(config, registry, "cpu")
    apply_objective_backbone_preset(config, registry)
    config.validate(registry)
    return config


def test_continued_pretraining_starts_from_the_init(tmp_path, monkeypatch):
    from biovfm_core.train.loop import train

    # vit_tiny's widths in the DINOv2 hub layout, made at 112 px: the run resamples
    # the 7x7 position table to the backbone's 224 px (14x14).
    source = timm_vit(img=112, patch=16, dim=192, depth=12)
    path = dinov2_hub_file(source, tmp_path / "dinov2_vitt16_pretrain.pth")
    seen = {}
    real = published.init_objective

    def spy(objective, backbone, init, target_name):
        record = real(objective, backbone, init, target_name)
        seen["student"] = copy.deepcopy(backbone)
        seen["teacher"] = copy.deepcopy(objective.eval_backbone())
        seen["same_object"] = objective.eval_backbone() is backbone
        return record

    monkeypatch.setattr(published, "init_objective", spy)
    result = train(_dinov2_run_config(tmp_path, str(path)), get_registry(), progress=False)
    assert result.steps == 1 and not seen["same_object"]
    # Step 0: the EMA teacher (what is evaluated and exported) holds the init's weights.
    reference = dinov2_resized(source, 224, patch=16, dim=192, depth=12)
    for which in ("teacher", "student"):
        same_features(reference, seen[which].eval(), 224)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    saved = RunConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.init == str(path) and saved.init_sha256 == digest
    exported = json.loads((tmp_path / "run" / "export" / "backbone.json").read_text())
    assert exported["biovfm"]["init"] == {"spec": str(path), "sha256": digest}
    # The run itself is a spec: its export, whose checksum is that of its weights file.
    again = read_init(str(tmp_path / "run"))
    weights_file = tmp_path / "run" / "export" / "model.safetensors"
    assert again.kind == "biovfm"
    assert again.sha256 == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    options = saved.options["backbone"]
    fresh = get_registry().build("backbones", "vit_tiny", options=options)
    load_init(again, fresh)
    weights = load_file(str(weights_file))
    for key, value in fresh.vit.state_dict().items():
        torch.testing.assert_close(value, weights[key])
    # A config naming other weights' checksum refuses them (the set-up calls this check).
    published.check_recorded_sha(read_init(str(path)), digest)
    with pytest.raises(ConfigError, match="differs from init_sha256"):
        published.check_recorded_sha(read_init(str(path)), "0" * 64)


def test_eval_takes_published_checkpoints_by_spec(tmp_path):
    from biovfm_core.models.specs import load_model

    # vit_tiny's widths (192, 12 blocks, 3 heads) in DINOv2's hub layout, 4 registers.
    source = timm_vit(img=56, dim=192, depth=12, regs=4)
    spec = str(dinov2_hub_file(source, tmp_path / "dinov2_vitt14_reg4_pretrain.pth"))
    model = load_model(spec, get_registry())
    assert model.name == spec and model.backbone_name == "vit_tiny" and model.objective == "dinov2"
    assert model.backbone.inner.vit.pos_embed.shape[1] == 1 + 4 + 16  # 56 px kept, no resampling
    # Evaluation feeds (u - 0.5) / 0.5; the checkpoint gets ImageNet normalisation instead.
    u = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    mean = torch.tensor(IMAGENET_NORM["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_NORM["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        got = model.backbone.forward_tokens((u - 0.5) / 0.5)
        want = source.forward_features((u - mean) / std)
    torch.testing.assert_close(got.cls, want[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.patches, want[:, 5:], atol=1e-4, rtol=1e-4)
    shallow = dinov2_hub_file(timm_vit(img=56, dim=192, depth=2), tmp_path / "shallow.pth")
    with pytest.raises(ConfigError, match=r"missing key\(s\): blocks\.10\."):
        load_model(str(shallow), get_registry())


def test_train_init_flag_sets_the_config_and_checks_the_path(tmp_path):
    from click.testing import CliRunner

    from biovfm_core.cli.main import cli

    missing = CliRunner().invoke(cli, ["train", "--init", str(tmp_path / "no.pth"), "--dry-run"])
    assert missing.exit_code != 0 and "no.pth: no such file or folder" in str(
        missing.output + str(missing.exception)
    )
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    path.write_bytes(b"x")
    done = CliRunner().invoke(
        cli, ["train", "--init", str(path), "--dry-run", "--device", "cuda", "--data", "demo:"]
    )
    # The dry run's preflight reads the file against the backbone: a broken one is one line.
    assert done.exit_code == 2, done.output
    assert f"error: --init {path}: not a readable torch checkpoint" in done.output
    assert f"#   init = '{path}'  <- command line (--init)" in done.output


def test_dry_run_preflight_checks_an_init_file_on_a_cpu(tmp_path):
    """A ViT-Ti/14 hub file on the CPU preset: crops fit patch 14 (56/28) and the file
    loads into the meta backbone; the wrong FFN is one line naming backbone.swiglu."""
    from click.testing import CliRunner

    from biovfm_core.cli.main import cli

    path = dinov2_hub_file(timm_vit(img=56, dim=192, depth=12), tmp_path / "vitt14.pth")
    args = [
        "train",
        "--init",
        str(path),
        "--backbone",
        "vit_tiny",
        "--device",
        "cpu",
        "--opt",
        "backbone.patch_size=14",
        "--data",
        "demo:",
        "--dry-run",
    ]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    assert "options.objective.global_size=56" in done.output
    assert "no mismatch" in done.output
    wrong = CliRunner().invoke(cli, [*args, "--opt", "backbone.swiglu=true"])
    assert wrong.exit_code == 2
    assert wrong.output.strip().splitlines()[-1].endswith("set --opt backbone.swiglu=false")
