"""`biovfm sweep`: grid cells over one shared index, resumable, local or as a SLURM array."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from biovfm_core import sweep as S
from biovfm_core.errors import ConfigError

SWEEP = """
name: tiny
output: {output}
base:
  train: {{max_steps: 2, batch_size: 8, checkpoint_every: 2, device: cpu}}
  data: {{num_workers: 0}}
  options:
    objective: {{global_size: 32, local_size: 16, local_crops: 2, prototypes: 64}}
grid:
  objective: [dinov2]
  data.fraction: [0.5, 1.0]
  backbone: [vit_tiny]
"""


def write_sweep(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(output=tmp_path / "out") if text is None else text)
    return path


def biovfm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "biovfm_core.cli.main", *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def in_process(*args: str) -> subprocess.CompletedProcess:
    """`biovfm ARGS` in this process, for commands that start no training themselves:
    no second start-up of torch."""
    from click.testing import CliRunner

    from biovfm_core.cli.main import cli

    result = CliRunner().invoke(cli, list(args))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def test_cells_are_the_product_of_the_grid(tmp_path):
    sweep = S.load_sweep(write_sweep(tmp_path))
    cells = sweep.cells()
    assert [c.id for c in cells] == [
        "objective=dinov2,fraction=0.5,backbone=vit_tiny",
        "objective=dinov2,fraction=1.0,backbone=vit_tiny",
    ]
    for cell in cells:
        assert cell.config.data.index == str(tmp_path / "out" / "index.npz")
        assert cell.config.resume == "auto" and cell.config.train.max_steps == 2
    assert cells[0].config.data.fraction == 0.5


def test_bad_sweep_files_fail_at_once(tmp_path):
    with pytest.raises(ConfigError, match=r"grid\.backbone must be a non-empty list"):
        S.load_sweep(write_sweep(tmp_path, "grid:\n  backbone: vit_tiny\n"))
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.max_step'"):
        S.load_sweep(write_sweep(tmp_path, "base: {train: {max_step: 3}}\ngrid: {backbone: [a]}\n"))
    with pytest.raises(ConfigError, match="unknown key"):
        S.load_sweep(write_sweep(tmp_path, "grdi: {}\n"))


def test_slurm_array_lists_pending_cells_and_is_valid_bash(tmp_path):
    path = write_sweep(tmp_path)
    result = in_process("sweep", str(path), "--scheduler", "slurm")
    assert result.returncode == 0, result.stderr
    script = (tmp_path / "out" / "slurm" / "array.sbatch").read_text()
    assert "#SBATCH --array=0-1%2" in script
    assert "torchrun --standalone --nproc_per_node 1 -m biovfm_core.cli.main train" in script
    assert "--finish-cell" in script
    assert (
        subprocess.run(["bash", "-n", str(tmp_path / "out" / "slurm" / "array.sbatch")]).returncode
        == 0
    )
    assert len(list((tmp_path / "out" / "configs").glob("*.yaml"))) == 2


def write_medmnist(path: Path) -> Path:
    """A small binary benchmark in the MedMNIST layout: bright vs dark squares."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 12), ("test", 12)):
        labels = np.arange(n) % 2
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        images[labels == 1, 8:20, 8:20] += 150
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "objectives",
    [
        # Two cells: the default suite's share of the whole chain (~20 processes).
        ["mae"],
        pytest.param(["dinov2", "mae"], marks=pytest.mark.slow),
    ],
)
def test_tiny_real_sweep_end_to_end_with_interruption_and_report(tmp_path, objectives):
    """Objectives x two data fractions, each cell trained and evaluated; the sweep is
    killed inside its second cell, re-run, and its results feed `biovfm analyze report`."""
    bench = write_medmnist(tmp_path / "breastmnist.npz")
    text = (
        SWEEP.format(output=tmp_path / "out")
        .replace("checkpoint_every: 2", "checkpoint_every: 1")
        .replace("max_steps: 2", "max_steps: 4")
        .replace("objective: [dinov2]", f"objective: [{', '.join(objectives)}]")
        .replace(
            "objective: {global_size: 32, local_size: 16, local_crops: 2, prototypes: 64}",
            "objective: {}",
        )
    ) + (
        "eval:\n  args: [--benchmark, 'medmnist:" + str(bench) + "', --epochs, '2', "
        "--bootstrap, '50', --cache, none, --device, cpu, --image-size, '64']\n"
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    cells = [c.id for c in S.load_sweep(path).cells()]
    assert len(cells) == 2 * len(objectives)

    # Kill the sweep once the second cell has written a checkpoint.
    # In its own session, so the kill takes its training child too (as a job
    # scheduler's would): an orphaned child would still own its run folder.
    victim = subprocess.Popen(
        [sys.executable, "-m", "biovfm_core.cli.main", "sweep", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    second = out / "cells" / cells[1] / "checkpoints"
    deadline = time.time() + 900  # a hang guard only
    while victim.poll() is None and time.time() < deadline and not any(second.glob("step_*")):
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert (out / "cells" / cells[0] / "DONE.json").is_file()
    assert not (out / "cells" / cells[1] / "DONE.json").is_file()

    result = biovfm("sweep", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("done, skipped") == 1
    assert "resumed from" in result.stderr  # the interrupted cell continued
    done = [json.loads((out / "cells" / c / "DONE.json").read_text()) for c in cells]
    assert sorted((d["objective"], d["images"]) for d in done) == [
        (objective, images) for objective in objectives for images in (60, 120)
    ]
    assert all(d["steps"] == 4 for d in done)
    n = len(cells)
    assert f"{n} cells, {n} done" in in_process("sweep", str(path), "--dry-run").stdout

    from biovfm_core.results import read_results

    rows = read_results(out / "results.csv")
    assert {r.model for r in rows} == set(cells)
    assert {r.metric for r in rows} >= {"auc", "mcc", "balanced_acc"}
    assert all(r.params_m and r.params_m > 5 and r.images in (60, 120) for r in rows)

    report = in_process(
        "analyze", "report", "--results", str(out / "results.csv"),
        "--medmnist-root", str(tmp_path), "--output", str(tmp_path / "report"),
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert "## Data scaling" in (tmp_path / "report" / "report.md").read_text()
    fits = (tmp_path / "report" / "fits.csv").read_text().splitlines()
    # One data-scaling slope per objective over the two fractions (60 and 120 images).
    data_fits = [line for line in fits[1:] if line.startswith("data,benchmark,")]
    assert sorted(line.split(",")[2] for line in data_fits) == objectives
    assert all(",60 120," in line for line in data_fits)
    pngs = list((tmp_path / "report" / "figures").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.parametrize("name", ["study.yaml", "study_vit_huge.yaml", "demo.yaml"])
def test_shipped_example_sweeps_are_valid(name):
    sweep = S.load_sweep(Path(__file__).resolve().parents[1] / "examples" / "sweeps" / name)
    cells = sweep.cells()
    assert len(cells) == {"study.yaml": 18, "study_vit_huge.yaml": 3, "demo.yaml": 8}[name]


def test_a_failing_source_stops_the_sweep_before_any_cell(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    text = SWEEP.format(output=tmp_path / "out") + f"data: ['folder:{images}?verfy=true']\n"
    sweep = S.load_sweep(write_sweep(tmp_path, text))
    with pytest.raises(ConfigError, match="verfy"):
        S.prepare(sweep, echo=lambda _: None)
    assert not sweep.index_path.exists()


def test_a_sweep_over_one_shard_set_reads_it_directly_without_a_scanned_copy(tmp_path):
    from shards_fixture import synthetic_items, write_shards

    shards = write_shards(tmp_path / "set", synthetic_items(8))
    text = SWEEP.format(output=tmp_path / "out") + "data: ['shards:set']\n"
    sweep = S.load_sweep(write_sweep(tmp_path, text))
    S.prepare(sweep, echo=lambda _: None)
    assert not sweep.index_path.exists()  # a scan of 21M packed records would take minutes
    for cell in sweep.cells():
        assert cell.config.data.index is None
        assert cell.config.data.sources == [f"shards:{shards}"]
    (shards / "biovfm-shards.json").unlink()
    with pytest.raises(ConfigError, match=r"biovfm-shards\.json"):
        S.prepare(sweep, echo=lambda _: None)


# ------------------------------------------------------- issue 16, item 8 (cheap, no training)

FAKE = """
name: fake
output: out
base:
  train: {{max_steps: {steps}, batch_size: 8, device: cpu}}
  data: {{num_workers: {workers}}}
grid:
  objective: [{objective}]
  backbone: [vit_tiny]
{extra}"""


def fake_sweep(folder: Path, *, steps=3, workers=0, objective="mae", extra="") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sweep.yaml"
    path.write_text(FAKE.format(steps=steps, workers=workers, objective=objective, extra=extra))
    return path


def dry_run(path: Path):
    from click.testing import CliRunner

    from biovfm_core.cli.main import cli

    return CliRunner().invoke(cli, ["sweep", str(path), "--dry-run"])


def finished_cell(sweep: S.Sweep, cell: S.Cell, *, with_eval: str | None = None) -> Path:
    """The files a trained cell leaves, then DONE.json as the sweep writes it."""
    run = cell.folder(sweep)
    (run / "export").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"steps": cell.config.train.max_steps}))
    cell.config.save(run / "config.yaml")
    (run / "data_report.json").write_text(json.dumps({"images": 10}))
    (run / "export" / "backbone.json").write_text(
        json.dumps({"biovfm": {"num_parameters": 5_500_000}})
    )
    if with_eval is not None:
        from biovfm_core.results import ResultRow, write_results

        row = ResultRow("m", "breastmnist", "linear", "auc", 0.8, convention=with_eval)
        write_results(run / "eval" / "results.csv", [row])
    S.finish_cell(run, S.fingerprints(sweep, cell))
    return run


def test_relative_paths_are_relative_to_the_sweep_file(tmp_path, monkeypatch):
    path = fake_sweep(tmp_path / "study", extra="data: ['folder:imgs?verify=true', cat.yaml]\n")
    monkeypatch.chdir(tmp_path)  # anywhere else
    sweep = S.load_sweep("study/sweep.yaml")
    assert sweep.output == tmp_path / "study" / "out"
    assert sweep.data == [
        f"folder:{tmp_path / 'study' / 'imgs'}?verify=true",
        str(tmp_path / "study" / "cat.yaml"),
    ]
    assert sweep.cells()[0].config.data.index == str(tmp_path / "study" / "out" / "index.npz")
    assert path.parent == sweep.root


def test_dry_run_rejects_an_unknown_objective_with_did_you_mean(tmp_path):
    result = dry_run(fake_sweep(tmp_path, objective="mea"))
    assert result.exit_code == 2
    assert "unknown objective 'mea'; did you mean 'mae'?" in result.output


def test_a_wrong_eval_block_is_never_ignored(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key eval\.protocl.*takes `args:`"):
        S.load_sweep(fake_sweep(tmp_path, extra="eval: {protocl: linear}\n"))
    with pytest.raises(ConfigError, match=r"unknown key eval\.arg; did you mean eval\.args\?"):
        S.load_sweep(fake_sweep(tmp_path, extra="eval: {arg: [--protocol, linear]}\n"))
    result = dry_run(fake_sweep(tmp_path, extra="eval: {args: [--protocl, linear]}\n"))
    assert result.exit_code == 2
    assert (
        "eval.args are not valid `biovfm eval` arguments: No such option '--protocl'. "
        "Did you mean '--protocol'?"
    ) in result.output
    result = dry_run(fake_sweep(tmp_path, extra="eval: {args: [--protocol, lineer]}\n"))
    assert result.exit_code == 2 and "'lineer' is not one of" in result.output


def test_a_cell_whose_config_changed_is_stale_not_done(tmp_path):
    path = fake_sweep(tmp_path, steps=3)
    sweep = S.load_sweep(path)
    finished_cell(sweep, sweep.cells()[0])
    assert "1 cells, 1 done" in dry_run(path).output
    # A runtime-only change (loader workers) leaves it done ...
    assert S.cell_state(S.load_sweep(fake_sweep(tmp_path, workers=2)), sweep.cells()[0]) == "done"
    # ... a change of what it computes does not.
    path = fake_sweep(tmp_path, steps=4)
    result = dry_run(path)
    assert result.exit_code == 0, result.output
    assert "stale      objective=mae,backbone=vit_tiny" in result.output
    assert "1 cells, 1 stale" in result.output


def run_recorded(sweep: S.Sweep, monkeypatch) -> list[tuple[list[str], Path]]:
    """run_local with the cells' commands recorded instead of run."""
    calls = []

    def fake_run(command, *, cwd, log):
        calls.append((command, cwd))
        return 0

    monkeypatch.setattr(S, "run_logged", fake_run)
    sweep.output.mkdir(parents=True, exist_ok=True)
    sweep.index_path.write_bytes(b"")  # the shared index exists: prepare() keeps it
    S.run_local(sweep, echo=lambda _: None)
    return calls


def test_an_eval_block_added_later_evaluates_finished_cells_only(tmp_path, monkeypatch):
    sweep = S.load_sweep(fake_sweep(tmp_path))
    run = finished_cell(sweep, sweep.cells()[0])
    extra = "eval: {args: [--benchmark, 'medmnist:b.npz', --protocol, knn]}\n"
    sweep = S.load_sweep(fake_sweep(tmp_path, extra=extra))
    assert S.cell_state(sweep, sweep.cells()[0]) == "needs eval"
    assert "needs eval" in dry_run(tmp_path / "sweep.yaml").output
    calls = run_recorded(sweep, monkeypatch)
    assert [c[0][3:] for c in calls] == [
        ["eval", str(run), "--benchmark", "medmnist:b.npz", "--protocol", "knn",
         "--output", f"{run}/eval"]
    ]  # fmt: skip
    assert calls[0][1] == tmp_path  # run in the sweep file's folder
    assert S.cell_state(sweep, sweep.cells()[0]) == "done"


def test_a_stale_cell_trains_again_and_drops_its_old_results(tmp_path, monkeypatch):
    extra = "eval: {args: [--benchmark, 'medmnist:b.npz']}\n"
    sweep = S.load_sweep(fake_sweep(tmp_path, steps=3, extra=extra))
    run = finished_cell(sweep, sweep.cells()[0], with_eval="study")
    sweep = S.load_sweep(fake_sweep(tmp_path, steps=4, extra=extra))
    calls = run_recorded(sweep, monkeypatch)
    assert [c[0][3] for c in calls] == ["train", "eval"]
    assert not (run / "eval").exists()  # the old config's results are gone
    assert json.loads((run / "DONE.json").read_text())["config_fingerprint"] == (
        S.config_fingerprint(sweep.cells()[0].config)
    )


def test_results_of_mixed_metric_conventions_are_not_merged(tmp_path):
    extra = "eval: {args: [--benchmark, 'medmnist:b.npz']}\n"
    path = fake_sweep(tmp_path, extra=extra).read_text().replace("[mae]", "[mae, dinov2]")
    (tmp_path / "sweep.yaml").write_text(path)
    sweep = S.load_sweep(tmp_path / "sweep.yaml")
    first, second = sweep.cells()
    finished_cell(sweep, first, with_eval="study")
    finished_cell(sweep, second, with_eval="medmnist")
    with pytest.raises(
        ConfigError, match=r"different metric conventions.*study: cell objective=mae"
    ):
        S.collect_results(sweep)
    assert not (sweep.output / "results.csv").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux's")
def test_a_cell_dies_with_its_killed_sweep(tmp_path):
    # A sweep process starts a cell the way run_cells does; SIGKILL the sweep, and the
    # cell (here a sleeping stand-in that records its pid) must not live on.
    pid_file = tmp_path / "cell.pid"
    cell = tmp_path / "cell.py"
    cell.write_text(
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n"
    )
    sweep_like = (
        "import subprocess, sys\n"
        "from biovfm_core.sweep import _die_with_parent\n"
        f"subprocess.run([sys.executable, {str(cell)!r}], preexec_fn=_die_with_parent)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", sweep_like])
    deadline = time.time() + 300  # a hang guard only
    while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # Reaped by init once it dies; a zombie still answers kill(pid, 0).
        if Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] == "Z":
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the cell outlived its killed sweep")


KEEP_GOING = """
name: fake
output: out
base: {train: {max_steps: 3, batch_size: 8, device: cpu}, data: {num_workers: 0}}
grid:
  backbone: [vit_tiny]
  train.seed: [0, 1, 2]
eval: {args: [--benchmark, demo]}
"""

# A cell's train + eval as one real process: it leaves what a finished cell leaves, or,
# for seed 1, fails as a cell running out of memory would.
CELL = r"""
import json, shutil, sys
from pathlib import Path
from biovfm_core.results import ResultRow, write_results
out, cell = Path(sys.argv[1]), sys.argv[2]
if cell.endswith("seed=1"):
    print("cell seed=1: CUDA out of memory (test)")
    raise SystemExit(3)
run = out / "cells" / cell
(run / "export").mkdir(parents=True, exist_ok=True)
shutil.copy(out / "configs" / f"{cell}.yaml", run / "config.yaml")
(run / "summary.json").write_text(json.dumps({"steps": 3}))
(run / "data_report.json").write_text(json.dumps({"images": 10}))
(run / "export" / "backbone.json").write_text(json.dumps({"biovfm": {"num_parameters": 5500000}}))
(run / "checkpoints" / "step_00000003").mkdir(parents=True, exist_ok=True)
(run / "checkpoints" / "step_00000003" / "model.safetensors").write_bytes(b"weights")
row = ResultRow("m", "demo:modality", "linear", "auc", 0.8, convention="study")
write_results(run / "eval" / "results.csv", [row])
"""


def test_a_failed_cell_keeps_finished_results_and_keep_going_runs_the_rest(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from biovfm_core.cli.main import cli
    from biovfm_core.results import read_results

    path = write_sweep(tmp_path, KEEP_GOING)
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.npz").write_bytes(b"")  # the shared index exists: prepare() keeps it
    monkeypatch.setattr(
        S, "cell_commands",
        lambda sweep, cell, launcher, train=True: [
            [sys.executable, "-c", CELL, str(sweep.output), cell.id]
        ],
    )  # fmt: skip
    ids = ["backbone=vit_tiny,seed=0", "backbone=vit_tiny,seed=1", "backbone=vit_tiny,seed=2"]
    log = out / "logs" / f"{ids[1]}.log"

    # Without --keep-going the sweep stops at the failed cell, but the finished one's
    # results are collected before it exits.
    result = CliRunner().invoke(cli, ["sweep", str(path)])
    assert result.exit_code == 1, result.output
    assert f"failed: cell {ids[1]} failed (exit 3) running: " in result.output
    assert f"its output: {log}" in result.output and "--keep-going runs the other" in result.output
    assert "\ncell seed=1: CUDA out of memory (test)\n" in log.read_text()
    assert not (out / "cells" / ids[2]).exists()  # never ran
    assert {r.model for r in read_results(out / "results.csv")} == {ids[0]}

    # With it, the cells after the failed one run; all finished ones are collected.
    result = CliRunner().invoke(cli, ["sweep", str(path), "--keep-going"])
    assert result.exit_code == 1, result.output
    assert f"[1/3] {ids[0]}: done, skipped" in result.output
    assert f"failed: cell {ids[1]} failed (exit 3)" in result.output
    assert "1 cell(s) failed" in result.output and "--keep-going runs" not in result.output
    assert {r.model for r in read_results(out / "results.csv")} == {ids[0], ids[2]}
    attempts = [line for line in log.read_text().splitlines() if line.startswith("cell seed=1")]
    assert len(attempts) == 2  # the log is appended to on every attempt


def test_keep_checkpoints_false_deletes_a_done_cells_checkpoints_only(tmp_path, monkeypatch):
    from biovfm_core.results import read_results

    text = KEEP_GOING.replace("name: fake\n", "name: fake\nkeep_checkpoints: false\n")
    path = write_sweep(tmp_path, text.replace("train.seed: [0, 1, 2]", "train.seed: [0, 2]"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.npz").write_bytes(b"")
    monkeypatch.setattr(
        S, "cell_commands",
        lambda sweep, cell, launcher, train=True: [
            [sys.executable, "-c", CELL, str(sweep.output), cell.id]
        ],
    )  # fmt: skip
    outcome = S.run_local(S.load_sweep(path), echo=lambda _: None)
    assert outcome.ran == ["backbone=vit_tiny,seed=0", "backbone=vit_tiny,seed=2"]
    for cell in outcome.ran:
        run = out / "cells" / cell
        assert (run / "DONE.json").is_file() and (run / "export" / "backbone.json").is_file()
        assert not (run / "checkpoints").exists()
        assert not list(run.glob(".deleting-*"))
    assert len(read_results(S.collect_results(S.load_sweep(path)))) == 2
    # The default keeps them (a stale cell can then continue from its checkpoint).
    assert S.load_sweep(write_sweep(tmp_path, KEEP_GOING)).keep_checkpoints is True
    with pytest.raises(ConfigError, match="keep_checkpoints must be true or false"):
        S.load_sweep(write_sweep(tmp_path, "keep_checkpoints: maybe\n" + KEEP_GOING))


def test_dry_run_shows_a_killed_cell_as_resumable_from_its_step(tmp_path):
    path = fake_sweep(tmp_path)
    sweep = S.load_sweep(path)
    run = sweep.cells()[0].folder(sweep)
    assert "to run" in dry_run(path).output
    for step in (2, 4):  # a killed cell keeps its newest checkpoints
        folder = run / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"step": step}))
    result = dry_run(path)
    assert result.exit_code == 0, result.output
    assert "resumable from step 4 objective=mae,backbone=vit_tiny" in result.output
    assert "1 cells, 1 resumable" in result.output


def test_options_by_objective_reach_only_that_objectives_cells(tmp_path):
    """dinov2 calls its crop global_size and mae image_size: one grid holds both."""
    text = f"""
output: {tmp_path / "out"}
base:
  train: {{max_steps: 2, batch_size: 8, device: cpu}}
  options:
    backbone: {{patch_size: 16}}
    by_objective:
      dinov2: {{objective: {{global_size: 32, local_size: 16}}}}
      mae: {{objective: {{image_size: 48}}, backbone: {{drop_path_rate: 0.1}}}}
grid:
  objective: [dinov2, mae]
  options.objective.local_size: [16]
"""
    sweep = S.load_sweep(
        write_sweep(tmp_path, text.replace("  options.objective.local_size: [16]\n", ""))
    )
    dinov2, mae = sweep.cells()
    assert dinov2.config.options["objective"] == {"global_size": 32, "local_size": 16}
    assert mae.config.options["objective"] == {"image_size": 48}
    assert dinov2.config.options["backbone"] == {"patch_size": 16}
    assert mae.config.options["backbone"] == {"patch_size": 16, "drop_path_rate": 0.1}
    S.check_sweep(sweep)  # each cell's options are its objective's own

    # A grid key beats by_objective; by_objective beats base.
    text_with_grid = text.replace("[dinov2, mae]", "[dinov2]").replace(
        "      mae: {objective: {image_size: 48}, backbone: {drop_path_rate: 0.1}}\n", ""
    )
    text_with_grid = text_with_grid.replace("local_size: [16]", "local_size: [24]")
    (only,) = S.load_sweep(write_sweep(tmp_path, text_with_grid)).cells()
    assert only.config.options["objective"] == {"global_size": 32, "local_size": 24}

    with pytest.raises(ConfigError, match=r"by_objective\.mae: no cell trains objective 'mae'"):
        S.load_sweep(write_sweep(tmp_path, text.replace("[dinov2, mae]", "[dinov2]")))
    with pytest.raises(ConfigError, match=r"base\.options\.by_objective must map objective names"):
        S.load_sweep(
            write_sweep(
                tmp_path, text.replace("dinov2: {objective", "dinov2: 3\n      x: {objective")
            )
        )
