"""biovfm core: extension points, plugin registry, run config and CLI.

Plugins import ``hookimpl`` from here::

    from biovfm_core import hookimpl
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("biovfm")

__all__ = ["__version__", "hookimpl"]
