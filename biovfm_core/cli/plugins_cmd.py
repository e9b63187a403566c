"""``biovfm plugins``: what is installed, from which distribution, what it registered,
and what is wrong with it (clashes, import or hook failures, invalid names or presets)."""

from __future__ import annotations

import json
import textwrap

import click

from biovfm_core.errors import PluginError, UnknownNameError


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--options",
    "options_of",
    metavar="NAME",
    help="Show the options of a registered name: description, type, default and "
    "CPU-preset value of each (imports that plugin's code).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Also import every factory and check every preset and option (a default and "
    "a type hint each; imports plugin code, e.g. torch); exit 1 if any plugin has a problem.",
)
def plugins(as_json: bool, options_of: str | None, check: bool) -> None:
    """List plugins and the backbones, objectives, augmentations, datasets and loggers
    they register.

    A PROBLEMS section names each plugin that has one and its distribution: a name
    registered twice (clash), a plugin that does not import, a registration hook that
    raised, an invalid name, factory or preset. A problem disables only the names
    concerned; every other name keeps working. In --json, each plugin row has a
    "problems" list. --check also imports every factory and checks every preset.
    """
    from biovfm_core.registry import KINDS, get_registry

    registry = get_registry()
    if options_of:
        _show_options(registry, options_of, as_json)
        return
    if check:
        registry.check()
    rows = [
        {
            "plugin": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "builtin": info.builtin,
            "registered": {k: sorted(v) for k, v in info.registered.items()},
            "error": info.error,
            "problems": [p.as_dict() for p in registry.problems_of(info.name)],
        }
        for key, info in sorted(registry.plugins.items(), key=lambda i: (not i[1].builtin, i[0]))
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        _exit_if(check and registry.problems)
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
        elif row["problems"]:
            lines.append(f"({len(row['problems'])} problem(s), see PROBLEMS)")
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
    overridden = [
        (kind, name, builtin)
        for kind in KINDS
        for name, builtin in sorted(registry.overridden[kind].items())
    ]
    if overridden:
        click.echo("\nOVERRIDES (a third party replaces a built-in, as BIOVFM_ALLOW_OVERRIDE asks)")
        for kind, name, builtin in overridden:
            now, _ = registry.get(kind, name)
            click.echo(f"  {name}: {now.owner} instead of {builtin.owner}")
    problems = registry.problems
    if problems:
        click.echo("\nPROBLEMS (each disables only the names concerned)")
        for p in problems:
            click.echo(
                f"  [{p.kind}] plugin {p.plugin!r} (distribution {p.distribution!r}): {p.message}"
            )
    _exit_if(check and problems)


def _exit_if(failed: object) -> None:
    if failed:
        raise SystemExit(1)


def _display(name: str) -> str:
    return name + "<name>" if name.endswith(":") else name


def _show_options(registry, name: str, as_json: bool) -> None:
    from biovfm_core.options import factory_doc
    from biovfm_core.registry import KIND_SINGULAR, KINDS

    found = []
    for kind in KINDS:
        try:
            registration, _ = registry.get(kind, name)
        except UnknownNameError:
            continue
        found.append((kind, registration))
    if not found:
        everything = sorted({n for k in KINDS for n in registry.names(k)})
        raise UnknownNameError(
            f"nothing registered as {name!r}; registered names: {', '.join(everything)}"
        )
    out = []
    for kind, registration in found:
        specs = registration.options()
        doc = factory_doc(registration.resolve(), list(specs))
        problems = []
        checked_presets = {}
        for preset in registration.presets:
            try:
                checked_presets[preset] = registry.preset(kind, registration.name, preset)
            except PluginError as exc:
                problems.append(str(exc))
        cpu = checked_presets.get("cpu", {})
        out.append(
            {
                "kind": KIND_SINGULAR[kind],
                "name": registration.name,
                "plugin": registration.plugin,
                "distribution": registration.distribution,
                "description": registration.description,
                "options": {
                    s.name: {
                        "type": s.type_name(),
                        "default": None if s.required else s.default,
                        "required": s.required,
                        "cpu_preset": cpu.get(s.name),
                        "description": doc.options.get(s.name, ""),
                    }
                    for s in specs.values()
                },
                "presets": checked_presets,
                "doc": doc.text,
                "problems": problems,
            }
        )
    if as_json:
        click.echo(json.dumps(out, indent=2, default=repr))
        return
    for entry in out:
        click.echo(
            f"{entry['kind']} {entry['name']} (plugin {entry['plugin']}, "
            f"distribution {entry['distribution']})"
        )
        if entry["description"]:
            click.echo(f"  {entry['description']}")
        for paragraph in entry["doc"].split("\n\n"):
            click.echo(textwrap.indent(paragraph, "  ") + "\n")
        # A logger's options are per logger: --opt logger.mlflow.experiment=...
        where = entry["kind"] + (f".{entry['name']}" if entry["kind"] == "logger" else "")
        for option, spec in entry["options"].items():
            default = "required" if spec["required"] else f"default {spec['default']!r}"
            if spec["cpu_preset"] is not None:
                default += f"; cpu preset {spec['cpu_preset']!r}"
            click.echo(f"  --opt {where}.{option}=<{spec['type']}>  ({default})")
            if spec["description"]:
                click.echo(
                    textwrap.fill(
                        spec["description"], 88, initial_indent=" " * 6, subsequent_indent=" " * 6
                    )
                )
        if entry["kind"] == "dataset" and entry["options"]:
            click.echo(
                f"  (for one source: --data {_display(entry['name']).rstrip(':')}:PATH?KEY=VALUE; "
                "--opt dataset.KEY=VALUE gives it to every source)"
            )
        recipe = entry["presets"].get("backbone")
        if recipe:
            click.echo(
                "  sets backbone options (where the backbone has them and you did not): "
                + ", ".join(f"{k}={v!r}" for k, v in recipe.items())
            )
        for problem in entry["problems"]:
            click.echo(f"  problem: {problem}")
