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
