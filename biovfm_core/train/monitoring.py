"""What the loop needs of the in-training monitor, and the columns it writes.

The monitor itself scores features with the evaluation code
(``biovfm_core.eval.monitor``), a layer above training; the CLI hands its factory to
``train()``, so training never imports evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

PREFIX = "monitor/"


def monitor_columns(linear: bool) -> tuple[str, ...]:
    """``monitor/<protocol>_<metric>[_low|_high]`` and ``monitor/seconds``, in order."""
    protocols = ("knn", "linear") if linear else ("knn",)
    scores = [
        f"{PREFIX}{protocol}_{metric}{bound}"
        for protocol in protocols
        for metric in ("auc", "acc")
        for bound in ("", "_low", "_high")
    ]
    return (*scores, PREFIX + "seconds")


class Monitor(Protocol):
    """Scores a backbone on a fixed benchmark subsample, without disturbing training."""

    columns: tuple[str, ...]

    def measure(self, backbone: torch.nn.Module) -> dict[str, float]:
        """``column -> value`` for ``backbone`` as it stands; leaves its modes, the
        random generators and every weight as they were."""
        ...

    def describe(self) -> str:
        """One line: the benchmark, its subsample, the protocols."""
        ...


# factory(config, registry, device, image_size) -> Monitor
MonitorFactory = Callable[[Any, Any, torch.device, int], Monitor]


def is_due(step: int, every: int, total_steps: int) -> bool:
    """Every ``every`` steps, and at the last step (a short run still gets a point)."""
    return step % every == 0 or step == total_steps
