"""The code's shape, checked: no import cycle between biovfm_core's modules, and the
layer contracts in pyproject.toml hold (``lint-imports``, also run by ``.ci/run``).

A cycle inside one layer (two modules of ``models/`` that import each other) is not
something the layers contract sees, so this test walks the import graph itself:
imports inside functions count too, since they are cycles all the same once both
functions have run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]


def _cycles(graph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append(
                    (child, iter(sorted(graph.find_modules_directly_imported_by(child) & modules)))
                )
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _own_modules(graph) -> set[str]:
    # A package's __init__ importing its own submodules is how packages expose
    # names, not a cycle between concerns; leave package modules out.
    packages = {m for m in graph.modules if any(o.startswith(m + ".") for o in graph.modules)}
    return {m for m in graph.modules if m.startswith("biovfm_core") and m not in packages}


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("biovfm_core", cache_dir=None)
    assert _cycles(graph, _own_modules(graph)) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    # The check above must be able to fail: two modules importing each other.
    package = tmp_path / "cyclic_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from cyclic_pkg import b\n")
    (package / "b.py").write_text("from cyclic_pkg import a\n")
    (package / "c.py").write_text("from cyclic_pkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyclic_pkg", cache_dir=None)
    modules = {m for m in graph.modules if m != "cyclic_pkg"}
    assert _cycles(graph, modules) == [["cyclic_pkg.a", "cyclic_pkg.b"]]


def test_layer_contracts_hold():
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=REPO,
        env={"PYTHONPATH": f"{REPO}:{REPO / 'plugins'}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
