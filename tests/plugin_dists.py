"""Write real (uninstalled-by-pip but importlib-visible) distributions for plugin tests.

A folder holding ``<pkg>/`` and ``<name>-<version>.dist-info/`` with METADATA and
entry_points.txt is exactly what pip leaves in site-packages; putting it on
``sys.path`` makes ``importlib.metadata`` see the distribution and its entry points.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def write_distribution(
    root: Path,
    name: str,
    version: str,
    modules: dict[str, str],
    entry_points: dict[str, str],
) -> Path:
    """Create modules and a dist-info under ``root``; return ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        path = root / (module.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    dist_info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    lines = ["[biovfm]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


def activate(root: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(root))
    # Modules written by an earlier test under the same name must not be reused.
    for module in list(sys.modules):
        if module.startswith("thirdparty_"):
            del sys.modules[module]
