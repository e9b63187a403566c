"""``biovfm plugins``: what is installed, from which distribution, and what it registered."""

from __future__ import annotations

import inspect
import json

import click

from biovfm_core.errors import UnknownNameError


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--options",
    "options_of",
    metavar="NAME",
    help="Show the options of a registered name (imports that plugin's code).",
)
def plugins(as_json: bool, options_of: str | None) -> None:
    """List plugins and the backbones, objectives, augmentations and datasets they register."""
    from biovfm_core.registry import KINDS, get_registry

    registry = get_registry()
    if options_of:
        _show_options(registry, options_of, as_json)
        return
    rows = [
        {
            "plugin": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "builtin": info.builtin,
            "registered": {k: sorted(v) for k, v in info.registered.items()},
            "error": info.error,
        }
        for info in sorted(registry.plugins.values(), key=lambda i: (not i.builtin, i.name))
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("PLUGIN", "DISTRIBUTION", "VERSION", "REGISTERS")]
    for row in rows:
        lines = [
            f"{kind}: {', '.join(_display(n) for n in row['registered'][kind])}"
            for kind in KINDS
            if row["registered"][kind]
        ]
        if row["error"]:
            lines = [f"FAILED: {row['error']}"]
        for i, line in enumerate(lines or ["(nothing)"]):
            first = i == 0
            table.append(
                (
                    row["plugin"] if first else "",
                    row["distribution"] if first else "",
                    row["version"] if first else "",
                    line,
                )
            )
    widths = [max(len(r[c]) for r in table) for c in range(3)]
    for r in table:
        click.echo("  ".join(r[c].ljust(widths[c]) for c in range(3)) + "  " + r[3])


def _display(name: str) -> str:
    return name + "<name>" if name.endswith(":") else name


def _show_options(registry, name: str, as_json: bool) -> None:
    from biovfm_core.registry import KIND_SINGULAR, KINDS

    found = []
    for kind in KINDS:
        try:
            registration, _ = registry.get(kind, name)
        except UnknownNameError:
            continue
        found.append((kind, registration))
    if not found:
        # Reuse the did-you-mean of the kind users most often mistype.
        everything = sorted({n for k in KINDS for n in registry.names(k)})
        registry_error = UnknownNameError(
            f"nothing registered as {name!r}; registered names: {', '.join(everything)}"
        )
        raise registry_error
    out = []
    for kind, registration in found:
        specs = registration.options()
        out.append(
            {
                "kind": KIND_SINGULAR[kind],
                "name": registration.name,
                "plugin": registration.plugin,
                "options": {
                    s.name: {
                        "type": s.type_name(),
                        "default": None if s.required else s.default,
                        "required": s.required,
                    }
                    for s in specs.values()
                },
                "doc": inspect.getdoc(registration.resolve()) or "",
            }
        )
    if as_json:
        click.echo(json.dumps(out, indent=2, default=repr))
        return
    for entry in out:
        click.echo(f"{entry['kind']} {entry['name']} (plugin {entry['plugin']})")
        if entry["doc"]:
            click.echo("  " + entry["doc"].splitlines()[0])
        for option, spec in entry["options"].items():
            default = "required" if spec["required"] else f"default {spec['default']!r}"
            click.echo(f"  --opt {entry['kind']}.{option}=<{spec['type']}>  ({default})")
