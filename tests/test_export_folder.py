"""The export is a timm / Hugging Face model folder that loads without biovfm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import timm
import torch

from biovfm_core.models.export import export_backbone
from biovfm_core.registry import get_registry

NORM = {"mean": [0.25, 0.25, 0.25], "std": [0.5, 0.4, 0.3]}

# Site-packages without its .pth files: timm and torch import, the editable biovfm not.
LOAD = """
import sys
sys.path.append(sys.argv[1])
try:
    import biovfm_core
except ImportError:
    pass
else:
    raise SystemExit("biovfm_core is importable")
import timm, torch
model = timm.create_model("local-dir:" + sys.argv[2], pretrained=True).eval()
with torch.no_grad():
    tokens = model.forward_features(torch.load(sys.argv[3]))
torch.save({"tokens": tokens, "mean": list(model.pretrained_cfg["mean"])}, sys.argv[4])
"""


def test_export_folder_loads_in_a_process_with_only_timm(tmp_path):
    from biovfm_core.config import RunConfig

    torch.manual_seed(0)
    backbone = (
        get_registry()
        .build("backbones", "vit_tiny", options={"image_size": 64, "num_register_tokens": 2})
        .eval()
    )
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "results.md").write_text(
        "# biovfm eval results\n\n| model | AUC |\n| run | 0.91 |\n"
    )
    config = RunConfig(objective="dinov2", backbone="vit_tiny")
    config.data.sources = ["folder:/data/ct"]
    init = {"spec": "dinov2_vits14_pretrain.pth", "sha256": "ab" * 32}
    export_backbone(
        backbone,
        run / "export",
        backbone_name="vit_tiny",
        backbone_options={"image_size": 64, "num_register_tokens": 2},
        step=3,
        source="dinov2 run run",
        input_norm=NORM,
        init=init,
        run_config=config,
    )
    export = run / "export"
    assert json.loads((export / "backbone.json").read_text())["biovfm"]["init"] == init
    config_json = json.loads((export / "config.json").read_text())
    assert config_json["architecture"] == "vit_tiny_patch16_224"
    assert config_json["model_args"]["reg_tokens"] == 2
    assert config_json["pretrained_cfg"]["std"] == NORM["std"]
    card = (export / "README.md").read_text()
    assert "library_name: timm" in card and "| run | 0.91 |" in card
    assert "folder:/data/ct" in card and "dinov2_vits14_pretrain.pth" in card

    images = torch.randn(2, 3, 64, 64)
    torch.save(images, tmp_path / "in.pt")
    site = str(Path(timm.__file__).parents[1])
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", LOAD, site, str(export), str(tmp_path / "in.pt"),
         str(tmp_path / "out.pt")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = torch.load(tmp_path / "out.pt")
    assert loaded["mean"] == NORM["mean"]
    with torch.no_grad():
        want = backbone.forward_tokens(images)
    torch.testing.assert_close(loaded["tokens"][:, 0], want.cls)
    torch.testing.assert_close(loaded["tokens"][:, 3:], want.patches)  # CLS + 2 registers


def test_the_export_holds_its_weights_once_and_every_loader_reads_them(tmp_path):
    from safetensors.torch import load_file

    from biovfm_core.models.runs import load_export

    torch.manual_seed(0)
    options = {"image_size": 32}
    backbone = get_registry().build("backbones", "vit_tiny", options=options).eval()
    export = tmp_path / "export"
    # A folder exported before (two names for the same bytes) is exported into again.
    export.mkdir()
    (export / "backbone.safetensors").write_bytes(b"an earlier export's second copy")
    weights = export_backbone(
        backbone, export, backbone_name="vit_tiny", backbone_options=options, step=1, source="t"
    )
    assert weights == export / "model.safetensors"
    assert sorted(p.name for p in export.iterdir()) == [
        "README.md", "backbone.json", "config.json", "model.safetensors"
    ]  # fmt: skip
    assert weights.stat().st_nlink == 1  # one file, not a second name for it
    info = json.loads((export / "backbone.json").read_text())["biovfm"]
    assert info["weights"] == "model.safetensors"
    stored = load_file(str(weights))
    assert len(stored) == len(backbone.export_state()[0]) and stored  # every tensor, once

    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = backbone.forward_tokens(images).patches
        # biovfm's loader (eval, inspect, --init) ...
        got = load_export(export, get_registry()).backbone.forward_tokens(images).patches
        torch.testing.assert_close(got, want)
        # ... timm's, from the folder alone ...
        model = timm.create_model("local-dir:" + str(export), pretrained=True).eval()
        torch.testing.assert_close(model.forward_features(images)[:, 1:], want)
    # ... and an export from before (backbone.safetensors, no `weights` in backbone.json).
    old = tmp_path / "old"
    old.mkdir()
    weights.rename(old / "backbone.safetensors")
    description = json.loads((export / "backbone.json").read_text())
    del description["biovfm"]["weights"]
    (old / "backbone.json").write_text(json.dumps(description))
    with torch.no_grad():
        got = load_export(old, get_registry()).backbone.forward_tokens(images).patches
    torch.testing.assert_close(got, want)
