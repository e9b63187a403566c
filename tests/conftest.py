from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from biovfm_core import registry as registry_module

REPO = Path(__file__).resolve().parents[1]

# pytest-xdist runs one worker per core: each worker, and every biovfm process a test
# starts, computes on one thread, so workers never fight over cores (torch's spinning
# threads slow down many times over on an oversubscribed machine). Set before torch loads.
# Without xdist (`-n 0`, e.g. for the slow learning checks) torch keeps all its threads.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def fresh_registry():
    """Each test sees the entry points as installed for it, loaded once."""
    registry_module.reset_registry()
    yield
    registry_module.reset_registry()


@pytest.fixture(autouse=True, scope="session")
def _caches_under_tmp(tmp_path_factory):
    """biovfm's feature cache (default ~/.cache/biovfm) goes under pytest's tmp folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIOVFM_CACHE", str(tmp_path_factory.mktemp("biovfm-cache")))
        yield


def _leftovers() -> set[str] | None:
    """Files git neither tracks nor ignores, and empty top-level folders (invisible to
    git); None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "--others", "--exclude-standard", "--directory"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    empty = {p.name + "/" for p in REPO.iterdir() if p.is_dir() and not any(p.iterdir())}
    return set(out.splitlines()) | empty


def pytest_sessionstart(session):
    session.config._biovfm_leftovers = _leftovers()


def pytest_sessionfinish(session, exitstatus):
    # The suite writes only under tmp_path: a test that leaves a file or folder in the
    # repository (a default output folder such as eval/ or runs/) fails the session.
    before = getattr(session.config, "_biovfm_leftovers", None)
    after = _leftovers()
    if before is None or after is None:
        return
    left = sorted(after - before)
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nthe test suite left files in the repository: {', '.join(left)}")
