"""Step-indexed schedules shared by objectives and the training engine.

Pure functions of the step, so no scheduler object has to be checkpointed: resuming
at step ``s`` gives the same value as never having stopped. No torch import, so the
CLI can use them to print a planned schedule cheaply.
"""

from __future__ import annotations

import math

__all__ = ["cosine_schedule", "linear_warmup"]


def linear_warmup(step: float, warmup_steps: float, start: float, end: float) -> float:
    """Linear ramp from ``start`` at step 0 to ``end`` at ``warmup_steps``, then ``end``.

    ``warmup_steps <= 0`` means no ramp (always ``end``). Steps may be fractional so
    recipes stated in epochs (``epoch = step / steps_per_epoch``) can be passed as is.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(end)
    return float(start + (end - start) * step / warmup_steps)


def cosine_schedule(
    step: float,
    total: float,
    start: float,
    end: float,
    warmup_steps: float = 0,
    warmup_start: float = 0.0,
) -> float:
    """Half-cosine from ``start`` to ``end`` over ``total`` steps, after a linear warm-up.

    For ``step < warmup_steps`` the value ramps linearly from ``warmup_start`` to
    ``start``; afterwards, with ``t = (step - warmup_steps) / (total - warmup_steps)``,
    the value is ``end + (start - end) * (1 + cos(pi * t)) / 2`` and stays ``end``
    once ``step >= total``. This is the discretisation of DINOv2's ``CosineScheduler``
    (``t = i / n`` over ``n`` post-warm-up steps), so momentum and learning-rate
    curves match its recipes step for step.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total < 0 or warmup_steps < 0:
        raise ValueError(f"total and warmup_steps must be >= 0, got {total}, {warmup_steps}")
    if step < warmup_steps:
        return linear_warmup(step, warmup_steps, warmup_start, start)
    decay_steps = total - warmup_steps
    if decay_steps <= 0 or step >= total:
        return float(end)
    t = (step - warmup_steps) / decay_steps
    return float(end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t)))
