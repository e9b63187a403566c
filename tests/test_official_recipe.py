"""Every recipe default against the number in the official code, key named in a comment.

Sources: facebookresearch/dinov2 ``dinov2/configs/ssl_default_config.yaml`` (keys as
``section.key``), ``dinov2/layers/dino_head.py``, ``dinov2/train/train.py``,
``dinov2/utils/utils.py``; facebookresearch/mae ``models_mae.py``; the study's model
builder JiarunLiu/BioVFM ``evaluation/models/builder.py`` and
``evaluation/models/dinov2/__init__.py`` (DEFAULT_DINOV2_KWARGS).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from biovfm_dinov2.objective import RECIPE, build_dinov2
from biovfm_dinov2.plugin import BACKBONE_RECIPE
from biovfm_mae.objective import build_mae
from biovfm_timm.vit import build_vit
from click.testing import CliRunner

from biovfm_core.cli.main import cli
from biovfm_core.config import RunConfig
from biovfm_core.registry import get_registry
from biovfm_core.train.presets import apply_objective_backbone_preset

DINOV2 = build_dinov2.__kwdefaults__


def test_dinov2_heads_and_losses() -> None:
    assert DINOV2["prototypes"] == 65536  # dino.head_n_prototypes
    assert DINOV2["head_bottleneck_dim"] == 256  # dino.head_bottleneck_dim
    assert DINOV2["head_nlayers"] == 3  # dino.head_nlayers
    assert DINOV2["head_hidden_dim"] == 2048  # dino.head_hidden_dim
    assert DINOV2["dino_loss_weight"] == 1.0  # dino.loss_weight
    assert DINOV2["koleo_loss_weight"] == 0.1  # dino.koleo_loss_weight
    assert DINOV2["ibot_loss_weight"] == 1.0  # ibot.loss_weight
    assert DINOV2["mask_sample_probability"] == 0.5  # ibot.mask_sample_probability
    assert DINOV2["mask_ratio_min_max"] == (0.1, 0.5)  # ibot.mask_ratio_min_max
    assert DINOV2["ibot_separate_head"] is False  # ibot.separate_head
    assert DINOV2["ibot_head_n_prototypes"] == 65536  # ibot.head_n_prototypes
    assert DINOV2["ibot_head_bottleneck_dim"] == 256  # ibot.head_bottleneck_dim
    assert DINOV2["ibot_head_nlayers"] == 3  # ibot.head_nlayers
    assert DINOV2["ibot_head_hidden_dim"] == 2048  # ibot.head_hidden_dim
    # dino_head.py: weight_norm(last_layer), weight_g.fill_(1), weight_g trained.
    assert DINOV2["norm_last_layer"] is False
    # train.centering is "centering" in ssl_default_config but "sinkhorn_knopp" in the
    # ViT-L/g recipes (configs/train/vitl14.yaml, vitg14.yaml), which biovfm follows.
    assert DINOV2["centering"] == "sinkhorn_knopp"


def test_dinov2_teacher_crops_and_optim() -> None:
    assert DINOV2["momentum_teacher"] == 0.992  # teacher.momentum_teacher
    assert DINOV2["final_momentum_teacher"] == 1.0  # teacher.final_momentum_teacher
    assert DINOV2["warmup_teacher_temp"] == 0.04  # teacher.warmup_teacher_temp
    assert DINOV2["teacher_temp"] == 0.07  # teacher.teacher_temp
    assert DINOV2["warmup_teacher_temp_epochs"] == 30  # teacher.warmup_teacher_temp_epochs
    assert DINOV2["global_scale"] == (0.32, 1.0)  # crops.global_crops_scale
    assert DINOV2["local_crops"] == 8  # crops.local_crops_number
    assert DINOV2["local_scale"] == (0.05, 0.32)  # crops.local_crops_scale
    assert DINOV2["global_size"] == 224  # crops.global_crops_size
    assert DINOV2["local_size"] == 96  # crops.local_crops_size
    assert DINOV2["freeze_last_layer_epochs"] == 1  # optim.freeze_last_layer_epochs
    assert RECIPE.base_lr == 0.004  # optim.base_lr
    assert (RECIPE.lr_scaling, RECIPE.reference_batch) == ("sqrt", 1024)  # optim.scaling_rule
    assert RECIPE.warmup_epochs == 10  # optim.warmup_epochs
    assert RECIPE.min_lr == 1e-6  # optim.min_lr
    assert RECIPE.weight_decay == 0.04  # optim.weight_decay
    assert RECIPE.weight_decay_end == 0.4  # optim.weight_decay_end
    assert RECIPE.grad_clip == 3.0  # optim.clip_grad
    assert RECIPE.patch_embed_lr_mult == 0.2  # optim.patch_embed_lr_mult
    assert RECIPE.layer_decay == 0.9  # optim.layerwise_decay
    assert RECIPE.betas == (0.9, 0.999)  # optim.adamw_beta1, optim.adamw_beta2


def test_dinov2_backbone_recipe() -> None:
    assert BACKBONE_RECIPE["drop_path_rate"] == 0.3  # student.drop_path_rate
    assert BACKBONE_RECIPE["drop_path_uniform"] is True  # student.drop_path_uniform
    assert BACKBONE_RECIPE["layer_scale_init"] == 1e-5  # student.layerscale
    # models/vision_transformer.py DinoVisionTransformer: interpolate_offset=0.1,
    # interpolate_antialias=False (dinov2/hub/backbones.py passes the same).
    assert BACKBONE_RECIPE["pos_interpolation"] == "dinov2"
    assert build_vit.__kwdefaults__["patch_size"] == 16  # student.patch_size
    assert build_vit.__kwdefaults__["num_register_tokens"] == 0  # student.num_register_tokens
    # The preset fills what the user left unset, and leaves what they set.
    config = RunConfig()
    config.set("objective", "dinov2")
    config.set("backbone", "vit_small")
    config.set("options.backbone.drop_path_rate", 0.1)
    applied = apply_objective_backbone_preset(config, get_registry())
    assert applied == {
        "options.backbone.drop_path_uniform": True,
        "options.backbone.layer_scale_init": 1e-5,
        "options.backbone.pos_interpolation": "dinov2",
    }
    assert config.options["backbone"]["drop_path_rate"] == 0.1
    # MAE's encoder has neither (models_mae.py: Block(...) without drop_path or init_values).
    config = RunConfig()
    config.set("objective", "mae")
    assert apply_objective_backbone_preset(config, get_registry()) == {}


def test_dry_run_prints_the_resolved_recipe() -> None:
    # --device cuda: the paper-scale values, not the CPU demo's.
    args = ["train", "--objective", "dinov2", "--backbone", "vit_large", "--device", "cuda"]
    result = CliRunner().invoke(cli, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for shown in (
        "drop_path_rate=0.3",
        "drop_path_uniform=True",
        "layer_scale_init=1e-05",
        "norm_last_layer=False",
        "prototypes=65536",
    ):
        assert shown in out, shown
    resolved = yaml.safe_load("\n".join(line for line in out.splitlines() if line[:1] != "#"))
    assert resolved["options"]["backbone"]["drop_path_rate"] == 0.3  # saved with the run


def test_mae_model() -> None:
    mae = build_mae.__kwdefaults__
    assert mae["mask_ratio"] == 0.75  # models_mae.py MaskedAutoencoderViT(mask_ratio=0.75)
    # models_mae.py mae_vit_*_dec512d8b: decoder_embed_dim=512, decoder_depth=8,
    # decoder_num_heads=16.
    assert (mae["decoder_dim"], mae["decoder_depth"], mae["decoder_heads"]) == (512, 8, 16)
    # models_mae.py: pos_embed fixed sin-cos (requires_grad=False); initialize_weights.
    assert mae["sincos_pos_embed"] is True and mae["mae_init"] is True


def test_study_vit_huge_row_is_built_as_the_study_built_it() -> None:
    from biovfm_core.sweep import load_sweep

    sweeps = Path(__file__).resolve().parents[1] / "examples" / "sweeps"
    registry = get_registry()
    (cell, *_) = load_sweep(sweeps / "study_vit_huge.yaml").cells()
    config = cell.config
    apply_objective_backbone_preset(config, registry)
    config.validate(registry)
    with torch.device("meta"):
        vit = registry.build("backbones", "vit_huge", options=config.options["backbone"]).vit
    # builder.py, dino_vit_huge: patch_size 14, drop_path_rate 0.4, ffn "swiglufused";
    # DEFAULT_DINOV2_KWARGS: init_values 1e-5, drop_path_uniform True.
    assert vit.patch_embed.patch_size == (14, 14)
    assert {b.drop_path1.drop_prob for b in vit.blocks} == {0.4}
    assert vit.blocks[0].mlp.fc2.in_features == 3416
    assert vit.blocks[0].ls1.gamma.shape == (1280,)
    assert config.options["backbone"]["layer_scale_init"] == pytest.approx(1e-5)
    # DEFAULT_DINOV2_KWARGS patch_size 16 for every other size.
    for cell in load_sweep(sweeps / "study.yaml").cells():
        assert cell.config.options["backbone"]["patch_size"] == 16
