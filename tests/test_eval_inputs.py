"""Bad inputs to `biovfm eval` fail with one line naming the file and the fault:
labels outside the task's classes, and corrupt or mismatched exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from biovfm_core.cli.main import cli
from biovfm_core.errors import ConfigError
from biovfm_core.eval.data import load_benchmark
from biovfm_core.eval.synthetic import write_medmnist_npz
from biovfm_core.models.export import export_backbone
from biovfm_core.models.specs import load_model
from biovfm_core.models.weights import describe_mismatch
from biovfm_core.registry import get_registry


def _with_test_labels(src, dst, values):
    arrays = dict(np.load(src))
    for i, v in enumerate(values):
        arrays["test_labels"][i, 0] = v
    dst.parent.mkdir(exist_ok=True)
    np.savez(dst, **arrays)
    return dst


def test_labels_outside_the_classes_fail_naming_file_key_and_values(tmp_path):
    reg = get_registry()
    # An unknown file: its classes are the train split's (3 here); 9 is not one of them.
    good = write_medmnist_npz(tmp_path / "toy.npz", num_classes=3, sizes=(12, 6, 6))
    bad = _with_test_labels(good, tmp_path / "bad" / "labels_out_of_range.npz", [9])
    with pytest.raises(ConfigError) as err:
        load_benchmark("medmnist", str(bad), reg)
    text = str(err.value)
    assert str(bad) in text and "key 'test_labels' holds label 9 out of range [0, 2]" in text
    assert "(1 of 6 entries)" in text and "classes the train split uses" in text
    # A MedMNIST flag: its table's 9 classes; labels 9 and 12 are both named.
    path = write_medmnist_npz(tmp_path / "pathmnist.npz", num_classes=9, sizes=(18, 9, 9))
    bad = _with_test_labels(path, tmp_path / "bad" / "pathmnist.npz", [9, 12, 9])
    with pytest.raises(ConfigError, match=r"holds labels 9, 12 out of range \[0, 8\]"):
        load_benchmark("medmnist", str(bad), reg)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    options = {"image_size": 32}
    backbone = get_registry().build("backbones", "vit_tiny", options=options)
    export_backbone(
        backbone, folder, backbone_name="vit_tiny", backbone_options=options, step=1, source="t"
    )
    return folder


def _copy(export, tmp_path, weights: bytes | None = None):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "backbone.json").write_bytes((export / "backbone.json").read_bytes())
    data = (export / "model.safetensors").read_bytes() if weights is None else weights
    (folder / "model.safetensors").write_bytes(data)
    return folder


def test_a_pickle_posing_as_safetensors_is_one_line(export, tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    torch.save({"w": torch.zeros(3)}, folder / "x.pt")
    broken = _copy(export, tmp_path, (folder / "x.pt").read_bytes())
    data = write_medmnist_npz(tmp_path / "toy.npz", sizes=(4, 2, 2))
    result = CliRunner().invoke(
        cli, ["eval", str(broken), "--benchmark", f"medmnist:{data}", "--output", str(tmp_path)]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{broken / 'model.safetensors'}: not a safetensors file" in result.output
    assert "header too large" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_truncated_export_is_one_line(export, tmp_path):
    whole = (export / "model.safetensors").read_bytes()
    broken = _copy(export, tmp_path, whole[: len(whole) // 2])
    with pytest.raises(ConfigError, match=r"model\.safetensors: truncated or damaged"):
        load_model(str(broken), get_registry())


def test_wrong_shapes_name_the_first_keys_and_what_the_file_holds(export, tmp_path):
    state = load_file(str(export / "model.safetensors"))
    state["patch_embed.proj.weight"] = torch.zeros(384, 3, 16, 16)  # vit_small's width
    state["pos_embed"] = torch.zeros(1, 17, 384)
    del state["norm.bias"]
    broken = _copy(export, tmp_path)
    save_file(state, str(broken / "model.safetensors"))
    load_model(str(export), get_registry())  # the intact export loads
    with pytest.raises(ConfigError) as err:
        load_model(str(broken), get_registry())
    text = str(err.value)
    assert "\n" not in text and str(broken / "model.safetensors") in text
    assert "does not fit backbone 'vit_tiny' with options {'image_size': 32}" in text
    assert (
        "2 shape mismatch(es): " in text and "pos_embed (file [1,17,384], model [1,5,192])" in text
    )
    assert "1 missing key(s): norm.bias" in text
    assert "a ViT of width 384 (vit_small: --backbone vit_small), depth 12, patch 16" in text


def test_describe_mismatch_limits_and_counts():
    m = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(5)])
    bad = {k: torch.zeros(3, 3) if k.endswith("weight") else v for k, v in m.state_dict().items()}
    bad["extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError) as err:
        m.load_state_dict(bad)
    text = describe_mismatch(str(err.value))
    assert text.startswith("5 shape mismatch(es): 0.weight (file [3,3], model [2,2])")
    assert "and 2 more" in text and "1 unexpected key(s): extra" in text
