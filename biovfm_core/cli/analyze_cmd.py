"""``biovfm analyze``: scaling fits, task properties and their correlations."""

from __future__ import annotations

import click

from biovfm_core.errors import NotBuiltError

_ANY_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True}


@click.command("analyze", context_settings=_ANY_ARGS)
def analyze() -> None:
    """Fit scaling laws and correlate them with task properties (not built yet)."""
    raise NotBuiltError("`biovfm analyze` is not built yet (tracked in issue 7)")
