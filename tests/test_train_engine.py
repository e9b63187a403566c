"""The training engine on real data (the bundled demo images) and tiny real models."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from biovfm_core import hookimpl
from biovfm_core.config import RunConfig
from biovfm_core.errors import ConfigError
from biovfm_core.models import checkpoint as ckpt
from biovfm_core.protocols import ObjectiveBase, ViewSpec
from biovfm_core.registry import get_registry
from biovfm_core.train.checkpoints import TrainingDiverged
from biovfm_core.train.loop import train

# Small enough for seconds per run on 2 cores, big enough to exercise every part
# of DINOv2 (teacher, Sinkhorn, iBOT masks, KoLeo, multi-crop, last-layer freeze).
TINY = [
    "--backbone", "vit_tiny",
    "--batch-size", "8",
    "--set", "data.num_workers=0",
    "--set", "train.checkpoint_every=2",
    "--set", "train.log_every=1",
    "--opt", "objective.prototypes=128",
    "--opt", "objective.head_hidden_dim=64",
    "--opt", "objective.head_bottleneck_dim=32",
    "--opt", "objective.local_crops=2",
    "--opt", "objective.global_size=32",
    "--opt", "objective.local_size=16",
    "--opt", "backbone.drop_path_rate=0.1",
]  # fmt: skip


def biovfm(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "biovfm_core.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def in_process(*args: str) -> tuple[int, str]:
    """`biovfm ARGS` in this process: the same command, without a second start-up of
    torch (seconds per call on a busy CI machine). Only the killed run needs its own
    process."""
    from click.testing import CliRunner

    from biovfm_core.cli.main import cli

    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def finish(process: subprocess.Popen, timeout: int = 900) -> tuple[int, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


def final_state(run: Path) -> tuple[dict, dict]:
    latest = ckpt.latest_checkpoint(run)
    return load_file(str(latest / "model.safetensors")), torch.load(
        latest / "state.pt", weights_only=True
    )


def assert_same_tensors(a, b, what: str) -> None:
    """Bit-identical, as the README promises of a resumed run (no tolerance)."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        assert torch.equal(a, b), f"{what}: differs by up to {diff:.3g}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            assert_same_tensors(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{what}[{i}]")
    else:
        assert a == b, what


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path):
    steps = "8"
    code, log = in_process(
        "train", *TINY, "--max-steps", steps, "--output", str(tmp_path), "--name", "whole"
    )
    assert code == 0, log

    victim = biovfm(
        "train", *TINY, "--max-steps", steps, "--output", str(tmp_path), "--name", "killed"
    )
    fourth = tmp_path / "killed" / "checkpoints" / "step_00000004"
    deadline = time.time() + 900  # a hang guard only
    while not fourth.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert fourth.exists(), "the run never reached its step-4 checkpoint"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    done = [p.name for p in ckpt.list_checkpoints(tmp_path / "killed")]
    assert "step_00000008" not in done, "killed too late to test anything"

    code, log = in_process("train", "--resume", str(tmp_path / "killed"))
    assert code == 0, log
    assert "resumed from" in log

    whole_w, whole_s = final_state(tmp_path / "whole")
    killed_w, killed_s = final_state(tmp_path / "killed")
    assert killed_s["step"] == whole_s["step"] == 8
    assert (killed_s["epoch"], killed_s["batch_in_epoch"]) == (
        whole_s["epoch"],
        whole_s["batch_in_epoch"],
    )
    assert any(k.startswith("teacher.") for k in whole_w)  # the EMA teacher is compared too
    assert_same_tensors(killed_w, whole_w, "weights")
    assert_same_tensors(killed_s["optimizer"], whole_s["optimizer"], "optimizer")

    # The loss curve continues where it stopped: one row per step, same values.
    whole_rows, killed_rows = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "killed")
    assert [r["step"] for r in killed_rows] == [str(i) for i in range(1, 9)]
    for a, b in zip(whole_rows, killed_rows, strict=True):
        assert a["loss"] == b["loss"], (a, b)


def torchrun(tmp_path: Path, name: str, *extra: str) -> tuple[int, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    port = 29500 + (os.getpid() + len(name)) % 1000
    process = subprocess.Popen(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(port), "-m", "biovfm_core.cli.main", "train", *TINY,
            "--max-steps", "3", "--device", "cpu", "--output", str(tmp_path), "--name", name,
            *extra,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    return finish(process)


def test_two_gloo_processes_end_with_identical_weights_under_ddp_and_fsdp(tmp_path):
    # With the monitor on: rank 0 evaluates at steps 2 and 3 while rank 1 waits.
    monitor = ("--set", "train.monitor=demo:16", "--set", "train.monitor_every=2")
    code, log = torchrun(tmp_path, "ddp", *monitor)
    # No deprecated DDP argument, and DINOv2 (which uses every parameter in every step)
    # does not make DDP search for unused parameters and warn that it found none.
    assert code == 0, log
    assert "is deprecated" not in log and "did not find any unused parameters" not in log
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    checksums = summary["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    report = json.loads((tmp_path / "ddp" / "data_report.json").read_text())
    assert report["world_size"] == 2 and report["micro_batch_per_rank"] == 4
    monitored = [r["monitor/knn_auc"] != "" for r in read_metrics(tmp_path / "ddp")]
    assert monitored == [False, True, True]

    # FSDP shards the same model over the same data: the same training, to rounding.
    code, log = torchrun(tmp_path, "fsdp", "--set", "train.distributed=fsdp", *monitor)
    assert code == 0, log
    assert [r["monitor/knn_auc"] != "" for r in read_metrics(tmp_path / "fsdp")] == monitored
    ddp_weights, _ = final_state(tmp_path / "ddp")
    fsdp_weights, fsdp_state = final_state(tmp_path / "fsdp")
    assert fsdp_state["optimizer_layout"] == "fsdp_full"
    assert ddp_weights.keys() == fsdp_weights.keys()
    for key in ddp_weights:
        torch.testing.assert_close(fsdp_weights[key], ddp_weights[key], rtol=1e-4, atol=1e-5)
    assert (tmp_path / "fsdp" / "export" / "model.safetensors").is_file()


def test_rank_shards_are_disjoint_and_cover_an_epoch():
    from biovfm_core.data.order import RunOrder

    orders = [RunOrder(103, batch=5, seed=3, rank=r, world_size=3) for r in range(3)]
    firsts = [o.epoch_pairs(0)[0] for o in orders]
    assert all(len(f) == 5 * (103 // 3 // 5) for f in firsts)
    union = set().union(*map(set, firsts))
    assert len(union) == sum(len(f) for f in firsts)  # disjoint
    # Resuming at batch 2 of epoch 1 yields exactly the tail of the full stream.
    full = iter(RunOrder(103, batch=5, seed=3, rank=1, world_size=3))
    per_epoch = orders[1].batches_per_epoch * 5
    for _ in range(per_epoch + 2 * 5):
        next(full)
    resumed = iter(RunOrder(103, batch=5, seed=3, rank=1, world_size=3, epoch=1, start_batch=2))
    assert [next(resumed) for _ in range(20)] == [next(full) for _ in range(20)]
    # A new epoch is a new order.
    assert not (orders[0].epoch_pairs(0)[0] == orders[0].epoch_pairs(1)[0]).all()


class _NaNAfter(ObjectiveBase, torch.nn.Module):
    """A real (tiny) objective whose loss turns NaN at a chosen step."""

    def __init__(self, backbone, task, *, nan_at: int = 3) -> None:
        super().__init__()
        self.backbone = backbone
        self.nan_at = nan_at
        self.views = ViewSpec(global_crops=1, global_size=32, local_crops=0)

    def training_step(self, batch, info):
        loss = self.backbone.forward_tokens(batch.global_views[0]).cls.pow(2).mean()
        if info.step >= self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss}

    def eval_backbone(self):
        return self.backbone


class _NaNPlugin:
    @hookimpl
    def biovfm_register_objectives(self, register):
        register("nan_after", _NaNAfter)


def _tiny_config(tmp_path: Path, **changes) -> RunConfig:
    config = RunConfig(objective="nan_after", backbone="vit_tiny", output=str(tmp_path), name="run")
    config.train.batch_size = 4
    config.train.max_steps = 6
    config.train.checkpoint_every = 2
    config.data.num_workers = 0
    for key, value in changes.items():
        config.set(key, value)
    return config


def test_nan_loss_stops_the_run_and_names_a_confirmed_checkpoint(tmp_path):
    registry = get_registry()
    registry.add_plugin(_NaNPlugin(), name="nan_plugin")
    with pytest.raises(TrainingDiverged) as excinfo:  # 0-based step 4 is metrics.csv's 5
        train(_tiny_config(tmp_path, **{"options.objective.nan_at": 4}), registry, progress=False)
    message = str(excinfo.value)
    run = tmp_path / "run"
    assert [r["step"] for r in read_metrics(run)] == ["1", "2", "3", "4"]
    assert "not finite at step 5" in message
    # step_2 was followed by 2 finite steps (checkpoint_every); step_4 by none, so it
    # is not vouched for: weights can explode a step before the loss turns NaN.
    good = run / "checkpoints" / "step_00000002"
    assert f"Last good checkpoint: {good}" in message and f"--resume {good}" in message
    assert "newer step_00000004" in message
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000002", "step_00000004"]
    assert ckpt.is_confirmed(good) and not ckpt.is_confirmed(run / "checkpoints" / "step_00000004")
    weights, state = final_state(run)
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not list((run / "checkpoints").glob(".tmp*"))


def test_interrupted_checkpoint_write_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    weights = {"w": torch.ones(3)}
    ckpt.save_checkpoint(run, 1, weights, {"step": 1}, keep_last=3)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(run, 2, {"w": torch.zeros(3)}, {"step": 2}, keep_last=3)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000001"]
    assert not list((run / "checkpoints").glob(".tmp*"))
    loaded, state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert state["step"] == 1 and torch.equal(loaded["w"], torch.ones(3))


def test_keep_last_prunes_old_checkpoints(tmp_path):
    for step in range(1, 6):
        ckpt.save_checkpoint(
            tmp_path, step, {"w": torch.full((2,), float(step))}, {"step": step}, keep_last=2
        )
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]


def test_resuming_with_another_objective_says_what_the_checkpoint_holds(tmp_path):
    code, log = in_process(
        "train", *TINY, "--max-steps", "2", "--output", str(tmp_path), "--name", "a"
    )
    assert code == 0, log
    code, log = in_process(
        "train", "--resume", str(tmp_path / "a"), "--objective", "mae", "--max-steps", "4"
    )
    assert code == 2
    assert "holds objective 'dinov2' on backbone 'vit_tiny'" in log
    assert "this run is objective 'mae'" in log


def test_export_loads_in_timm_and_matches_the_teacher(tmp_path):
    import timm

    code, log = in_process(
        "train", *TINY, "--max-steps", "2", "--output", str(tmp_path), "--name", "e"
    )
    assert code == 0, log
    run = tmp_path / "e"
    description = json.loads((run / "export" / "backbone.json").read_text())
    assert description["biovfm"]["backbone"] == "vit_tiny" and description["biovfm"]["step"] == 2
    model = timm.create_model(
        description["timm"]["model_name"],
        pretrained=True,
        pretrained_cfg_overlay={"file": str(run / "export" / "model.safetensors")},
        **description["timm"]["kwargs"],
    ).eval()
    weights, _ = final_state(run)
    teacher_keys = {
        k: v for k, v in weights.items() if k.startswith("teacher.backbone.encoder.vit.")
    }
    exported = model.state_dict()
    # Every tensor of the timm model is compared, and nothing of the teacher is left out.
    assert {k.removeprefix("teacher.backbone.encoder.vit.") for k in teacher_keys} == set(exported)
    assert len(exported) > 100  # a ViT-Ti: 12 blocks of 12 tensors, and more
    for key, value in teacher_keys.items():
        torch.testing.assert_close(
            exported[key.removeprefix("teacher.backbone.encoder.vit.")], value
        )


def test_cpu_preset_fills_only_unset_values():
    from biovfm_core.train.presets import apply_machine_preset

    config = RunConfig()
    config.apply_sets(["train.batch_size=4"])
    config.apply_opts(["objective.prototypes=64"])
    applied = apply_machine_preset(config, get_registry(), "cpu")
    config.validate(get_registry())
    assert config.backbone == "vit_tiny" and config.train.max_steps == 60
    assert config.train.batch_size == 4 and config.options["objective"]["prototypes"] == 64
    assert "train.batch_size" not in applied and applied["options.objective.global_size"] == 64
    assert apply_machine_preset(RunConfig(), get_registry(), "cuda") == {}


def test_objective_needing_labels_fails_before_training(tmp_path):
    config = RunConfig(objective="supervised", backbone="vit_tiny", output=str(tmp_path))
    config.data.num_workers = 0
    with pytest.raises(ConfigError, match="has no labels"):
        train(config, progress=False)


def test_resume_auto_starts_then_continues(tmp_path):
    registry = get_registry()
    registry.add_plugin(_NaNPlugin(), name="nan_plugin")
    first = _tiny_config(tmp_path, **{"options.objective.nan_at": 100, "train.max_steps": 2})
    first.resume = "auto"
    assert train(first, registry, progress=False).steps == 2
    second = _tiny_config(tmp_path, **{"options.objective.nan_at": 100, "train.max_steps": 4})
    second.resume = "auto"
    result = train(second, registry, progress=False)
    assert result.steps == 4
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == ["1", "2", "3", "4"]
    with pytest.raises(ConfigError, match="needs --name"):
        train(RunConfig(resume="auto"), registry, progress=False)


def test_activation_checkpointing_gives_the_same_losses(tmp_path):
    registry = get_registry()
    registry.add_plugin(_NaNPlugin(), name="nan_plugin")
    runs = {}
    for flag in (False, True):
        config = _tiny_config(
            tmp_path / str(flag),
            **{
                "options.objective.nan_at": 100,
                "train.max_steps": 3,
                "train.activation_checkpointing": flag,
                "options.backbone.drop_path_rate": 0.2,
            },
        )
        train(config, registry, progress=False)
        runs[flag] = [float(r["loss"]) for r in read_metrics(tmp_path / str(flag) / "run")]
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(tmp_path):
    registry = get_registry()
    registry.add_plugin(_NaNPlugin(), name="nan_plugin")
    runs = {}
    for flag in (False, True):
        config = _tiny_config(
            tmp_path / str(flag),
            **{"options.objective.nan_at": 100, "train.max_steps": 3, "train.compile": flag},
        )
        train(config, registry, progress=False)
        runs[flag] = [float(r["loss"]) for r in read_metrics(tmp_path / str(flag) / "run")]
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)


def test_a_truncated_image_is_skipped_and_reported_not_fatal(tmp_path, capsys):
    from PIL import Image
    from skimage import data as skdata

    folder = tmp_path / "images"
    folder.mkdir()
    retina = skdata.retina()
    for i in range(12):
        crop = retina[300 + 40 * i : 428 + 40 * i, 300:428]
        Image.fromarray(crop).save(folder / f"retina_{i:02d}.png")
    good = (folder / "retina_00.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 3])  # header intact, data cut

    registry = get_registry()
    registry.add_plugin(_NaNPlugin(), name="nan_plugin")
    config = _tiny_config(
        tmp_path,
        **{
            "options.objective.nan_at": 100,
            "train.max_steps": 8,
            "data.sources": [f"folder:{folder}?modality=fundus&anatomy=eye"],
        },
    )
    result = train(config, registry, progress=True)
    assert result.steps == 8
    # The console says so twice: once when it happens, once at the end with the list.
    err = capsys.readouterr().err
    assert err.count("warning: skipped an image") == 1
    assert "truncated.png" in err.split("warning: skipped an image")[1].splitlines()[0]
    summary = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(summary) == 1 and str(tmp_path / "run" / "bad_images.csv") in summary[0]
    with open(tmp_path / "run" / "bad_images.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and rows[0]["uri"].endswith("truncated.png")
    assert "truncated" in rows[0]["reason"]
    # Met once per epoch; the metrics column counts every skip.
    assert int(read_metrics(tmp_path / "run")[-1]["bad_images"]) == int(rows[0]["times_skipped"])
    assert int(rows[0]["times_skipped"]) >= 2
    assert f"skipped {rows[0]['times_skipped']} unusable image reads (1 distinct" in summary[0]
    summary_json = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary_json["bad_images"] == int(rows[0]["times_skipped"])


def test_a_slow_loader_is_measured_and_named(tmp_path, monkeypatch, capsys):
    from biovfm_core.train import batching, loop

    # A fake clock, so the measured shares do not depend on how busy the machine is:
    # each batch costs 0.4 s of waiting, the rest of each step 0.1 s.
    now = [0.0]
    monkeypatch.setattr(loop, "_clock", lambda: now[0])
    real_make_loader, real_schedule = batching.make_loader, loop.apply_schedule

    def slow_loader(*args, **kwargs):
        for batch in real_make_loader(*args, **kwargs):
            now[0] += 0.4  # storage far slower than the model
            yield batch

    def timed_schedule(*args, **kwargs):
        now[0] += 0.1
        return real_schedule(*args, **kwargs)

    monkeypatch.setattr(batching, "make_loader", slow_loader)
    monkeypatch.setattr(loop, "apply_schedule", timed_schedule)
    registry = get_registry()
    registry.add_plugin(_NaNPlugin(), name="nan_plugin")
    config = _tiny_config(
        tmp_path,
        **{"options.objective.nan_at": 100, "train.max_steps": 4, "train.log_every": 1},
    )
    train(config, registry, progress=True)  # captured stderr is no terminal: plain lines
    rows = read_metrics(tmp_path / "run")
    assert [float(r["data_wait_s"]) for r in rows] == pytest.approx([0.4] * 4)
    assert [float(r["images_per_s"]) for r in rows] == pytest.approx([4 / 0.5] * 4)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data_wait_fraction"] == pytest.approx(0.8)
    err = capsys.readouterr().err
    assert "80% waiting for data" in err and "the loader held training up: 80%" in err
    # 2 of 4 steps done after 1.0 s: 1 s to go.
    assert "step 2/4 (50%) loss" in err and "waiting for data, ETA 1s\n" in err
    assert "step 4/4 (100%)" in err and "ETA 0s" in err


def test_loader_wait_leaves_out_the_first_step():
    from biovfm_core.train.progress import LoaderWait

    feed = LoaderWait()
    assert feed.fraction is None
    feed.add(5.0, 6.0)  # worker start-up
    assert feed.fraction is None
    feed.add(0.1, 1.0)
    feed.add(0.3, 1.0)
    assert feed.fraction == pytest.approx(0.2)


@pytest.mark.parametrize(("max_steps", "profile_steps", "recorded"), [(7, 2, 2), (5, 4, 2)])
def test_profile_steps_writes_a_trace_and_a_phase_table(
    tmp_path, max_steps, profile_steps, recorded
):
    import gzip

    from biovfm_core.train.profiling import PHASES

    registry = get_registry()
    registry.add_plugin(_NaNPlugin(), name="nan_plugin")
    config = _tiny_config(
        tmp_path,
        **{
            "options.objective.nan_at": 100,
            "train.max_steps": max_steps,
            "train.profile_steps": profile_steps,
        },
    )
    train(config, registry, progress=False)
    folder = tmp_path / "run" / "profile"
    summary = (folder / "summary.md").read_text()
    # 3 settling steps first; a run that ends early writes the steps it recorded.
    assert summary.startswith(f"# Profile of {recorded} steps after 3 settling steps")
    rows = {
        line.split(" | ")[0].strip("| ") for line in summary.splitlines() if line.startswith("| ")
    }
    assert set(PHASES) <= rows and "aten::addmm" in summary  # the ViT's linear layers
    with gzip.open(folder / "trace.json.gz", "rt") as handle:
        trace = json.load(handle)
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"forward", "backward", "optimizer"} <= names
    assert not list(folder.glob(".tmp*"))


def test_no_profile_folder_unless_asked(tmp_path):
    registry = get_registry()
    registry.add_plugin(_NaNPlugin(), name="nan_plugin")
    train(_tiny_config(tmp_path, **{"options.objective.nan_at": 100}), registry, progress=False)
    assert not (tmp_path / "run" / "profile").exists()
