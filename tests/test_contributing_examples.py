"""CONTRIBUTING.md's plugin example runs as written: a package built from its text
alone passes the conformance kit on the first try."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "biovfm-example-plugin"
# A code block preceded by `<!-- file: PATH -->` is that file of the example package.
BLOCK = re.compile(r"<!-- file: (\S+) -->\n```[a-z]*\n(.*?)```", re.DOTALL)


def contributing_files() -> dict[str, str]:
    return dict(BLOCK.findall((REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")))


def test_the_docs_show_the_whole_example_package():
    files = contributing_files()
    assert set(files) == {
        "pyproject.toml",
        "biovfm_example_plugin/__init__.py",
        "biovfm_example_plugin/plugin.py",
        "biovfm_example_plugin/objective.py",
        "tests/test_conformance.py",
    }
    # The shipped example is the documented one, byte for byte.
    for path, text in files.items():
        assert (EXAMPLE / path).read_text(encoding="utf-8") == text, path
    assert "[build-system]" in files["pyproject.toml"]
    objective = files["biovfm_example_plugin/objective.py"]
    for name in ("ObjectiveBase", "ViewSpec", "ConfigError", "TaskInfo"):
        assert re.search(rf"^from biovfm_core\.\S+ import .*\b{name}\b", objective, re.M), name


def test_a_package_written_from_the_docs_passes_check_objective(tmp_path):
    package = tmp_path / "my-plugin"
    for path, text in contributing_files().items():
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(text, encoding="utf-8")
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-index", "--target", str(target), str(package),
        ],
        check=True, capture_output=True, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    inherited = os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(target), inherited) if p))
    # The author's own pytest, in the package folder, importing the installed copy.
    (package / "biovfm_example_plugin").rename(tmp_path / "source_moved_away")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=package, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
