"""Named recipes: every value against the official configs, and the preflight.

OFFICIAL is transcribed by hand from the fetched repositories (facebookresearch/dinov2
``dinov2/configs/ssl_default_config.yaml``, ``configs/train/vitl16_short.yaml``,
``vitl14.yaml``, ``vitg14.yaml``, ``dinov2/loss/dino_clstoken_loss.py``;
facebookresearch/mae ``PRETRAIN.md``, ``main_pretrain.py``, ``models_mae.py``,
``engine_pretrain.py``), keyed exactly as the recipes cite them, so a recipe value that
drifts from its source fails here.
"""

from __future__ import annotations

import random
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from biovfm_core.cli.main import cli
from biovfm_core.config import RunConfig
from biovfm_core.errors import ConfigError
from biovfm_core.recipes import load, names
from biovfm_core.registry import get_registry
from biovfm_core.train.preflight import recipe_memory_table, run_preflight

REPO = Path(__file__).resolve().parents[1]
SSL = "dinov2/configs/ssl_default_config.yaml"
SHORT = "dinov2/configs/train/vitl16_short.yaml"
L14 = "dinov2/configs/train/vitl14.yaml"
G14 = "dinov2/configs/train/vitg14.yaml"
LOSS = "dinov2/loss/dino_clstoken_loss.py"

OFFICIAL: dict[str, object] = {
    # ssl_default_config.yaml
    f"{SSL}: dino.loss_weight": 1.0,
    f"{SSL}: dino.head_n_prototypes": 65536,
    f"{SSL}: dino.head_bottleneck_dim": 256,
    f"{SSL}: dino.head_nlayers": 3,
    f"{SSL}: dino.head_hidden_dim": 2048,
    f"{SSL}: dino.koleo_loss_weight": 0.1,
    f"{SSL}: ibot.loss_weight": 1.0,
    f"{SSL}: ibot.mask_sample_probability": 0.5,
    f"{SSL}: ibot.mask_ratio_min_max": [0.1, 0.5],
    f"{SSL}: ibot.separate_head": False,
    f"{SSL}: ibot.head_n_prototypes": 65536,
    f"{SSL}: ibot.head_bottleneck_dim": 256,
    f"{SSL}: ibot.head_nlayers": 3,
    f"{SSL}: ibot.head_hidden_dim": 2048,
    f"{SSL}: train.batch_size_per_gpu": 64,
    f"{SSL}: train.dataset_path": "ImageNet:split=TRAIN",
    f"{SSL}: train.saveckp_freq": 20,
    f"{SSL}: train.seed": 0,
    f"{SSL}: train.num_workers": 10,
    f"{SSL}: train.OFFICIAL_EPOCH_LENGTH": 1250,
    f"{SSL}: train.cache_dataset": True,
    f"{SSL}: train.centering": "centering",
    f"{SSL}: student.arch": "vit_large",
    f"{SSL}: student.patch_size": 16,
    f"{SSL}: student.drop_path_rate": 0.3,
    f"{SSL}: student.layerscale": 1.0e-05,
    f"{SSL}: student.drop_path_uniform": True,
    f"{SSL}: student.ffn_layer": "mlp",
    f"{SSL}: student.block_chunks": 0,
    f"{SSL}: student.qkv_bias": True,
    f"{SSL}: student.proj_bias": True,
    f"{SSL}: student.ffn_bias": True,
    f"{SSL}: student.num_register_tokens": 0,
    f"{SSL}: student.interpolate_antialias": False,
    f"{SSL}: student.interpolate_offset": 0.1,
    f"{SSL}: teacher.momentum_teacher": 0.992,
    f"{SSL}: teacher.final_momentum_teacher": 1,
    f"{SSL}: teacher.warmup_teacher_temp": 0.04,
    f"{SSL}: teacher.teacher_temp": 0.07,
    f"{SSL}: teacher.warmup_teacher_temp_epochs": 30,
    f"{SSL}: optim.epochs": 100,
    f"{SSL}: optim.weight_decay": 0.04,
    f"{SSL}: optim.weight_decay_end": 0.4,
    f"{SSL}: optim.base_lr": 0.004,
    f"{SSL}: optim.lr": 0.0,
    f"{SSL}: optim.warmup_epochs": 10,
    f"{SSL}: optim.min_lr": 1.0e-06,
    f"{SSL}: optim.clip_grad": 3.0,
    f"{SSL}: optim.freeze_last_layer_epochs": 1,
    f"{SSL}: optim.scaling_rule": "sqrt_wrt_1024",
    f"{SSL}: optim.patch_embed_lr_mult": 0.2,
    f"{SSL}: optim.layerwise_decay": 0.9,
    f"{SSL}: optim.adamw_beta1, optim.adamw_beta2": [0.9, 0.999],
    f"{SSL}: crops.global_crops_scale": [0.32, 1.0],
    f"{SSL}: crops.local_crops_number": 8,
    f"{SSL}: crops.local_crops_scale": [0.05, 0.32],
    f"{SSL}: crops.global_crops_size": 224,
    f"{SSL}: crops.local_crops_size": 96,
    f"{SSL}: evaluation.eval_period_iterations": 12500,
    # compute_precision is a block of FSDP settings, kept as one not-applied entry
    f"{SSL}: compute_precision": "FSDP mixed precision: fp16 params, fp16/fp32 reduce, "
    "fp32 buffers, grad scaler; SHARD_GRAD_OP",
    # dino_clstoken_loss.py: DINOLoss(student_temp=0.1, center_momentum=0.9),
    # sinkhorn_knopp_teacher(n_iterations=3)
    f"{LOSS}: DINOLoss.student_temp": 0.1,
    f"{LOSS}: DINOLoss.center_momentum": 0.9,
    f"{LOSS}: sinkhorn_knopp_teacher.n_iterations": 3,
    # vitl16_short.yaml
    f"{SHORT}: train.dataset_path": "ImageNet:split=TRAIN",
    f"{SHORT}: train.batch_size_per_gpu": 64,
    f"{SHORT}: student.block_chunks": 4,
}
for _f, _arch in ((L14, "vit_large"), (G14, "vit_giant2")):
    OFFICIAL.update(
        {
            f"{_f}: dino.head_n_prototypes": 131072,
            f"{_f}: dino.head_bottleneck_dim": 384,
            f"{_f}: ibot.separate_head": True,
            f"{_f}: ibot.head_n_prototypes": 131072,
            f"{_f}: train.dataset_path": "ImageNet22k",
            f"{_f}: train.centering": "sinkhorn_knopp",
            f"{_f}: student.arch": _arch,
            f"{_f}: student.patch_size": 14,
            f"{_f}: student.drop_path_rate": 0.4,
            f"{_f}: student.ffn_layer": "swiglufused",
            f"{_f}: student.block_chunks": 4,
            f"{_f}: teacher.momentum_teacher": 0.994,
            f"{_f}: optim.epochs": 500,
            f"{_f}: optim.weight_decay_end": 0.2,
            f"{_f}: optim.base_lr": 2.0e-04,
            f"{_f}: optim.warmup_epochs": 80,
            f"{_f}: optim.layerwise_decay": 1.0,
            f"{_f}: crops.local_crops_size": 98,
        }
    )
OFFICIAL[f"{L14}: train.batch_size_per_gpu"] = 32
OFFICIAL[f"{G14}: train.batch_size_per_gpu"] = 12
OFFICIAL.update(
    {
        # PRETRAIN.md's command and text
        "mae/PRETRAIN.md: --batch_size": 64,
        "mae/PRETRAIN.md: --mask_ratio": 0.75,
        "mae/PRETRAIN.md: --norm_pix_loss": True,
        "mae/PRETRAIN.md: --epochs": 800,
        "mae/PRETRAIN.md: --warmup_epochs": 40,
        "mae/PRETRAIN.md: --blr": 1.5e-4,
        "mae/PRETRAIN.md: --weight_decay": 0.05,
        "mae/PRETRAIN.md: effective batch size": 4096,  # 64 x 8 nodes x 8 GPUs
        "mae/PRETRAIN.md: lr = blr * effective batch size / 256": "linear/256",
        # main_pretrain.py
        "mae/main_pretrain.py: --input_size": 224,
        "mae/main_pretrain.py: --min_lr": 0.0,
        "mae/main_pretrain.py: --seed": 0,
        "mae/main_pretrain.py: --accum_iter": 1,
        "mae/main_pretrain.py: --num_workers": 10,
        "mae/main_pretrain.py: AdamW.betas": [0.9, 0.95],
        "mae/main_pretrain.py: RandomResizedCrop.scale": [0.2, 1.0],
        "mae/main_pretrain.py: transform_train": "RandomHorizontalFlip, ImageNet mean/std Normalize",
        "mae/main_pretrain.py: optim_factory.add_weight_decay": "no decay: bias, 1-d",
        "mae/engine_pretrain.py: loss_scaler.clip_grad": None,
        "mae/engine_pretrain.py: torch.cuda.amp.autocast": "fp16",
        # models_mae.py: encoder blocks are timm Blocks without drop-path or LayerScale,
        # a learned-free sin-cos position table, initialize_weights
        "mae/models_mae.py: MaskedAutoencoderViT.blocks": "plain",
        "mae/models_mae.py: MaskedAutoencoderViT.pos_embed": "fixed sin-cos",
        "mae/models_mae.py: MaskedAutoencoderViT.initialize_weights": "xavier",
    }
)
for _model, _patch in (
    ("mae_vit_base_patch16_dec512d8b", 16),
    ("mae_vit_large_patch16_dec512d8b", 16),
    ("mae_vit_huge_patch14_dec512d8b", 14),
):
    OFFICIAL.update(
        {
            f"mae/models_mae.py: {_model}.patch_size": _patch,
            f"mae/models_mae.py: {_model}.decoder_embed_dim": 512,
            f"mae/models_mae.py: {_model}.decoder_depth": 8,
            f"mae/models_mae.py: {_model}.decoder_num_heads": 16,
            f"mae/models_mae.py: {_model}.norm_layer": 1e-6,  # LayerNorm eps
        }
    )
OFFICIAL["mae/PRETRAIN.md: --model"] = "mae_vit_{base,large}_patch16, mae_vit_huge_patch14"

# facebookresearch/dinov3 at 6876159a, dinov3/configs/train/dinov3_vit7b16_high_res_adapt.yaml
HRA = "dinov3/configs/train/dinov3_vit7b16_high_res_adapt.yaml"
OFFICIAL.update(
    {
        f"{HRA}: crops.global_crops_size": [512, 768, 768, 768, 768],
        f"{HRA}: crops.local_crops_size": [112, 112, 168, 224, 336],
        f"{HRA}: crops.local_crops_number": 8,
        f"{HRA}: crops.global_crops_scale": [0.32, 1.0],
        f"{HRA}: crops.local_crops_scale": [0.05, 0.32],
        f"{HRA}: crops.gram_teacher_crops_size": [768, 1152, 1152, 1152, 1152],
        f"{HRA}: crops.global_local_crop_pairs_ratios": [0.3, 0.3, 0.3, 0.05, 0.05],
        f"{HRA}: crops.gram_teacher_no_distortions": True,
        f"{HRA}: schedules.teacher_temp.start": 0.07,
        f"{HRA}: schedules.teacher_temp.end": 0.07,
        f"{HRA}: schedules.teacher_temp.warmup_epochs": 0,
        f"{HRA}: schedules.momentum.start": 0.999,
        f"{HRA}: schedules.momentum.end": 0.999,
        f"{HRA}: schedules.lr.freeze_last_layer_epochs": 0,
        f"{HRA}: schedules.lr.end": 1.25e-05,
        f"{HRA}: schedules.lr.cosine_epochs": 10,
        f"{HRA}: schedules.lr": "start 0, peak 0, end 1.25e-05, cosine_epochs 10",
        f"{HRA}: schedules.weight_decay.start": 0.04,
        f"{HRA}: schedules.weight_decay.end": 0.04,
        f"{HRA}: dino.loss_weight": 1.0,
        f"{HRA}: dino.koleo_loss_weight": 0.1,
        f"{HRA}: dino.head_n_prototypes": "dino 262144 prototypes, iBOT separate head 98304, "
        "vit_7b patch 16",
        f"{HRA}: dino.local_loss_weight_schedule": 0.5,
        f"{HRA}: ibot.loss_weight": 1.0,
        f"{HRA}: ibot.mask_sample_probability": 0.5,
        f"{HRA}: ibot.mask_ratio_min_max": [0.1, 0.5],
        f"{HRA}: gram.loss_weight_schedule": 1.5,  # start = peak = end = 1.5
        f"{HRA}: gram.rep_update": False,
        f"{HRA}: gram.img_level": True,
        f"{HRA}: gram.normalized": True,
        f"{HRA}: gram.remove_neg": False,
        f"{HRA}: gram.tokens_used": "all",
        f"{HRA}: optim.epochs": 30,
        f"{HRA}: train.OFFICIAL_EPOCH_LENGTH": 1000,
        f"{HRA}: optim.clip_grad": 30.0,
        f"{HRA}: optim.layerwise_decay": 0.98,
        f"{HRA}: optim.patch_embed_lr_mult": 0.2,
        f"{HRA}: optim.adamw_beta1, optim.adamw_beta2": [0.9, 0.99],
    }
)

# Official spellings that are ours in another form: (our key, official source) -> value.
TRANSLATED = {
    ("backbone", f"{SSL}: student.arch"): "vit_large",
    ("backbone", f"{L14}: student.arch"): "vit_large",
    ("backbone", f"{G14}: student.arch"): "vit_giant",  # vit_giant2: 1536 wide, 40 blocks
    ("options.backbone.swiglu", f"{SSL}: student.ffn_layer"): False,
    ("options.backbone.swiglu", f"{L14}: student.ffn_layer"): True,
    ("options.backbone.swiglu", f"{G14}: student.ffn_layer"): True,
    ("optim.lr_scaling", f"{SSL}: optim.scaling_rule"): "sqrt",
    ("optim.reference_batch", f"{SSL}: optim.scaling_rule"): 1024,
    ("options.backbone.image_size", f"{SSL}: crops.global_crops_size"): 224,
    ("optim.lr_scaling", "mae/PRETRAIN.md: lr = blr * effective batch size / 256"): "linear",
    ("optim.reference_batch", "mae/PRETRAIN.md: lr = blr * effective batch size / 256"): 256,
    ("options.backbone.drop_path_rate", "mae/models_mae.py: MaskedAutoencoderViT.blocks"): 0.0,
    ("options.backbone.layer_scale_init", "mae/models_mae.py: MaskedAutoencoderViT.blocks"): None,
    ("options.backbone.num_register_tokens", "mae/models_mae.py: MaskedAutoencoderViT.blocks"): 0,
    ("options.backbone.swiglu", "mae/models_mae.py: MaskedAutoencoderViT.blocks"): False,
    (
        "options.objective.sincos_pos_embed",
        "mae/models_mae.py: MaskedAutoencoderViT.pos_embed",
    ): True,
    (
        "options.objective.mae_init",
        "mae/models_mae.py: MaskedAutoencoderViT.initialize_weights",
    ): True,
    ("clip_grad", "mae/engine_pretrain.py: loss_scaler.clip_grad"): None,
    # biovfm draws one crop size per run: the recipe takes the first (most frequent) pair
    ("options.objective.global_size", f"{HRA}: crops.global_crops_size"): 512,
    ("options.objective.local_size", f"{HRA}: crops.local_crops_size"): 112,
    ("options.objective.gram_crop_size", f"{HRA}: crops.gram_teacher_crops_size"): 768,
    ("options.objective.gram_update_frequency", f"{HRA}: gram.rep_update"): 0,  # never
    ("optim.warmup_epochs", f"{HRA}: schedules.lr.cosine_epochs"): 10,
    ("crops.mixed_sizes", f"{HRA}: crops.global_local_crop_pairs_ratios"): "global "
    "512/768/768/768/768, local 112/112/168/224/336, Gram 768/1152x4, loader ratios "
    "0.3/0.3/0.3/0.05/0.05",
    ("layer_decay", "mae/main_pretrain.py: optim_factory.add_weight_decay"): None,
    (
        "no_weight_decay",
        "mae/main_pretrain.py: optim_factory.add_weight_decay",
    ): "biases and 1-d parameters",
    ("amp", "mae/engine_pretrain.py: torch.cuda.amp.autocast"): "fp16 autocast with NativeScaler",
}
MAE_MODELS = {
    "vit_base": "mae_vit_base_patch16",
    "vit_large": "mae_vit_large_patch16",
    "vit_huge": "mae_vit_huge_patch14",
}

ALL = ["_dinov2-ssl-default", "_mae-pretrain", *names()]


def _entries(recipe):
    return [*recipe.values.values(), *recipe.not_applied.values(), *recipe.built_in.values()]


@pytest.mark.parametrize("name", ALL)
def test_every_value_is_the_official_one(name: str) -> None:
    for entry in _entries(load(name)):
        if not entry.source.startswith(("dinov2/", "dinov3/", "mae/")):
            assert entry.source.startswith(("study: ", "derived: ")), entry
            continue
        assert entry.source in OFFICIAL, f"{name}: {entry.key}: {entry.source} not transcribed"
        if entry.source == "mae/PRETRAIN.md: --model":
            # --model mae_vit_large_patch16 (or base / huge_patch14, as PRETRAIN.md says)
            assert entry.value in MAE_MODELS, (name, entry)
            continue
        if (entry.key, entry.source) in TRANSLATED:
            expected = TRANSLATED[entry.key, entry.source]
        else:
            expected = OFFICIAL[entry.source]
        value = entry.value
        if isinstance(expected, float) and isinstance(value, (int, float)):
            assert value == pytest.approx(expected), (name, entry)
        else:
            assert value == expected, (name, entry)


@pytest.mark.parametrize(
    ("name", "files"),
    [
        ("dinov2-vitl16-short", (SSL, SHORT)),
        ("dinov2-vitl14", (SSL, L14)),
        ("dinov2-vitg14", (SSL, G14)),
    ],
)
def test_dinov2_recipes_take_every_key_from_the_right_file(name: str, files) -> None:
    """Each official key is in the recipe, and a key the train file sets is cited from
    the train file (not ssl_default's value, the bug this replaced)."""
    cited = {e.source for e in _entries(load(name))}
    base, train = files
    train_keys = {s.split(": ", 1)[1] for s in OFFICIAL if s.startswith(train)}
    for source in OFFICIAL:
        if not source.startswith((base, train)):
            continue
        key = source.split(": ", 1)[1]
        want = f"{train}: {key}" if key in train_keys else f"{base}: {key}"
        assert want in cited, f"{name}: {want} is neither applied nor listed as not applied"


@pytest.mark.parametrize("name", ["mae-vitb16", "mae-vitl16", "mae-vith14"])
def test_mae_recipes_match_their_model(name: str) -> None:
    recipe = load(name)
    model = MAE_MODELS[recipe.values["backbone"].value]
    for key in ("patch_size",):
        assert model in recipe.values[f"options.backbone.{key}"].source
    assert recipe.values["options.backbone.patch_size"].value == int(model[-2:])
    for entry in _entries(load("_mae-pretrain")):
        assert entry.source in OFFICIAL or not entry.source.startswith("mae/")


def test_the_required_recipes_exist() -> None:
    for name in (
        "dinov2-vitl16-short",
        "dinov2-vitl14",
        "dinov2-vitg14",
        "mae-vitb16",
        "mae-vitl16",
        "mae-vith14",
    ):
        assert name in names()
    assert any(n.startswith("biovfm21m-") for n in names())
    assert load("dinov2-vitg14").per_gpu_batch == 12
    study = load("biovfm21m-dinov2-vith14")
    assert study.not_applied["study.schedule"].value is None  # the study does not state it


def test_precedence_recipe_under_config_under_command_line(tmp_path: Path) -> None:
    run = tmp_path / "run.yaml"
    run.write_text("recipe: dinov2-vitl14\noptim: {base_lr: 0.001}\n")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--config",
            str(run),
            "--device",
            "cuda",
            "--opt",
            "objective.prototypes=4096",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"optim.base_lr = 0.001  <- your config ({run})" in out
    assert (
        "options.objective.prototypes = 4096  <- command line (--opt objective.prototypes=4096)"
        in out
    )
    assert (
        "optim.warmup_epochs = 80.0  <- recipe dinov2-vitl14 "
        "(dinov2/configs/train/vitl14.yaml: optim.warmup_epochs)" in out
    )
    assert "# not applied: train.batch_size_per_gpu=32" in out
    assert "# preflight: one dinov2 step on vit_large ran on the meta device" in out


def test_recipe_wins_over_the_cpu_preset() -> None:
    result = CliRunner().invoke(
        cli, ["train", "--recipe", "mae-vitb16", "--device", "cpu", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "options.objective.image_size = 224  <- recipe mae-vitb16" in result.stdout
    assert "train.log_every = 5  <- cpu preset" in result.stdout


@pytest.mark.parametrize("name", names())
def test_every_recipe_passes_the_preflight_at_its_real_sizes(name: str) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--recipe",
            name,
            "--device",
            "cuda",
            "--data",
            "folder:/nonexistent",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ran on the meta device at these sizes; no mismatch" in result.stdout
    assert "# memory per GPU" in result.stdout


# One recipe per objective and patch size in the default suite (the crop and patch
# sizes are what differ); the preflight above covers every recipe at its real sizes.
ONE_STEP_DEFAULT = {"dinov2-vitg14", "dinov2-vitl16-short", "mae-vith14", "mae-vitb16"}


@pytest.mark.parametrize(
    "name",
    [n if n in ONE_STEP_DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in names()],
)
def test_every_recipe_runs_one_cpu_step_small(name: str, tmp_path: Path) -> None:
    """The same patch and crop sizes, on ViT-Ti with small heads and decoder."""
    recipe = load(name)
    shrink = [
        "--opt",
        "objective.prototypes=128",
        "--opt",
        "objective.ibot_head_n_prototypes=128",
        "--opt",
        "objective.head_hidden_dim=64",
        "--opt",
        "objective.ibot_head_hidden_dim=64",
        "--opt",
        "objective.local_crops=2",
    ]
    if recipe.values["objective"].value == "mae":
        shrink = [
            "--opt",
            "objective.decoder_dim=64",
            "--opt",
            "objective.decoder_depth=1",
            "--opt",
            "objective.decoder_heads=4",
        ]
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--recipe",
            name,
            "--device",
            "cpu",
            "--backbone",
            "vit_tiny",
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--output",
            str(tmp_path),
            "--name",
            "r",
            "--set",
            "data.num_workers=0",
            "--set",
            "data.fraction=0.1",
            *shrink,
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.exception is None
    assert (tmp_path / "r" / "summary.json").is_file()


def test_a_wrong_crop_size_is_one_line_naming_the_option() -> None:
    result = CliRunner().invoke(
        cli, ["train", "--recipe", "dinov2-vitl14", "--opt", "objective.local_size=96", "--dry-run"]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[-1] == (
        "error: objective.local_size=96 is not a multiple of the patch size 14 "
        "(backbone.patch_size): set --opt objective.local_size=84 or 98"
    )
    assert "Traceback" not in result.output


def test_the_cpu_preset_fits_crops_to_the_patch() -> None:
    result = CliRunner().invoke(
        cli, ["train", "--device", "cpu", "--opt", "backbone.patch_size=14", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "options.objective.global_size=56" in result.output
    assert "options.objective.local_size=28" in result.output


def test_the_documented_slurm_command_passes_the_preflight() -> None:
    text = (REPO / "docs" / "training.md").read_text()
    block = text.split("#SBATCH", 1)[1].split("```", 1)[0]
    command = " ".join(line.rstrip("\\") for line in block.splitlines()[1:])
    args = shlex.split(command.split("biovfm_core.cli.main", 1)[1], comments=True)
    assert args[:3] == ["train", "--recipe", "dinov2-vitg14"]
    args = [("folder:/nonexistent" if a == "catalog.yaml" else a) for a in args]
    result = CliRunner().invoke(cli, [*args, "--device", "cuda", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "no mismatch" in result.stdout
    assert "per-GPU batch 12" in result.stdout


def test_every_sweep_cell_passes_the_preflight(tmp_path: Path) -> None:
    from biovfm_core.sweep import load_sweep

    seen = set()
    for path in sorted((REPO / "examples" / "sweeps").glob("*.yaml")):
        for cell in load_sweep(path).cells():
            config = cell.config
            config.data.index = None
            config.data.sources = ["folder:/nonexistent"]
            key = (config.recipe, config.objective, config.backbone, str(config.options))
            if key in seen:  # data fractions and seeds build the same model
                continue
            seen.add(key)
            file = tmp_path / f"{len(seen)}.yaml"
            config.save(file)
            result = CliRunner().invoke(
                cli, ["train", "--config", str(file), "--device", "cuda", "--dry-run"]
            )
            assert result.exit_code == 0, (path.name, cell.id, result.output)
            assert "no mismatch" in result.stdout, (path.name, cell.id)


def test_preflight_draws_no_random_numbers() -> None:
    config = RunConfig()
    config.set("train.batch_size", 8)
    registry = get_registry()
    config.validate(registry)
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    assert run_preflight(config, registry).problems == []
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_fsdp_without_blocks_is_one_line() -> None:
    config = RunConfig()
    config.set("backbone", "timm:resnet18")
    config.set("options.objective.ibot_loss_weight", 0.0)
    config.set("train.activation_checkpointing", True)
    registry = get_registry()
    config.validate(registry)
    problems = run_preflight(config, registry).problems
    assert len(problems) == 1
    assert "set train.activation_checkpointing=false" in problems[0]


def test_recipes_command_lists_and_shows_without_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom biovfm_core.cli.main import cli\n"
        "r = CliRunner().invoke(cli, ['recipes']); assert r.exit_code == 0, r.output\n"
        "assert 'dinov2-vitg14' in r.output and 'ViT-g/14' in r.output\n"
        "r = CliRunner().invoke(cli, ['recipes', 'dinov2-vitl14']); assert r.exit_code == 0\n"
        "assert 'dinov2/configs/train/vitl14.yaml: optim.base_lr' in r.output\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_unknown_recipe_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="did you mean 'dinov2-vitl14'"):
        load("dinov2-vitl14x")


def test_docs_memory_table_is_the_computed_one() -> None:
    text = (REPO / "docs" / "training.md").read_text()
    for row in recipe_memory_table(get_registry()):
        assert row in text, row


def test_docs_recipe_table_lists_every_recipe() -> None:
    text = (REPO / "docs" / "training.md").read_text()
    for name in names():
        recipe = load(name)
        assert f"| `{name}` | {recipe.model} | {recipe.summary} |" in text, name
