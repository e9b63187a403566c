from __future__ import annotations

import pytest

from biovfm_core import registry as registry_module


@pytest.fixture(autouse=True)
def fresh_registry():
    """Each test sees the entry points as installed for it, loaded once."""
    registry_module.reset_registry()
    yield
    registry_module.reset_registry()
