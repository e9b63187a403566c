"""``biovfm data``: scan sources into an index, print statistics."""

from __future__ import annotations

import click

from biovfm_core.errors import NotBuiltError


@click.group("data")
def data() -> None:
    """Index and inspect pretraining data (catalogs, folders, DICOM, NIfTI, MedMNIST)."""


@data.command("scan")
def scan() -> None:
    """Build the sample index of --data (not built yet)."""
    raise NotBuiltError("`biovfm data scan` is not built yet (issue 3)")


@data.command("stats")
def stats() -> None:
    """Counts by source / modality / anatomy (not built yet)."""
    raise NotBuiltError("`biovfm data stats` is not built yet (issue 3)")
