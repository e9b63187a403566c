"""Scaling sweeps: a grid of train + eval cells over one shared data index.

A sweep file::

    name: scaling
    output: sweeps/scaling          # everything the sweep writes goes here
    data: [catalogs/my.yaml]        # scanned once into index.npz; every cell reads it
                                    # (shards:DIR sets are read directly: each is an index)
    base:                           # a run config applied to every cell
      train: {max_steps: 20000, batch_size: 1024}
      options:                      # by_objective: only that objective's cells get these
        by_objective: {dinov2: {objective: {global_size: 224}}, mae: {objective: {image_size: 224}}}
    grid:                           # dotted config keys -> values; the cells are the product
      backbone: [vit_small, vit_base, vit_large]
      objective: [dinov2, mae]
      data.fraction: [0.01, 0.1, 1.0]
      data.modalities: [[], [us]]   # [] = all modalities
      train.seed: [0]
    eval:                           # arguments of `biovfm eval` for every cell
      args: [--benchmark, "medmnist:all", --medmnist-root, /data/medmnist, --size, "224"]

Relative paths in a sweep file (``output``, ``data`` entries, paths inside ``base``
and ``eval.args``) are relative to the sweep file's folder, wherever the command is
run from: cells' commands run in that folder.

Cells run one after another here (``biovfm sweep FILE``), or as a SLURM job array
(``--scheduler slurm``), one ``torchrun`` per cell. A cell is done when its
``DONE.json`` exists and records the fingerprint of the cell's current config (and
of the current eval arguments); a cell whose config changed since is *stale* and is
trained again (continuing from its checkpoint where the change allows), and a done
cell whose eval block was added or changed is only evaluated. An interrupted cell
resumes from its last checkpoint (``--resume auto``), so re-running the same command
finishes the sweep.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from biovfm_core.config import RunConfig
from biovfm_core.data.catalog import split_query
from biovfm_core.errors import ConfigError
from biovfm_core.files import write_atomic
from biovfm_core.recipes import apply_recipe


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
    keep_checkpoints: bool = True
    """False: a cell's checkpoints are deleted once it is done (its export and results
    stay), so a grid of many cells does not keep gigabytes it will never resume from;
    a cell made stale later then trains again from the start."""
    source: str = "sweep"
    root: Path = field(default_factory=Path.cwd)
    """The sweep file's folder: relative paths are relative to it, commands run in it."""

    @property
    def index_path(self) -> Path:
        return self.output / "index.npz"

    @property
    def shards(self) -> bool:
        """The data is shard sets: they are their own index (opened in seconds, read
        in their chunk-local order), so cells read them directly, not a scanned copy."""
        return bool(self.data) and all(d.startswith("shards:") for d in self.data)

    def cells(self) -> list[Cell]:
        keys = list(self.grid)
        base, by_objective = _split_by_objective(self.base, self.source)
        cells = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            overrides = dict(zip(keys, values, strict=True))
            config = RunConfig.from_dict(base, source=f"{self.source}: base")
            objective = str(overrides.get("objective", config.objective))
            # Between base and grid: an objective's own names for a shared concept
            # (dinov2's global_size is mae's image_size); a grid key still wins.
            for key, value in _flat(by_objective.get(objective, {}), "options"):
                config.set(
                    key, value, source=f"{self.source}: base.options.by_objective.{objective}"
                )
            for key, value in overrides.items():
                config.set(key, value, source=f"{self.source}: grid.{key}")
            apply_recipe(config)  # a cell's `recipe:` fills what base and grid leave unset
            cell_id = cell_name(overrides)
            config.name = cell_id
            config.output = str(self.output / "cells")
            config.data.index = None if self.shards else str(self.index_path)
            config.data.sources = list(self.data)
            config.resume = "auto"
            cells.append(Cell(cell_id, overrides, config))
        if len({c.id for c in cells}) != len(cells):
            raise ConfigError(f"{self.source}: two grid cells map to the same folder name")
        unused = sorted(set(by_objective) - {c.config.objective for c in cells})
        if unused:
            used = sorted({c.config.objective for c in cells})
            raise ConfigError(
                f"{self.source}: base.options.by_objective.{unused[0]}: no cell trains "
                f"objective {unused[0]!r} (the grid's objectives: {', '.join(used)})"
            )
        return cells


def _split_by_objective(
    base: dict[str, Any], source: str
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``base`` without ``options.by_objective``, and that mapping: objective name ->
    ``{kind: {option: value}}``, options only the cells of that objective get."""
    options = base.get("options")
    if not isinstance(options, dict) or "by_objective" not in options:
        return base, {}
    by_objective = options["by_objective"]
    where = f"{source}: base.options.by_objective"
    if not isinstance(by_objective, dict) or not all(
        isinstance(v, dict) and all(isinstance(o, dict) for o in v.values())
        for v in by_objective.values()
    ):
        raise ConfigError(
            f"{where} must map objective names to {{kind: {{option: value}}}}, e.g. "
            "{dinov2: {objective: {global_size: 64}}, mae: {objective: {image_size: 64}}}"
        )
    rest = {k: v for k, v in options.items() if k != "by_objective"}
    return {**base, "options": rest}, {str(k): v for k, v in by_objective.items()}


def _flat(tree: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    """``{objective: {image_size: 64}}`` -> ``[("options.objective.image_size", 64)]``."""
    return [
        (f"{prefix}.{kind}.{option}", value)
        for kind, options in tree.items()
        for option, value in options.items()
    ]


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
    known = {"name", "output", "data", "base", "grid", "eval", "slurm", "keep_checkpoints"}
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
    root = path.resolve().parent
    sweep = Sweep(
        name=str(raw.get("name") or path.stem),
        output=root
        / Path(os.path.expanduser(str(raw.get("output") or Path("sweeps") / path.stem))),
        data=[_data_path(d, root) for d in ([data] if isinstance(data, str) else list(data))],
        base=raw.get("base") or {},
        grid=grid,
        eval_args=_eval_args(raw.get("eval"), path),
        slurm=raw.get("slurm") or {},
        keep_checkpoints=_flag(raw.get("keep_checkpoints", True), "keep_checkpoints", path),
        source=str(path),
        root=root,
    )
    sweep.cells()  # validate every cell's config now, not hours into the sweep
    return sweep


EVAL_KEYS = ("args",)


def _eval_args(section: Any, path: Path) -> list[str]:
    """``eval: {args: [...]}``; any other key is an error, never silently ignored."""
    if section is None:
        return []
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: `eval` must be a mapping with `args: [...]`")
    for key in section:
        if key not in EVAL_KEYS:
            close = difflib.get_close_matches(str(key), EVAL_KEYS, n=1)
            hint = f"; did you mean eval.{close[0]}?" if close else ""
            raise ConfigError(
                f"{path}: unknown key eval.{key}{hint} The eval block takes `args:`, the "
                "arguments of `biovfm eval` (e.g. [--protocol, linear, --benchmark, ...])"
            )
    args = section.get("args") or []
    if not isinstance(args, list):
        raise ConfigError(f"{path}: eval.args must be a list of `biovfm eval` arguments")
    return [str(a) for a in args]


def _data_path(spec: str, root: Path) -> str:
    """A ``data`` entry with its relative path made relative to the sweep file's folder."""
    from biovfm_core.data.catalog import SHIPPED_CATALOGS

    spec = str(spec)
    if spec in SHIPPED_CATALOGS or spec == "demo" or spec.startswith("demo:"):
        return spec
    if spec.lower().endswith((".yaml", ".yml")):
        return str(root / os.path.expanduser(spec))
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or "://" in spec:
        return spec
    location, query = split_query(rest)
    query_sep = "?" if query else ""
    location = os.path.expanduser(location)
    if not os.path.isabs(location):
        location = str(root / location)
    return f"{kind}:{location}{query_sep}{query}"


def check_sweep(
    sweep: Sweep,
    registry: Any = None,
    check_eval_args: Callable[[list[str]], str | None] | None = None,
) -> None:
    """What a dry run checks before any cell runs: every cell's plugin names (with
    did-you-mean) and options, and ``eval.args`` through ``check_eval_args`` (the CLI
    passes `biovfm eval`'s own parser; it returns what is wrong, or None)."""
    if registry is None:
        from biovfm_core.registry import get_registry

        registry = get_registry()
    for cell in sweep.cells():
        try:
            cell.config.validate(registry)  # cells() builds fresh configs each call
        except ConfigError as exc:
            raise ConfigError(f"{sweep.source}: cell {cell.id}: {exc}") from None
    if sweep.eval_args and check_eval_args is not None:
        problem = check_eval_args(["CELL", *sweep.eval_args, "--output", "OUT"])
        if problem:
            raise ConfigError(
                f"{sweep.source}: eval.args are not valid `biovfm eval` arguments: {problem}"
            )


# Keys that change how a cell runs, not what it computes: a change leaves it done.
_RUNTIME_KEYS = {
    ("resume",),
    ("output",),
    ("data", "index"),
    ("data", "num_workers"),
    ("train", "log_every"),
    ("train", "checkpoint_every"),
    ("train", "keep_last"),
}


def config_fingerprint(config: RunConfig) -> str:
    """A hash of what a cell computes: its config without runtime-only keys."""
    raw = config.to_dict()
    for key in _RUNTIME_KEYS:
        node = raw
        for part in key[:-1]:
            node = node.get(part, {})
        node.pop(key[-1], None)
    text = json.dumps(raw, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def eval_fingerprint(sweep: Sweep) -> str | None:
    if not sweep.eval_args:
        return None
    return hashlib.sha256(json.dumps(sweep.eval_args).encode()).hexdigest()[:16]


def fingerprints(sweep: Sweep, cell: Cell) -> dict[str, str | None]:
    return {
        "config_fingerprint": config_fingerprint(cell.config),
        "eval_fingerprint": eval_fingerprint(sweep),
    }


def cell_state(sweep: Sweep, cell: Cell) -> str:
    """``to run``, ``done``, ``stale`` (its config changed since it finished) or
    ``needs eval`` (trained, but the eval block was added or changed since)."""
    done_file = cell.folder(sweep) / "DONE.json"
    if not done_file.is_file():
        return "to run"
    done = json.loads(done_file.read_text())
    # DONE.json files from before fingerprints were recorded count as matching.
    recorded = done.get("config_fingerprint")
    if recorded is not None and recorded != config_fingerprint(cell.config):
        return "stale"
    wanted = eval_fingerprint(sweep)
    if wanted is not None:
        if "eval_fingerprint" in done:
            if done["eval_fingerprint"] != wanted:
                return "needs eval"
        elif not done.get("results"):
            return "needs eval"
    return "done"


def resumable_step(sweep: Sweep, cell: Cell) -> int | None:
    """The step of the newest checkpoint of a cell that is not done (one killed or
    failed mid-run), which its next run resumes from; None when it has none."""
    if (cell.folder(sweep) / "DONE.json").is_file():
        return None
    # Imported here: checkpoint reading needs torch, which a dry run does not otherwise.
    from biovfm_core.models import checkpoint as ckpt

    latest = ckpt.latest_checkpoint(cell.folder(sweep))
    if latest is None:
        return None
    try:
        return int(ckpt.read_meta(latest)["step"])
    except (ConfigError, KeyError, TypeError, ValueError):
        found = re.search(r"(\d+)$", latest.name)
        return int(found.group(1)) if found else None


def describe_state(sweep: Sweep, cell: Cell) -> str:
    """``cell_state`` as a dry run shows it: a cell with a checkpoint is not "to run"
    from the start but "resumable from step N"."""
    state = cell_state(sweep, cell)
    step = resumable_step(sweep, cell) if state == "to run" else None
    return f"resumable from step {step}" if step is not None else state


def is_done(sweep: Sweep, cell: Cell) -> bool:
    return cell_state(sweep, cell) == "done"


def prepare(sweep: Sweep, *, echo=print) -> None:
    """Write every cell's config and build the shared index once."""
    (sweep.output / "configs").mkdir(parents=True, exist_ok=True)
    for cell in sweep.cells():
        cell.config.save(sweep.output / "configs" / f"{cell.id}.yaml")
    if sweep.shards:
        from biovfm_core.data.shards.reader import open_shard_sets

        # Fails here, not in every cell.
        open_shard_sets([d.removeprefix("shards:") for d in sweep.data])
        return
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


def cell_commands(
    sweep: Sweep, cell: Cell, *, launcher: list[str], train: bool = True
) -> list[list[str]]:
    """The train and eval commands of a cell (``launcher`` runs biovfm: python or
    torchrun), to run in ``sweep.root``; ``train=False``: the eval command only."""
    config_file = str(sweep.output / "configs" / f"{cell.id}.yaml")
    run_dir = str(cell.folder(sweep))
    commands = [[*launcher, "train", "--config", config_file]] if train else []
    if sweep.eval_args:
        commands.append(
            [*_python_biovfm(), "eval", run_dir, *sweep.eval_args, "--output", run_dir + "/eval"]
        )
    return commands


def _python_biovfm() -> list[str]:
    return [sys.executable, "-m", "biovfm_core.cli.main"]


@dataclass
class CellFailure:
    """A cell whose train or eval command exited non-zero, and where its output is."""

    id: str
    returncode: int
    command: list[str]
    log: Path

    def describe(self) -> str:
        return (
            f"cell {self.id} failed (exit {self.returncode}) running: "
            f"{shlex.join(self.command)}; its output: {self.log}"
        )


@dataclass
class SweepRun:
    ran: list[str] = field(default_factory=list)
    failed: list[CellFailure] = field(default_factory=list)


def log_path(sweep: Sweep, cell: Cell) -> Path:
    """Where a cell's train and eval output goes (beside, not in, its run folder,
    which the run owns), appended on every attempt."""
    return sweep.output / "logs" / f"{cell.id}.log"


def run_local(sweep: Sweep, *, echo=print, keep_going: bool = False) -> SweepRun:
    """Run the cells that are not done, one after another. A failed cell stops the
    sweep, or with ``keep_going`` (make -k) is recorded and the others go on."""
    prepare(sweep, echo=echo)
    outcome = SweepRun()
    cells = sweep.cells()
    for number, cell in enumerate(cells, start=1):
        state = cell_state(sweep, cell)
        if state == "done":
            echo(f"[{number}/{len(cells)}] {cell.id}: done, skipped")
            continue
        run_dir = cell.folder(sweep)
        if state == "stale":
            echo(
                f"[{number}/{len(cells)}] {cell.id}: stale (its config changed since it "
                "finished); training again, from its checkpoint where compatible"
            )
            (run_dir / "DONE.json").unlink()
        elif state == "needs eval":
            echo(f"[{number}/{len(cells)}] {cell.id}: trained; running its new eval block only")
        else:
            step = resumable_step(sweep, cell)
            echo(
                f"[{number}/{len(cells)}] {cell.id}"
                + (f": resuming from step {step}" if step is not None else "")
            )
        if state in ("stale", "needs eval"):
            # Results of the old config or old eval arguments must not mix with new ones.
            shutil.rmtree(run_dir / "eval", ignore_errors=True)
        commands = cell_commands(
            sweep, cell, launcher=_python_biovfm(), train=state != "needs eval"
        )
        log = log_path(sweep, cell)
        failure = None
        for command in commands:
            code = run_logged(command, cwd=sweep.root, log=log)
            if code != 0:
                failure = CellFailure(cell.id, code, command, log)
                break
        if failure is not None:
            outcome.failed.append(failure)
            echo(f"[{number}/{len(cells)}] {failure.describe()}")
            if not keep_going:
                break
            continue
        finish_cell(run_dir, fingerprints(sweep, cell))
        if not sweep.keep_checkpoints:
            drop_checkpoints(run_dir)
        outcome.ran.append(cell.id)
    return outcome


def drop_checkpoints(run_dir: Path) -> None:
    """Delete a done cell's checkpoints: renamed first, so an interrupted delete never
    leaves a ``checkpoints/`` folder that looks whole but is not."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return
    doomed = run_dir / f".deleting-checkpoints-{os.getpid()}"
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _flag(value: Any, key: str, path: Path) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: {key} must be true or false, not {value!r}")
    return value


def run_logged(command: list[str], *, cwd: Path, log: Path) -> int:
    """Run ``command``, its output shown here (on stderr, as the sweep's progress) and
    appended to ``log``; returns its exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"$ {shlex.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        assert process.stdout is not None
        # Chunks, not lines: progress lines ending in \r show as they come.
        while chunk := process.stdout.read1(1 << 16):
            out.write(chunk)
            _show(chunk)
        return process.wait()


def _show(chunk: bytes) -> None:
    binary = getattr(sys.stderr, "buffer", None)
    if binary is not None:
        binary.write(chunk)
    else:  # a text-only stream (a test harness's)
        sys.stderr.write(chunk.decode(errors="replace"))
    sys.stderr.flush()


def _die_with_parent() -> None:
    """In the cell's process, before it runs: a sweep killed outright (SIGKILL, an
    out-of-memory kill) takes its running cell with it, instead of leaving an orphan
    that still owns the cell's run folder when the sweep is started again. Linux only;
    elsewhere the orphan's run lock names it."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def finish_cell(run_dir: Path, fingerprints: dict[str, str | None] | None = None) -> Path:
    """Mark a cell done: what it trained, on how much, and where its results are;
    ``fingerprints`` (of its config and eval arguments) tell later runs if it is stale."""
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
        **(fingerprints or {}),
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
    # Relative paths of the sweep file are relative to its folder.
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(sweep.root))}", "cells=("]
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
        # A stale cell's or an old eval block's results must not mix with the new ones.
        lines.append(f'rm -rf {out}/cells/"$cell"/eval')
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
    from biovfm_core.results import one_convention, read_results, write_results

    rows = []
    for cell in sweep.cells():
        done_file = cell.folder(sweep) / "DONE.json"
        if cell_state(sweep, cell) != "done":
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
    by_cell: dict[str, list] = {}
    for row in rows:
        by_cell.setdefault(f"cell {row.model}", []).append(row)
    one_convention(by_cell.items())  # numbers of different conventions do not compare
    return write_results(sweep.output / "results.csv", rows)
