"""Step-indexed schedules shared by objectives and the training engine.

Pure functions of the step, so no scheduler object has to be checkpointed: resuming
at step ``s`` gives the same value as never having stopped. No torch import, so the
CLI can use them to print a planned schedule cheaply.
"""

from __future__ import annotations

import math

__all__ = ["WARMUPS", "cosine_schedule", "linear_warmup", "linspace_warmup"]

# The two warm-up shapes the published recipes use (see ``cosine_schedule``).
WARMUPS = ("linspace", "linear")


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


def linspace_warmup(step: float, warmup_steps: int, start: float, end: float) -> float:
    """``np.linspace(start, end, warmup_steps)[step]``, then ``end``.

    DINOv2's ``CosineScheduler`` (dinov2/utils/utils.py) warms up with
    ``np.linspace(start_warmup_value, base_value, warmup_iters)``: ``end`` is reached
    at step ``warmup_steps - 1``, one step before ``linear_warmup`` reaches it, and a
    one-step warm-up is just ``start``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(end)
    if warmup_steps == 1:
        return float(start)
    return float(start + (end - start) * step / (warmup_steps - 1))


def cosine_schedule(
    step: float,
    total: float,
    start: float,
    end: float,
    warmup_steps: float = 0,
    warmup_start: float = 0.0,
    warmup: str = "linspace",
) -> float:
    """Half-cosine from ``start`` to ``end`` over ``total`` steps, after a warm-up.

    For ``step < warmup_steps`` the value ramps from ``warmup_start`` to ``start``:
    ``warmup="linspace"`` (the default) is DINOv2's ``CosineScheduler``
    (``np.linspace``, reaching ``start`` at ``warmup_steps - 1``; see
    ``linspace_warmup``), ``"linear"`` is MAE's ``util/lr_sched.adjust_learning_rate``
    (``lr * epoch / warmup_epochs``, reaching ``start`` at ``warmup_steps``).
    Afterwards, with ``t = (step - warmup_steps) / (total - warmup_steps)``, the value
    is ``end + (start - end) * (1 + cos(pi * t)) / 2`` and stays ``end`` once
    ``step >= total``: both recipes' cosine (DINOv2's ``t = i / n`` over the ``n``
    post-warm-up steps), so their curves are matched step for step.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total < 0 or warmup_steps < 0:
        raise ValueError(f"total and warmup_steps must be >= 0, got {total}, {warmup_steps}")
    if warmup not in WARMUPS:
        raise ValueError(f"warmup must be one of {', '.join(WARMUPS)}, got {warmup!r}")
    if step < warmup_steps:
        if warmup == "linspace":
            return linspace_warmup(step, int(warmup_steps), warmup_start, start)
        return linear_warmup(step, warmup_steps, warmup_start, start)
    decay_steps = total - warmup_steps
    if decay_steps <= 0 or step >= total:
        return float(end)
    t = (step - warmup_steps) / decay_steps
    return float(end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t)))
