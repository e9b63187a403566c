"""Commands whose interface is fixed but whose engine is not built yet.

They accept any arguments and fail with exit code 2 and a plain "not built yet",
so nobody mistakes them for working ones. Each moves to its own module when built.
"""

from __future__ import annotations

import click

from biovfm_core.errors import NotBuiltError

_ANY_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True}


def _not_built(command: str, issue: int) -> None:
    raise NotBuiltError(f"`biovfm {command}` is not built yet (tracked in issue {issue})")


@click.command("eval", context_settings=_ANY_ARGS)
def eval_() -> None:
    """Evaluate a model on the 12 MedMNIST benchmarks (not built yet)."""
    _not_built("eval", 6)


@click.command("sweep", context_settings=_ANY_ARGS)
def sweep() -> None:
    """Run a grid of train + eval cells for a scaling study (not built yet)."""
    _not_built("sweep", 7)


@click.command("analyze", context_settings=_ANY_ARGS)
def analyze() -> None:
    """Fit scaling laws and correlate them with task properties (not built yet)."""
    _not_built("analyze", 7)
