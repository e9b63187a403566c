"""The command line as a user meets it: real subprocesses where start-up matters."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from click.testing import CliRunner

from biovfm_core import __version__
from biovfm_core.cli.main import cli
from biovfm_core.config import RunConfig


def run_biovfm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "biovfm_core.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,  # a hang guard only: generous, so a busy machine never trips it
    )


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_and_plugins_do_not_import_torch():
    # `biovfm --help` and `biovfm plugins` must stay fast: no torch, no heavy plugin code.
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from biovfm_core.cli.main import cli\n"
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(cli, ['plugins']); assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('torch', 'timm', 'lightly', 'albumentations', 'kornia', "
        "'pydicom', 'nibabel') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_plugins_table_lists_every_builtin():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["PLUGIN", "DISTRIBUTION", "VERSION", "REGISTERS"]
    for plugin in ("timm_backbones", "dinov2", "mae", "supervised", "readers", "augment"):
        assert any(line.startswith(plugin) and "biovfm" in line for line in lines), plugin
    assert "objectives: dinov2" in result.output
    assert "timm:<name>" in result.output
    assert "FAILED" not in result.output
    assert "PROBLEMS" not in result.output  # the built-in plugins have none


def test_plugins_json_is_machine_readable():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    rows = json.loads(result.stdout)
    by_name = {row["plugin"]: row for row in rows}
    assert by_name["dinov2"]["registered"]["objectives"] == ["dinov2"]
    assert by_name["dinov2"]["distribution"] == "biovfm"
    assert by_name["dinov2"]["version"] == __version__
    assert "vit_tiny" in by_name["timm_backbones"]["registered"]["backbones"]
    assert all(row["error"] is None and row["problems"] == [] for row in rows)


def test_plugins_options_shows_typed_defaults():
    result = CliRunner().invoke(cli, ["plugins", "--options", "vit_tiny", "--json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    assert entry["kind"] == "backbone"
    assert entry["options"]["patch_size"]["type"] == "int"
    assert entry["options"]["patch_size"]["default"] == 16


def test_train_dry_run_shows_the_cpu_preset_for_unset_values():
    result = CliRunner().invoke(cli, ["train", "--device", "cpu", "--batch-size", "4", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "# cpu preset for values not set: backbone=vit_tiny" in result.stdout
    resolved = yaml.safe_load(
        "\n".join(x for x in result.stdout.splitlines() if not x.startswith("#"))
    )
    assert resolved["train"]["batch_size"] == 4  # the user's value wins over the preset
    assert resolved["options"]["objective"]["prototypes"] == 1024


def test_train_dry_run_resolves_flags_config_and_options(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "objective: mae\nbackbone: vit_base\ntrain:\n  batch_size: 32\n"
        "options:\n  objective:\n    mask_ratio: 0.6\n"
    )
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--config",
            str(config_file),
            "--backbone",
            "vit_tiny",
            "--set",
            "train.batch_size=16",
            "--batch-size",
            "8",
            "--opt",
            "backbone.patch_size=14",
            "--data",
            "folder:/data/a",
            "--data",
            "dicom:/data/b",
            "--device",
            "cpu",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "# objective: mae (plugin mae)" in result.output
    yaml_text = "\n".join(x for x in result.stdout.splitlines() if not x.startswith("#"))
    (tmp_path / "resolved.yaml").write_text(yaml_text)
    resolved = RunConfig.from_yaml(tmp_path / "resolved.yaml")
    assert resolved.objective == "mae"  # from the file
    assert resolved.backbone == "vit_tiny"  # flag beats file
    assert resolved.train.batch_size == 8  # named flag beats --set beats file
    # The user's option stands; the CPU preset filled only the unset ones.
    assert resolved.options["objective"]["mask_ratio"] == 0.6
    assert resolved.options["objective"]["decoder_depth"] == 2
    assert resolved.options["backbone"] == {"patch_size": 14}
    assert resolved.data.sources == ["folder:/data/a", "dicom:/data/b"]


def test_unknown_objective_suggests_the_closest_in_a_real_process():
    result = run_biovfm("train", "--objective", "dinov3", "--dry-run")
    assert result.returncode == 2
    assert "unknown objective 'dinov3'; did you mean 'dinov2'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_plugin_option_is_rejected_with_the_valid_list():
    result = CliRunner().invoke(
        cli, ["train", "--objective", "mae", "--opt", "objective.mask_ration=0.5", "--dry-run"]
    )
    assert result.exit_code == 2
    assert "unknown option objective.mask_ration" in result.output
    assert "did you mean objective.mask_ratio?" in result.output


def test_bad_config_value_names_the_flag():
    result = CliRunner().invoke(cli, ["train", "--set", "train.epochs=ten", "--dry-run"])
    assert result.exit_code == 2
    assert "train.epochs: 'ten' is not an integer" in result.output


def test_dinov2_vit_recipe_is_applied_to_vits_only_and_dry_run_says_so():
    def dry(backbone: str) -> str:
        result = CliRunner().invoke(
            cli,
            ["train", "--device", "cpu", "--backbone", backbone, "--dry-run",
             "--opt", "objective.ibot_loss_weight=0"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return result.output

    out = dry("timm:resnet18")
    assert (
        "# dinov2 recipe not applied: dinov2's backbone recipe is for vit backbones; "
        "timm:resnet18 is cnn" in out
    )
    assert "#   image_size=224, drop_path_rate=0.0, pretrained=False" in out
    out = dry("vit_tiny")
    assert "options.backbone.drop_path_rate=0.3" in out and "not applied" not in out


def test_timm_options_are_described_one_by_one():
    result = CliRunner().invoke(cli, ["plugins", "--options", "timm:", "--json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)
    assert entry["options"]["image_size"]["description"] == "input side in pixels."
    assert entry["options"]["pretrained"]["description"].startswith("load timm's weights")
    assert "Options:" not in entry["doc"]
