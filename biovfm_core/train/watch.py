"""Watching the sentinels: when a value crosses its threshold, and what to say then.

Every rank keeps the same watch on the same (rank-averaged) values, so every rank
reaches the same verdict in the same step and a stop never leaves one rank waiting in
a collective. Its state travels in checkpoints, so a resumed run alarms where the
uninterrupted one would.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

from biovfm_core.errors import BiovfmError
from biovfm_core.train.sentinels import BY_COLUMN, HOLD_STEPS, Sentinel

# Gradient norms the spike sentinel takes its running median over, and how many it
# needs before it judges (the first steps of a warm-up swing by orders of magnitude).
GRAD_WINDOW = 100
GRAD_MIN_HISTORY = 20
GRAD_SPIKE = "sentinel/grad_spike"

STOP_ON = ("nan", "collapse", "never")


class TrainingCollapsed(BiovfmError):
    """A collapse sentinel crossed its threshold under ``train.stop_on=collapse``."""


@dataclass(frozen=True)
class Alarm:
    sentinel: Sentinel
    value: float
    step: int
    reference: float  # the threshold the value crossed (times the best for of_best)

    def line(self) -> str:
        """The one warning line: which statistic, its value, the likely cause, the knobs."""
        s = self.sentinel
        side = "<" if s.direction == "below" else ">"
        rule = {
            "value": f"{side} {s.threshold:g}",
            "of_best": f"{side} {s.threshold:g} x its best ({self.reference:.4g})",
            "held": f"{side} {s.threshold:g} for {HOLD_STEPS} log steps",
        }[s.rule]
        return (
            f"warning: step {self.step}: {s.column} = {self.value:.4g} ({rule}): "
            f"{s.meaning}. Likely cause: {s.cause}"
        )


class SentinelWatch:
    """Best values, held counts and the gradient-norm history of one run."""

    def __init__(self, warmup_steps: int = 0) -> None:
        self.warmup_steps = warmup_steps
        self.best: dict[str, float] = {}
        self.held: dict[str, int] = {}
        self.across: set[str] = set()
        self.norms: deque[float] = deque(maxlen=GRAD_WINDOW)

    def grad_spike(self, grad_norm: float) -> float | None:
        """This step's gradient norm over the median of the previous ones; records it."""
        ratio = None
        if len(self.norms) >= GRAD_MIN_HISTORY and math.isfinite(grad_norm):
            median = statistics.median(self.norms)
            ratio = grad_norm / median if median > 0 else None
        if math.isfinite(grad_norm):
            self.norms.append(grad_norm)
        return ratio

    def check(self, values: dict[str, Any], step: int) -> list[Alarm]:
        """Alarms for the sentinels that crossed in this step (not those still across
        since an earlier one: a crossing warns once)."""
        alarms = []
        for column, value in values.items():
            sentinel = BY_COLUMN.get(column)
            if sentinel is None or value is None or not math.isfinite(value):
                continue
            crossed, reference = self._crossed(sentinel, float(value), step)
            if crossed and column not in self.across:
                self.across.add(column)
                alarms.append(Alarm(sentinel, float(value), step, reference))
            elif not crossed:
                self.across.discard(column)
        return alarms

    def _crossed(self, s: Sentinel, value: float, step: int) -> tuple[bool, float]:
        def beyond(v: float, limit: float) -> bool:
            return v < limit if s.direction == "below" else v > limit

        if s.rule == "of_best":
            keep = max if s.direction == "below" else min
            best = keep(self.best.get(s.column, value), value)
            self.best[s.column] = best
            limit = s.threshold * best
            return beyond(value, limit), limit
        if s.after_warmup and step <= self.warmup_steps:
            self.held.pop(s.column, None)
            return False, s.threshold
        if s.rule == "held":
            counting = beyond(value, s.threshold)
            self.held[s.column] = self.held.get(s.column, 0) + 1 if counting else 0
            return self.held[s.column] >= HOLD_STEPS, s.threshold
        return beyond(value, s.threshold), s.threshold

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": dict(self.best),
            "held": dict(self.held),
            "across": sorted(self.across),
            "norms": list(self.norms),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state.get("best", {}))
        self.held = dict(state.get("held", {}))
        self.across = set(state.get("across", []))
        self.norms = deque(state.get("norms", []), maxlen=GRAD_WINDOW)
