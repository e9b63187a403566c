"""Faults a training run must survive or report in one line (issue 14, issue 13 §4).

Most checks call the checkpoint and lock helpers directly, or fail a run before its
first step; the few that train use a 5M-parameter ViT for a handful of CPU steps.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_engine import _NaNAfter, _NaNPlugin, _tiny_config, read_metrics

from biovfm_core import hookimpl
from biovfm_core.config import RunConfig
from biovfm_core.durations import format_duration
from biovfm_core.errors import BiovfmError, ConfigError
from biovfm_core.locks import LOCK_NAME, RunFolderBusy, RunLock
from biovfm_core.models import checkpoint as ckpt
from biovfm_core.registry import get_registry
from biovfm_core.train import checkpoints, run_folder, run_state
from biovfm_core.train.bad_images import BadDataError
from biovfm_core.train.loop import train
from biovfm_core.train.progress import progress_line, wants_progress_bar


def _micro_vit():
    """A 2-block, 32-wide ViT: what these tests train needs no more, and it builds fast."""
    from biovfm_timm.vit import ViTBackbone
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(
        img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=0,
        dynamic_img_size=True,
    )  # fmt: skip
    return ViTBackbone(vit, name="micro_vit")


class _Poisoned(_NaNAfter):
    """Finite losses and gradients, but the update at 0-based step 1 leaves an inf weight."""

    def before_optimizer_step(self, info):
        if info.step == 1:
            with torch.no_grad():
                next(self.parameters()).view(-1)[0] = float("inf")


class _MicroPlugin:
    @hookimpl
    def biovfm_register_backbones(self, register):
        register("micro_vit", _micro_vit)

    @hookimpl
    def biovfm_register_objectives(self, register):
        register("poisoned", _Poisoned)


def _registry():
    registry = get_registry()
    registry.add_plugin(_NaNPlugin(), name="nan_plugin")
    registry.add_plugin(_MicroPlugin(), name="micro_plugin")
    return registry


def _micro_config(tmp_path: Path, **changes) -> RunConfig:
    config = _tiny_config(tmp_path, **{"options.objective.nan_at": 100, **changes})
    config.backbone = "micro_vit"
    return config


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _fake_run(run: Path, steps=(2,), weights=None) -> RunConfig:
    """A run folder with config.yaml and real checkpoints of tiny stand-in weights."""
    config = _tiny_config(run.parent, **{"options.objective.nan_at": 100})
    config.name = run.name
    run.mkdir(parents=True)
    config.save(run / "config.yaml")
    identity = run_state.Identity("nan_after", "vit_tiny", {"nan_at": 100}, {}).to_dict()
    for step in steps:
        state = {"step": step, "identity": identity}
        ckpt.save_checkpoint(run, step, weights or {"w": torch.ones(3)}, state, keep_last=5)
    return config


# ------------------------------------------------------------ one writer per folder


def test_a_second_writer_is_refused_naming_the_folder_and_the_holder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = RunLock(run).acquire()
    try:
        with pytest.raises(RunFolderBusy) as excinfo:
            train(_tiny_config(tmp_path), _registry(), progress=False)
    finally:
        holder.release()
    message = str(excinfo.value)
    assert str(run) in message
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
    assert not (run / LOCK_NAME).exists() and not (run / "config.yaml").exists()


def test_a_stale_lock_is_taken_over_and_a_foreign_host_is_not(tmp_path):
    lock_file = tmp_path / LOCK_NAME
    dead = _dead_pid()
    lock_file.write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    said = []
    lock = RunLock(tmp_path).acquire(said.append)
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pid {dead}" in said[0]
    lock.release()
    assert not lock_file.exists()

    lock_file.write_text(json.dumps({"pid": dead, "host": "elsewhere.example"}))
    with pytest.raises(RunFolderBusy, match=f"pid {dead} on host elsewhere.example"):
        RunLock(tmp_path).acquire()


def test_a_killed_but_unreaped_holder_counts_as_dead():
    from biovfm_core.locks import pid_alive

    child = subprocess.Popen(["sleep", "30"])
    try:
        assert pid_alive(child.pid)
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        assert not pid_alive(child.pid)
    finally:
        child.wait()


def test_default_run_names_differ_within_one_second(monkeypatch):
    monkeypatch.setattr(run_folder.time, "strftime", lambda fmt: "20260101-120000")
    config = RunConfig(objective="dinov2", backbone="vit_tiny")
    names = {run_folder.run_folder(config).name for _ in range(20)}
    assert len(names) == 20
    assert all(n.startswith("dinov2-vit_tiny-20260101-120000-") for n in names)


def test_a_fresh_run_into_a_folder_with_checkpoints_is_refused(tmp_path):
    config = _fake_run(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"already holds checkpoints.*--resume"):
        train(config, _registry(), progress=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step_00000002"]


def test_metrics_with_a_repeated_header_still_resume(tmp_path):
    from biovfm_core.train.metrics import MetricsLog

    path = tmp_path / "metrics.csv"
    path.write_text("step,loss\n1,0.5\nstep,loss\n1,0.5\n2,0.4\n3,0.3\n")
    MetricsLog(tmp_path, resume_step=2).close()
    assert path.read_text().splitlines() == ["step,loss", "1,0.5", "2,0.4"]


# ------------------------------------------------------------------- checkpoints


def test_non_finite_weights_are_never_written(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, {"step": 1}, keep_last=3)
    with pytest.raises(ckpt.CheckpointError, match=r"step_00000002.*NaN or infinite.*\bw\b"):
        ckpt.save_checkpoint(
            tmp_path, 2, {"w": torch.tensor([1.0, float("nan")])}, {"step": 2}, keep_last=3
        )
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000001"]


def test_a_run_whose_weights_turn_non_finite_writes_no_checkpoint_of_them(tmp_path):
    config = _micro_config(tmp_path, **{"train.max_steps": 4})
    config.objective = "poisoned"
    with pytest.raises(checkpoints.TrainingDiverged, match="weights are not finite after step 2"):
        train(config, _registry(), progress=False)
    assert ckpt.list_checkpoints(tmp_path / "run") == []
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp*"))


def test_unreadable_checkpoints_get_one_line_errors_naming_the_file(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(1000)}, {"step": 1}, keep_last=3)
    folder = ckpt.latest_checkpoint(tmp_path)
    weights = folder / "model.safetensors"
    good = weights.read_bytes()

    torch.save({"w": torch.ones(3)}, weights)  # a pickle posing as safetensors
    with pytest.raises(ckpt.CheckpointError) as excinfo:
        ckpt.load_checkpoint(folder)
    assert str(excinfo.value).startswith(f"{weights}: not a safetensors file")
    assert "\n" not in str(excinfo.value)

    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated") as excinfo:
        ckpt.load_checkpoint(folder)
    assert str(weights) in str(excinfo.value)

    weights.write_bytes(good)
    (folder / "state.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ckpt.CheckpointError, match=r"state\.pt: cannot be read"):
        ckpt.load_checkpoint(folder)


def test_wrong_shapes_name_the_keys_and_the_stored_config(tmp_path):
    def vit(width: int, depth: int) -> dict[str, torch.Tensor]:
        state = {"student.backbone.patch_embed.proj.weight": torch.zeros(width, 3, 16, 16)}
        for i in range(depth):
            state[f"student.backbone.blocks.{i}.attn.qkv.weight"] = torch.zeros(3 * width, width)
        return state

    with pytest.raises(ckpt.CheckpointError) as excinfo:
        checkpoints.check_fits(tmp_path, vit(192, 2), vit(384, 2))
    message = str(excinfo.value)
    assert str(tmp_path / "model.safetensors") in message
    assert "student.backbone.patch_embed.proj.weight [384, 3, 16, 16] (model [192, 3, 16, 16])" in (
        message
    )
    assert "embed dim 384, depth 2, patch size 16" in message and "vit_small" in message
    checkpoints.check_fits(tmp_path, vit(192, 2), vit(192, 2))  # a fit passes


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_folder(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, {"step": 1}, keep_last=3)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt, "save_file", no_space)
    with pytest.raises(ckpt.CheckpointWriteError) as excinfo:
        ckpt.save_checkpoint(tmp_path, 2, {"w": torch.zeros(3)}, {"step": 2}, keep_last=3)
    message = str(excinfo.value)
    assert str(tmp_path / "checkpoints") in message and "No space left on device" in message
    assert str(tmp_path / "checkpoints" / "step_00000001") in message
    monkeypatch.undo()

    def torch_full(*args, **kwargs):  # what torch.save says when the disk fills mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(ckpt.torch, "save", torch_full)
    with pytest.raises(ckpt.CheckpointWriteError, match="full disk"):
        ckpt.save_checkpoint(tmp_path, 2, {"w": torch.zeros(3)}, {"step": 2}, keep_last=3)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000001"]
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))
    weights, state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert state["step"] == 1 and torch.equal(weights["w"], torch.ones(3))


def test_a_read_only_output_is_named_and_leaves_nothing(tmp_path, monkeypatch):
    # Tests may run as root, for whom chmod does not bite: refuse the mkdir instead.
    read_only = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if read_only in (self, *self.parents):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(BiovfmError) as excinfo:
        train(_tiny_config(read_only), _registry(), progress=False)
    message = str(excinfo.value)
    assert f"cannot write {read_only / 'run'}" in message and "Permission denied" in message


# ----------------------------------------------------------------------- leftovers


def test_leftovers_of_dead_writers_and_interrupted_prunes_are_removed(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, {"step": 1}, keep_last=3)
    root = tmp_path / "checkpoints"
    dead = root / f".tmp-step_00000002-{_dead_pid()}"
    live = root / f".tmp-step_00000002-{os.getppid()}"
    pruning = root / ".deleting-step_00000000-123"
    for folder in (dead, live, pruning):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 10)
    said = []
    ckpt.remove_leftovers(tmp_path, said.append)
    assert sorted(p.name for p in root.iterdir()) == sorted(["step_00000001", live.name])
    assert len(said) == 2 and any(str(dead) in s for s in said)


def test_an_interrupted_prune_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.ones(3)}, {"step": step}, keep_last=2)

    def killed_midway(path, ignore_errors=False):
        next(Path(path).iterdir()).unlink()  # one file gone, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 3, {"w": torch.ones(3)}, {"step": 3}, keep_last=2)
    monkeypatch.undo()
    listed = ckpt.list_checkpoints(tmp_path)
    assert [p.name for p in listed] == ["step_00000002", "step_00000003"]
    for folder in listed:
        ckpt.load_checkpoint(folder)  # every listed checkpoint is whole
    ckpt.remove_leftovers(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_00000002",
        "step_00000003",
    ]


# ------------------------------------------------------------------------- resume


def test_resume_falls_back_past_a_corrupt_newest_and_takes_an_explicit_older(tmp_path, capsys):
    registry = _registry()
    base = _micro_config(tmp_path, **{"train.max_steps": 4})
    train(base, registry, progress=False)
    run = tmp_path / "run"
    newest = run / "checkpoints" / "step_00000004"
    # Copied: load_file maps the file, which is truncated below.
    uninterrupted = {k: v.clone() for k, v in load_file(str(newest / "model.safetensors")).items()}

    # A torn newest checkpoint and a dead writer's temp folder.
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    dead_tmp = run / "checkpoints" / f".tmp-step_00000006-{_dead_pid()}"
    dead_tmp.mkdir()
    resumed = _micro_config(tmp_path, **{"train.max_steps": 4})
    resumed.resume = str(run)
    assert train(resumed, registry, progress=True).steps == 4
    err = capsys.readouterr().err
    assert "skipping unusable checkpoint" in err and "truncated" in err
    assert f"resumed from {run / 'checkpoints' / 'step_00000002'} at step 2" in err
    assert not dead_tmp.exists()
    again = load_file(str(newest / "model.safetensors"))
    for key, value in uninterrupted.items():  # resumed from step 2 == never interrupted
        torch.testing.assert_close(again[key], value, rtol=0, atol=0)

    # An explicit older checkpoint: the newer one moves aside instead of outranking it.
    explicit = _micro_config(tmp_path, **{"train.max_steps": 3})
    explicit.resume = str(run / "checkpoints" / "step_00000002")
    assert train(explicit, registry, progress=False).steps == 3
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000002", "step_00000003"]
    assert (run / "set_aside" / "step_00000004" / "model.safetensors").is_file()
    assert [r["step"] for r in read_metrics(run)] == ["1", "2", "3"]


def test_resuming_an_unreadable_only_checkpoint_is_one_line(tmp_path):
    config = _fake_run(tmp_path / "run")
    torch.save({"w": torch.ones(3)}, tmp_path / "run/checkpoints/step_00000002/model.safetensors")
    config.resume = str(tmp_path / "run")
    with pytest.raises(ckpt.CheckpointError, match=r"model\.safetensors: not a safetensors file"):
        train(config, _registry(), progress=False)
    assert not (tmp_path / "run" / LOCK_NAME).exists()


# ------------------------------------------------------------------------ bad data


def test_a_source_whose_every_image_fails_stops_instead_of_hanging(tmp_path):
    from PIL import Image

    folder = tmp_path / "broken"
    folder.mkdir()
    Image.fromarray((torch.rand(64, 64) * 255).byte().numpy()).save(tmp_path / "good.png")
    whole = (tmp_path / "good.png").read_bytes()
    for i in range(12):  # headers intact, pixel data cut: indexed, then fails to decode
        (folder / f"scan_{i:02d}.png").write_bytes(whole[: len(whole) // 3])
    config = _micro_config(tmp_path, **{"data.sources": [f"folder:{folder}?modality=ct"]})

    def hung(signum, frame):
        raise TimeoutError("training on undecodable images did not stop")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        with pytest.raises(BadDataError) as excinfo:
            train(config, _registry(), progress=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    message = str(excinfo.value)
    assert "12 images in a row could not be decoded" in message
    assert "scan_" in message and "broken" in message
    assert not (tmp_path / "run").exists()  # failed before its first step


# ----------------------------------------------------------------------- output


def test_progress_line_shows_the_loss_parts_and_an_eta():
    values = {"loss": 10.3, "dino_loss": 6.93, "koleo_loss": -0.25, "ibot_loss": 3.62}
    line = progress_line(20, 60, values, 1e-4, 12.34, 0.05, 125.0)
    assert line == (
        "step 20/60 (33%) loss 10.3000 (dino 6.9300, koleo -0.2500, ibot 3.6200) lr 0.0001 "
        "12.3 img/s, 5% waiting for data, ETA 2m05s"
    )
    assert "loss 1.0000 lr 0.001" in progress_line(1, 2, {"loss": 1.0}, 1e-3, 1.0, 0.0, 0.4)
    assert [format_duration(s) for s in (0.4, 59, 3600 * 2 + 61)] == ["0s", "59s", "2h01m"]


def test_a_terminal_with_zero_columns_gets_plain_lines(monkeypatch):
    class Tty:
        def isatty(self):
            return True

        def fileno(self):
            return 2

    monkeypatch.setattr(sys, "stderr", Tty())
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
    assert wants_progress_bar() is False
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((80, 24)))
    assert wants_progress_bar() is True


def test_cpu_profiling_prints_no_cuda_probe_and_keeps_other_output(tmp_path, capfd):
    from biovfm_core.train.profiling import StepProfiler, quiet_kineto

    profiler = StepProfiler(tmp_path, 1, "cpu", enabled=True)
    for _ in range(5):
        with profiler.phase("forward"):
            torch.ones(8, 8) @ torch.ones(8, 8)
        profiler.step()
    profiler.close()
    with quiet_kineto(True):
        os.write(2, b"ERROR:2026-11-29 23:04:00 1:1 DeviceProperties.cpp:56] probe\n")
        os.write(2, b"a line of our own\n")
    err = capfd.readouterr().err
    assert "gpuGetDeviceCount" not in err and "DeviceProperties" not in err
    assert "a line of our own" in err


def test_a_run_failing_before_its_first_step_leaves_no_folder(tmp_path):
    config = RunConfig(objective="nan_after", backbone="vit_tiny", output=str(tmp_path / "runs"))
    config.data.sources = [f"folder:{tmp_path / 'nowhere'}"]
    config.data.num_workers = 0
    with pytest.raises(BiovfmError):
        train(config, _registry(), progress=False)
    assert list((tmp_path / "runs").iterdir()) == []
    shutil.rmtree(tmp_path / "runs")
