"""README's first run, as written there: train on the demo data, then evaluate the run
beside the random-init floor on the offline demo benchmark, in a fresh folder.

Only the length changes (2 training steps, 2 probe epochs, 100 resamples): the
commands, flags and paths are read out of README.md, so the README cannot drift from
what runs.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from click.testing import CliRunner

from biovfm_core.cli.main import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def first_run_commands() -> list[list[str]]:
    """The biovfm commands of the shell block that follows "A first run"."""
    text = README.read_text()
    block = text[text.index("A first run") :].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0].endswith("/biovfm"):
            commands.append(words[1:])
    return commands


def test_the_readme_first_run_trains_then_evaluates_offline(tmp_path, monkeypatch):
    commands = first_run_commands()
    assert [c[0] for c in commands] == ["plugins", "train", "eval"], commands
    monkeypatch.chdir(tmp_path)  # runs/ and the eval folder land here, as for a user
    runner = CliRunner()
    for args in commands:
        extra = {
            "train": ["--max-steps", "2"],
            "eval": ["--epochs", "2", "--bootstrap", "100"],
        }.get(args[0], [])
        result = runner.invoke(cli, [*args, *extra], catch_exceptions=False)
        assert result.exit_code == 0, (args, result.output)
    out = result.output
    eval_dir = tmp_path / commands[2][commands[2].index("-o") + 1]
    # Both models on all three demo tasks, each with its interval, and the tables.
    for task in ("demo_modality", "demo_texture", "demo_plane"):
        for model in ("demo", "random_vit_tiny"):
            for protocol in ("linear", "knn"):
                assert (eval_dir / model / task / f"{protocol}.json").is_file(), (model, task)
    assert out.count("[") >= 12  # an interval per result
    # The console ends with the AUC table of each protocol, intervals included.
    assert "### linear — auc (×100, 95% CI)" in out and "### knn — auc" in out
    assert "| random:vit_tiny | " in out.split("### linear — auc")[1]
    table = (eval_dir / "results.md").read_text()
    assert "demo_texture" in table and "random:vit_tiny" in table
