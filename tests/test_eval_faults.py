"""`biovfm eval` and `biovfm inspect` when things go wrong: a full disk while writing
results, bad model files named as the user gave them, a typo in the second model,
and timm weights on a machine without network."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from click.testing import CliRunner

from biovfm_core.cli.main import cli
from biovfm_core.errors import ConfigError
from biovfm_core.eval.synthetic import write_medmnist_npz
from biovfm_core.models.specs import load_model, near_path
from biovfm_core.registry import get_registry

TINY = ["--opt", "backbone.image_size=32"]


def run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def eval_args(data, out, *models: str) -> list[str]:
    return [
        "eval", *models, "--benchmark", f"medmnist:{data}", "--protocol", "knn",
        "--bootstrap", "0", "--output", str(out), "--cache", "none",
    ]  # fmt: skip


def files_under(folder) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
    ) if folder.exists() else []  # fmt: skip


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_full_disk_while_writing_results_is_one_line_and_leaves_nothing_half_written(
    tmp_path, monkeypatch, fail_at
):
    import biovfm_core.files as files

    data = write_medmnist_npz(tmp_path / "toy.npz", num_classes=2, sizes=(24, 12, 12))
    out = tmp_path / "out"
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        # The data went into the temp file; the disk fills as it is flushed.
        calls.append(fd)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    code, log = run(*eval_args(data, out, "random:vit_tiny", *TINY))
    assert code == 2 and "Traceback" not in log, log
    last = log.strip().splitlines()[-1]
    assert last.startswith(f"error: --output {out}: cannot write the results: ")
    assert "No space left on device; free space there or pass another --output" in last
    assert len(calls) == fail_at
    left = files_under(out)
    assert not any(".tmp" in name or name.startswith(".") for name in left), left
    if fail_at in (1, 2):
        # The .npz failed, or its .json and the .npz just written went with it: no
        # result, and no folder made for it.
        assert not out.exists()
    else:  # results.csv: the whole result stays, the table is absent, not half-written
        assert left == ["random_vit_tiny/toy/knn.json", "random_vit_tiny/toy/knn.npz"]


def _not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    return path


def test_bad_model_files_are_named_as_the_command_took_them(tmp_path):
    from biovfm_core.models.published import read_init

    bad = _not_a_checkpoint(tmp_path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    data = write_medmnist_npz(tmp_path / "toy.npz", sizes=(8, 4, 4))
    for path, reason in ((bad, "not a ViT checkpoint"), (garbage, "not a readable torch")):
        for command in (
            eval_args(data, tmp_path / "out", str(path)),
            ["inspect", str(path), "-o", str(tmp_path / "pictures")],
        ):
            code, log = run(*command)
            assert code == 2 and "Traceback" not in log, log
            assert f"error: model {path}: {reason}" in log and "--init" not in log
    # train's --init keeps its own name in the same errors.
    with pytest.raises(ConfigError, match=rf"^--init {bad}: not a ViT checkpoint"):
        read_init(str(bad))
    assert not (tmp_path / "out").exists() and not (tmp_path / "pictures").exists()


def test_a_typo_in_the_second_model_fails_before_the_first_is_evaluated(tmp_path):
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo-2").mkdir()
    data = write_medmnist_npz(tmp_path / "toy.npz", sizes=(8, 4, 4))
    out = tmp_path / "out"
    typo = tmp_path / "runs" / "dmeo"
    code, log = run(*eval_args(data, out, "random:vit_tiny", str(typo)))
    assert code == 2 and "Traceback" not in log, log
    line = log.strip().splitlines()[-1]
    assert line.startswith(f"error: model {typo}: no such file or folder")
    assert f"(did you mean {tmp_path / 'runs' / 'demo'}?)" in line
    assert "a DINOv2 hub or MAE .pth" in line and "timm:<name>" in line
    assert not out.exists()  # and the first model was not evaluated into it
    # A typo in a folder above is found too; a name like nothing gets no guess.
    assert near_path(tmp_path / "rnus" / "demo") == tmp_path / "runs" / "demo"
    assert near_path(tmp_path / "runs" / "zzzzzz") is None
    # inspect checks the same way before drawing anything.
    code, log = run("inspect", "random:vit_tiny", str(typo), "-o", str(tmp_path / "pics"))
    assert code == 2 and "(did you mean" in log and not (tmp_path / "pics").exists()


def test_an_image_size_the_second_model_cannot_take_fails_first(tmp_path):
    data = write_medmnist_npz(tmp_path / "toy.npz", sizes=(8, 4, 4))
    out = tmp_path / "out"
    code, log = run(*eval_args(data, out, "random:vit_tiny"), "--image-size", "40")
    assert code == 2 and "Traceback" not in log, log
    assert "model random:vit_tiny: --image-size 40 is not a multiple of its patch size 16" in log
    assert "--image-size 32" in log and not out.exists()


def test_timm_weights_without_network_fail_at_once_from_the_cache_only(tmp_path, monkeypatch):
    import socket

    from huggingface_hub import constants

    # An empty cache, offline mode off as on a laptop. Any connection the look-up still
    # tries fails at once with an error no retry loop catches, so the test cannot hang
    # (huggingface_hub retries a refused connection for about a minute).
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    requests = []

    class NetworkUsed(BaseException):
        pass

    def no_network(*args):
        requests.append(args)
        raise NetworkUsed(f"network use: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    with pytest.raises(ConfigError) as err:
        load_model("timm:vit_tiny_patch16_224.augreg_in21k", get_registry())
    text = str(err.value)
    assert text.startswith("model timm:vit_tiny_patch16_224.augreg_in21k: timm's pretrained")
    assert "not in the local Hugging Face cache" in text and "\n" not in text
    assert requests == [] and constants.HF_HUB_OFFLINE is False  # none sent; restored
    # Without pretrained weights the architecture still loads, no network needed.
    model = load_model("timm:vit_tiny_patch16_224", get_registry(), options={"pretrained": False})
    assert model.objective == "random"
