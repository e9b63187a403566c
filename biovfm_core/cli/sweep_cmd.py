"""``biovfm sweep``: a grid of train + eval cells for a scaling study."""

from __future__ import annotations

import click

from biovfm_core.errors import NotBuiltError

_ANY_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True}


@click.command("sweep", context_settings=_ANY_ARGS)
def sweep() -> None:
    """Run a grid of train + eval cells for a scaling study (not built yet)."""
    raise NotBuiltError("`biovfm sweep` is not built yet (tracked in issue 7)")
