"""``biovfm``: the command group. Every command imports what it needs when it runs."""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import click

from biovfm_core import __version__
from biovfm_core.errors import BiovfmError


class BiovfmGroup(click.Group):
    """Reports biovfm's own errors as one line and exit code 2, not a traceback.

    ``BIOVFM_DEBUG=1`` prints the traceback too (with the plugin's original exception
    when a plugin's factory failed).
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BiovfmError as exc:
            if os.environ.get("BIOVFM_DEBUG", "") not in ("", "0"):
                click.echo("".join(traceback.format_exception(exc)), err=True, nl=False)
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


def _show_plugin_warning(message, category, filename, lineno, file=None, line=None):
    from biovfm_core.registry import PluginLoadWarning

    if issubclass(category, PluginLoadWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


@click.group(cls=BiovfmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="biovfm")
def cli() -> None:
    """Pretrain and benchmark vision foundation models on biomedical images.

    \b
    biovfm plugins                      what is installed and registered
    biovfm train                        DINOv2 on the built-in demo data
    biovfm recipes                      the official recipes: train --recipe NAME
    biovfm train --objective mae --backbone vit_base --data catalog.yaml
    biovfm eval  RUN --benchmark medmnist:all
    biovfm report RUN                   a run's curves as one HTML page
    """
    warnings.showwarning = _show_plugin_warning


def _register_commands() -> None:
    from biovfm_core.cli.analyze_cmd import analyze
    from biovfm_core.cli.data_cmd import data
    from biovfm_core.cli.eval_cmd import eval_
    from biovfm_core.cli.inspect_cmd import inspect
    from biovfm_core.cli.plugins_cmd import plugins
    from biovfm_core.cli.recipes_cmd import recipes
    from biovfm_core.cli.report_cmd import report
    from biovfm_core.cli.sweep_cmd import sweep
    from biovfm_core.cli.train_cmd import train

    for command in (plugins, recipes, train, eval_, data, sweep, analyze, inspect, report):
        cli.add_command(command)


_register_commands()


def main() -> None:
    cli(prog_name="biovfm")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
