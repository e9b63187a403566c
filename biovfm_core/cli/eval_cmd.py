"""``biovfm eval``: evaluate models on the 12 MedMNIST benchmarks and other labelled data."""

from __future__ import annotations

import click

from biovfm_core.errors import NotBuiltError

_ANY_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True}


@click.command("eval", context_settings=_ANY_ARGS)
def eval_() -> None:
    """Evaluate a model on the 12 MedMNIST benchmarks (not built yet)."""
    raise NotBuiltError("`biovfm eval` is not built yet (tracked in issue 6)")
