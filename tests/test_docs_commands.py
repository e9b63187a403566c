"""Every `biovfm` command in README.md, CONTRIBUTING.md and docs/*.md parses as written.

Each command line in the docs' shell blocks, and each inline `biovfm ...` span, goes
through click's own parser: the subcommand exists, every option is real, required
options are there and values have the right types. Nothing runs, so a command that
names /data or a cluster parses here too; the demo's train → eval pair is run for
real in test_readme_demo.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from biovfm_core.cli.main import cli

REPO = Path(__file__).resolve().parents[1]
DOCS = (
    "README.md",
    "CONTRIBUTING.md",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")),
)
SHELL_FENCES = ("```bash", "```sh", "```console")


def _shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each command in the shell blocks, continuations joined."""
    out, inside, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            inside = line.strip() in SHELL_FENCES
            continue
        if not inside or line.lstrip().startswith("#"):
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def _synopsis_to_command(span: str) -> str:
    span = re.sub(r"(?<=\s)\.\.\.(?=\s|$)", "X", span)  # `--data ...`: some value
    return re.sub(r"[\[\]]|\.\.\.", "", span)  # `[--json]`, `MODEL...`


def _inline(text: str) -> list[tuple[int, str]]:
    """Inline spans are synopses (`biovfm plugins [--json]`): brackets and ellipses go."""
    return [
        (text.count("\n", 0, m.start()) + 1, _synopsis_to_command(m.group(1)))
        for m in re.finditer(r"`((?:\.venv/bin/)?biovfm [^`]+)`", text)
    ]


def _biovfm_args(command: str) -> list[str] | None:
    """The arguments given to biovfm in a shell command, or None if it runs no biovfm."""
    for part in re.split(r"&&|\|\||;", command):
        words = shlex.split(part, comments=True)
        for i, word in enumerate(words):
            if word == "biovfm" or word.endswith("/biovfm"):
                return words[i + 1 :]
            if word == "-m" and i + 1 < len(words) and words[i + 1] == "biovfm_core.cli.main":
                return words[i + 2 :]
    return None


def doc_commands() -> list[tuple[str, bool, list[str]]]:
    """(where, whole, args): ``whole`` for a command line a reader would paste; an
    inline span may leave out required options (`biovfm analyze fit`)."""
    found = []
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for whole, lines in ((True, _shell_lines(text)), (False, _inline(text))):
            for number, command in lines:
                args = _biovfm_args(command)
                if args is not None:
                    found.append((f"{doc}:{number}: {command.strip()}", whole, args))
    return found


COMMANDS = doc_commands()


def parse(args: list[str]) -> list[str]:
    """Parse ``args`` as `biovfm` would, down to the last subcommand; return its path."""
    ctx = cli.make_context("biovfm", list(args))
    command: click.Command = cli
    path = []
    while isinstance(command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:  # a bare group (`biovfm analyze`): naming it is enough
            break
        name, command, rest = command.resolve_command(ctx, rest)
        path.append(name)
        if isinstance(command, click.Group) and not rest:
            break
        ctx = command.make_context(name, rest, parent=ctx)
    return path


def test_the_docs_name_the_main_commands():
    # The extraction itself works: the set-up's neighbours are found.
    verbs = {args[0] for _, _, args in COMMANDS if args}
    assert {"train", "eval", "plugins", "data", "sweep", "analyze", "inspect"} <= verbs, verbs
    assert len(COMMANDS) >= 15
    # The docs/ pages are read too (the moved commands stay checked).
    assert "docs/training.md" in DOCS and "docs/data.md" in DOCS
    assert any(where.startswith("docs/") for where, _, _ in COMMANDS)


@pytest.mark.parametrize(
    ("where", "whole", "args"), COMMANDS, ids=[w.split(": ")[0] for w, _, _ in COMMANDS]
)
def test_every_documented_command_parses(where, whole, args):
    try:
        parse(args)
    except click.exceptions.Exit:
        pass  # --help / --version
    except click.UsageError as exc:
        if isinstance(exc, click.MissingParameter) and not whole:
            return
        pytest.fail(f"{where}\n  {exc.format_message()}")


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "x", "--no-such-flag"],
        ["train", "--objective"],
        ["data", "scn"],
        ["analyze", "fit"],
    ],
)
def test_a_wrong_command_is_caught(args):
    with pytest.raises(click.UsageError):
        parse(args)


def test_inline_synopses_become_commands():
    assert _synopsis_to_command("biovfm plugins [--json] [--options NAME]") == (
        "biovfm plugins --json --options NAME"
    )
    assert _synopsis_to_command("biovfm data scan --data ... -o index.npz").split() == [
        "biovfm", "data", "scan", "--data", "X", "-o", "index.npz"
    ]  # fmt: skip
