"""``biovfm sweep``: a grid of train + eval cells for a scaling study."""

from __future__ import annotations

import shutil
import subprocess

import click


@click.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="List the cells and whether each is done.")
@click.option(
    "--scheduler",
    type=click.Choice(["local", "slurm"]),
    default="local",
    show_default=True,
    help="local: run cells one after another here; slurm: write a job array.",
)
@click.option("--submit", is_flag=True, help="With --scheduler slurm: sbatch the array.")
@click.option(
    "--finish-cell", "finish", metavar="CELL", help="Mark a cell done (used by the job array)."
)
@click.option(
    "--keep-going", "-k", is_flag=True,
    help="Local cells: when one fails, run the others (as make -k), then list the failed "
    "ones with their logs and exit non-zero.",
)  # fmt: skip
def sweep(
    sweep_file: str, dry_run: bool, scheduler: str, submit: bool, finish: str | None,
    keep_going: bool,
) -> None:  # fmt: skip
    """Run the grid in SWEEP_FILE (backbone x objective x data fraction x modality x seed).

    Every cell reads one shared data index, so objectives are compared on the same
    images. Finished cells are skipped and an interrupted cell resumes from its last
    checkpoint: re-run the same command to continue. A finished cell whose config
    changed is stale and trains again; one whose eval block was added or changed is
    only evaluated. Relative paths in SWEEP_FILE are relative to its folder. The results of all finished
    cells are collected into OUTPUT/results.csv for `biovfm analyze`, also when a cell
    fails; each cell's output is in OUTPUT/logs/CELL.log.
    """
    from biovfm_core import sweep as S

    plan = S.load_sweep(sweep_file)
    cells = plan.cells()
    if not finish:
        # Unknown plugins, options or eval arguments: before any cell.
        S.check_sweep(plan, check_eval_args=eval_args_problem)
    if finish:
        match = [c for c in cells if c.id == finish]
        if not match:
            raise click.BadParameter(
                f"no cell {finish!r} in {sweep_file}", param_hint="--finish-cell"
            )
        done = S.finish_cell(match[0].folder(plan), S.fingerprints(plan, match[0]))
        if not plan.keep_checkpoints:
            S.drop_checkpoints(match[0].folder(plan))
        click.echo(f"done: {done}")
        return
    if dry_run:
        states = [S.describe_state(plan, cell) for cell in cells]
        for cell, state in zip(cells, states, strict=True):
            click.echo(f"{state:10} {cell.id}")
        resumable = sum(s.startswith("resumable") for s in states)
        counts = ", ".join(
            [f"{states.count(s)} {s}" for s in ("done", "stale", "needs eval") if s in states]
            + ([f"{resumable} resumable"] if resumable else [])
        )
        click.echo(f"{len(cells)} cells, {counts or '0 done'}; output {plan.output}")
        return
    if scheduler == "slurm":
        script = S.slurm_script(plan)
        click.echo(f"wrote {script}")
        if submit:
            if shutil.which("sbatch") is None:
                raise click.ClickException(
                    "sbatch is not on PATH; submit the script on the cluster"
                )
            subprocess.run(["sbatch", str(script)], check=True)
        return
    outcome = S.run_local(plan, echo=lambda m: click.echo(m, err=True), keep_going=keep_going)
    # Collected also when a cell failed: the finished cells' results are not lost.
    table = S.collect_results(plan)
    click.echo(
        f"ran {len(outcome.ran)} cell(s); results: {table or 'none yet (no eval configured?)'}"
    )
    if outcome.failed:
        for failure in outcome.failed:
            click.echo(f"failed: {failure.describe()}", err=True)
        rest = "" if keep_going else "; --keep-going runs the other cells past a failure"
        raise click.ClickException(
            f"{len(outcome.failed)} cell(s) failed; fix and re-run the sweep to continue it "
            f"(finished cells are skipped, interrupted ones resume){rest}"
        )


def eval_args_problem(args: list[str]) -> str | None:
    """What `biovfm eval` would say about ``args`` (None: they parse)."""
    from biovfm_core.cli.eval_cmd import eval_

    try:
        eval_.make_context("eval", args)
    except click.ClickException as exc:
        return exc.format_message()
    return None
