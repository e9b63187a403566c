"""``biovfm recipes``: the named official recipes, and one recipe with each value's source."""

from __future__ import annotations

import click


@click.command("recipes")
@click.argument("name", required=False)
def recipes(name: str | None) -> None:
    """List the named recipes (`biovfm train --recipe NAME`), or show recipe NAME: every
    value with the official file and key it comes from, and the official values biovfm
    cannot apply, with why."""
    from biovfm_core.recipes import load, names

    if name is None:
        table = [("NAME", "MODEL", "SOURCE", "SUMMARY")]
        for recipe in map(load, names()):
            table.append((recipe.name, recipe.model, recipe.source, recipe.summary))
        widths = [max(len(row[i]) for row in table) for i in range(3)]
        for row in table:
            click.echo(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                + "  "
                + row[3]
            )
        click.echo("\nShow one with its sources: biovfm recipes NAME")
        return
    recipe = load(name)
    click.echo(f"{recipe.name}: {recipe.summary}")
    click.echo(f"model: {recipe.model}\nsource: {recipe.source}\n")
    click.echo("values (applied where you set none; --config, --set, --opt and flags win):")
    width = max(len(k) for k in recipe.values)
    for entry in recipe.values.values():
        click.echo(f"  {entry.key.ljust(width)}  {entry.value!r:<16}  {entry.source}")
    for title, section in (
        ("not applied (biovfm has no knob for these)", recipe.not_applied),
        ("built in (biovfm's code always does this)", recipe.built_in),
    ):
        if section:
            click.echo(f"\n{title}:")
            for entry in section.values():
                click.echo(f"  {entry.key} = {entry.value!r}  ({entry.source})\n      {entry.why}")
