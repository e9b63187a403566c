"""Scaling sweeps: a grid of train + eval cells over one shared data index.

A sweep file::

    name: scaling
    output: sweeps/scaling          # everything the sweep writes goes here
    data: [catalogs/my.yaml]        # scanned once into index.npz; every cell reads it
    base:                           # a run config applied to every cell
      train: {max_steps: 20000, batch_size: 1024}
    grid:                           # dotted config keys -> values; the cells are the product
      backbone: [vit_small, vit_base, vit_large]
      objective: [dinov2, mae]
      data.fraction: [0.01, 0.1, 1.0]
      data.modalities: [[], [us]]   # [] = all modalities
      train.seed: [0]
    eval:                           # arguments of `biovfm eval` for every cell
      args: [--benchmark, "medmnist:all", --medmnist-root, /data/medmnist, --size, "224"]

Cells run one after another here (``biovfm sweep run``), or as a SLURM job array
(``biovfm sweep slurm``), one ``torchrun`` per cell. A cell is done when its
``DONE.json`` exists; an interrupted cell resumes from its last checkpoint
(``--resume auto``), so re-running the same command finishes the sweep.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from biovfm_core.config import RunConfig, write_atomic
from biovfm_core.errors import ConfigError


@dataclass
class Cell:
    """One point of the grid: its id, the overrides that define it, its config."""

    id: str
    overrides: dict[str, Any]
    config: RunConfig

    def folder(self, sweep: Sweep) -> Path:
        return sweep.output / "cells" / self.id


@dataclass
class Sweep:
    name: str
    output: Path
    data: list[str]
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    eval_args: list[str] = field(default_factory=list)
    slurm: dict[str, Any] = field(default_factory=dict)
    source: str = "sweep"

    @property
    def index_path(self) -> Path:
        return self.output / "index.npz"

    def cells(self) -> list[Cell]:
        keys = list(self.grid)
        cells = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            overrides = dict(zip(keys, values, strict=True))
            config = RunConfig.from_dict(self.base, source=f"{self.source}: base")
            for key, value in overrides.items():
                config.set(key, value, source=f"{self.source}: grid.{key}")
            cell_id = cell_name(overrides)
            config.name = cell_id
            config.output = str(self.output / "cells")
            config.data.index = str(self.index_path)
            config.data.sources = list(self.data)
            config.resume = "auto"
            cells.append(Cell(cell_id, overrides, config))
        if len({c.id for c in cells}) != len(cells):
            raise ConfigError(f"{self.source}: two grid cells map to the same folder name")
        return cells


def cell_name(overrides: dict[str, Any]) -> str:
    """A readable, filesystem-safe folder name: ``backbone=vit_small,objective=mae``."""
    parts = []
    for key, value in overrides.items():
        if isinstance(value, (list, tuple)):
            value = "+".join(map(str, value)) or "all"
        short = key.rsplit(".", 1)[-1]
        parts.append(f"{short}={value}")
    return re.sub(r"[^A-Za-z0-9=,.+_-]", "_", ",".join(parts))


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"sweep file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    known = {"name", "output", "data", "base", "grid", "eval", "slurm"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: `grid` must map config keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list")
    data = raw.get("data") or []
    eval_section = raw.get("eval") or {}
    sweep = Sweep(
        name=str(raw.get("name") or path.stem),
        output=Path(raw.get("output") or Path("sweeps") / path.stem),
        data=[data] if isinstance(data, str) else list(data),
        base=raw.get("base") or {},
        grid=grid,
        eval_args=[str(a) for a in eval_section.get("args", [])],
        slurm=raw.get("slurm") or {},
        source=str(path),
    )
    sweep.cells()  # validate every cell's config now, not hours into the sweep
    return sweep


def is_done(sweep: Sweep, cell: Cell) -> bool:
    return (cell.folder(sweep) / "DONE.json").is_file()


def prepare(sweep: Sweep, *, echo=print) -> None:
    """Write every cell's config and build the shared index once."""
    (sweep.output / "configs").mkdir(parents=True, exist_ok=True)
    for cell in sweep.cells():
        cell.config.save(sweep.output / "configs" / f"{cell.id}.yaml")
    if sweep.index_path.exists():
        return
    echo(f"indexing {', '.join(sweep.data) or 'the demo data'} once for all cells")
    from biovfm_core.data.catalog import resolve_data
    from biovfm_core.data.scan import scan_sources

    sources, _ = resolve_data(sweep.data)
    # As in `biovfm train`: a source that fails or is absent stops the sweep before any
    # cell trains, unless the sweep's configs allow training without it.
    strict = not any(cell.config.data.allow_missing_sources for cell in sweep.cells())
    index, report = scan_sources(sources, stop_on_error=strict, stop_on_missing=strict)
    if len(index) == 0:
        raise ConfigError(f"{sweep.source}: no images found in the sweep's data")
    index.save(sweep.index_path)
    write_atomic(
        sweep.output / "index_report.json", json.dumps(report.as_dict(), indent=2).encode()
    )


def cell_commands(sweep: Sweep, cell: Cell, *, launcher: list[str]) -> list[list[str]]:
    """The train and eval commands of a cell (``launcher`` runs biovfm: python or torchrun)."""
    config_file = str(sweep.output / "configs" / f"{cell.id}.yaml")
    run_dir = str(cell.folder(sweep))
    commands = [[*launcher, "train", "--config", config_file]]
    if sweep.eval_args:
        commands.append(
            [*_python_biovfm(), "eval", run_dir, *sweep.eval_args, "--output", run_dir + "/eval"]
        )
    return commands


def _python_biovfm() -> list[str]:
    return [sys.executable, "-m", "biovfm_core.cli.main"]


def run_local(sweep: Sweep, *, echo=print) -> list[str]:
    """Run the cells that are not done, one after another; return the ids that ran."""
    prepare(sweep, echo=echo)
    ran = []
    cells = sweep.cells()
    for number, cell in enumerate(cells, start=1):
        if is_done(sweep, cell):
            echo(f"[{number}/{len(cells)}] {cell.id}: done, skipped")
            continue
        echo(f"[{number}/{len(cells)}] {cell.id}")
        for command in cell_commands(sweep, cell, launcher=_python_biovfm()):
            completed = subprocess.run(command, check=False)
            if completed.returncode != 0:
                raise ConfigError(
                    f"cell {cell.id} failed (exit {completed.returncode}) running: "
                    f"{shlex.join(command)}; fix and re-run the sweep to continue it"
                )
        finish_cell(cell.folder(sweep))
        ran.append(cell.id)
    return ran


def finish_cell(run_dir: Path) -> Path:
    """Mark a cell done: what it trained, on how much, and where its results are."""
    summary = json.loads((run_dir / "summary.json").read_text())
    config = RunConfig.from_yaml(run_dir / "config.yaml")
    report = json.loads((run_dir / "data_report.json").read_text())
    export = json.loads((run_dir / "export" / "backbone.json").read_text())
    done = {
        "objective": config.objective,
        "backbone": config.backbone,
        "params_m": export["biovfm"]["num_parameters"] / 1e6,
        "images": report["images"],
        "data_fraction": config.data.fraction,
        "modalities": "+".join(config.data.modalities) or "all",
        "seed": config.train.seed,
        "steps": summary["steps"],
        "results": [str(p) for p in [run_dir / "eval" / "results.csv"] if p.is_file()],
    }
    return write_atomic(run_dir / "DONE.json", json.dumps(done, indent=2).encode())


def slurm_script(sweep: Sweep) -> Path:
    """A SLURM job array, one task per cell not yet done, each a torchrun of its cell."""
    prepare(sweep)
    pending = [c for c in sweep.cells() if not is_done(sweep, c)]
    if not pending:
        raise ConfigError("every cell of the sweep is done; nothing to submit")
    s = sweep.slurm
    gpus = int(s.get("gpus_per_node", 1))
    nodes = int(s.get("nodes", 1))
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={sweep.name}",
        f"#SBATCH --array=0-{len(pending) - 1}%{int(s.get('max_parallel', len(pending)))}",
        f"#SBATCH --nodes={nodes} --ntasks-per-node=1 --gpus-per-node={gpus}",
        f"#SBATCH --cpus-per-task={int(s.get('cpus_per_task', 8 * gpus))}",
        f"#SBATCH --time={s.get('time', '24:00:00')}",
        f"#SBATCH --output={sweep.output}/slurm/%A_%a.log",
        "#SBATCH --requeue",
    ]
    for key in ("partition", "account", "qos"):
        if key in s:
            lines.append(f"#SBATCH --{key}={s[key]}")
    lines += ["set -euo pipefail", "cells=("]
    lines += [f"  {shlex.quote(c.id)}" for c in pending]
    lines += [")", "cell=${cells[$SLURM_ARRAY_TASK_ID]}"]
    if nodes == 1:
        torchrun = f"torchrun --standalone --nproc_per_node {gpus} -m biovfm_core.cli.main"
    else:
        # Array tasks may share a head node: give each its own rendezvous port.
        head = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
        torchrun = (
            f"srun torchrun --nnodes {nodes} --nproc_per_node {gpus} --rdzv_backend c10d "
            f'--rdzv_endpoint "{head}:$((29500 + SLURM_ARRAY_TASK_ID % 1000))" '
            '--rdzv_id "${SLURM_JOB_ID}_${SLURM_ARRAY_TASK_ID}" -m biovfm_core.cli.main'
        )
    out = shlex.quote(str(sweep.output))
    lines.append(f'{torchrun} train --config {out}/configs/"$cell".yaml')
    if sweep.eval_args:
        lines.append(
            f'python -m biovfm_core.cli.main eval {out}/cells/"$cell" '
            f'{shlex.join(sweep.eval_args)} --output {out}/cells/"$cell"/eval'
        )
    source = shlex.quote(str(Path(sweep.source).resolve()))
    lines.append(f'python -m biovfm_core.cli.main sweep {source} --finish-cell "$cell"')
    script = sweep.output / "slurm" / "array.sbatch"
    script.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(script, ("\n".join(lines) + "\n").encode())
    return script


def collect_results(sweep: Sweep) -> Path | None:
    """All finished cells' results in one table (the results schema), model facts filled in."""
    from biovfm_core.results import read_results, write_results

    rows = []
    for cell in sweep.cells():
        done_file = cell.folder(sweep) / "DONE.json"
        if not done_file.is_file():
            continue
        done = json.loads(done_file.read_text())
        for csv_path in done["results"]:
            for row in read_results(csv_path):
                row.model = cell.id
                row.objective = done["objective"]
                row.backbone = done["backbone"]
                row.params_m = done["params_m"]
                row.images = done["images"]
                row.data_fraction = done["data_fraction"]
                row.modalities = done["modalities"]
                row.seed = done["seed"]
                row.source = f"sweep {sweep.name}"
                rows.append(row)
    if not rows:
        return None
    return write_results(sweep.output / "results.csv", rows)
