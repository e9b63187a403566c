"""``biovfm report RUN``: one HTML page of a run's curves and config."""

from __future__ import annotations

import click


@click.command("report")
@click.argument("run", type=click.Path(file_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="The HTML file to write (default: RUN/report.html).",
)
def report(run: str, output: str | None) -> None:
    """Write an HTML page of RUN: loss parts, schedules, monitor, sentinels with their
    alarm levels, throughput and data wait, the resolved config.

    Works on a run that is still going: it reads what metrics.csv holds so far.
    """
    from biovfm_core.runreport.page import write_report

    path = write_report(run, output)
    click.echo(f"report written to {path}")
