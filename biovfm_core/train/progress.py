"""What the person watching a run sees while it trains, and whether the data keeps up.

A live bar on a terminal, plain lines with an ETA everywhere else (log files,
cluster job output), and at the end a word when the loader held training up.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from biovfm_core.durations import format_duration

# Above this share of the time spent waiting for batches, a run says it is loader-bound.
LOADER_BOUND = 0.10


class LoaderWait:
    """Share of the training time the main loop spent blocked on the data loader.

    The step ends with one host sync, so time blocked in the loader is time the
    device sits idle. The first step of a process is left out: it includes the
    workers' start-up, which says nothing about whether they keep up.
    """

    def __init__(self) -> None:
        self.steps = 0
        self.waited = 0.0
        self.elapsed = 0.0

    def add(self, waited: float, elapsed: float) -> None:
        self.steps += 1
        if self.steps > 1:
            self.waited += waited
            self.elapsed += elapsed

    @property
    def fraction(self) -> float | None:
        return self.waited / self.elapsed if self.elapsed > 0 else None

    def held_up(self, workers: int) -> str | None:
        """What to tell a run whose loader could not keep up, if it could not."""
        fraction = self.fraction
        if fraction is None or fraction <= LOADER_BOUND:
            return None
        return (
            f"the loader held training up: {fraction:.0%} of the time after the first "
            f"step went to waiting for batches ({workers} loader workers). "
            "More data.num_workers, faster storage or lighter decoding would speed this up; "
            "benchmarks/bench_loader.py measures the rate per worker."
        )


class ProgressReport:
    """Progress after each step: the bar, or a plain line every ``log_every`` steps."""

    def __init__(
        self, step: int, total: int, *, log_every: int, shown: bool, say: Callable[[str], None]
    ) -> None:
        self.first_step = step
        self.total = total
        self.log_every = log_every
        self.say = say
        self.suffix = ""
        self.bar = None
        if shown and wants_progress_bar():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)

    def update(
        self,
        step: int,
        values: dict[str, float],
        lr: float,
        images_per_s: float,
        wait_share: float,
        elapsed: float,
    ) -> None:
        """Report ``step``, done ``elapsed`` seconds after this process's first one began."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                loss=f"{values['loss']:.4f}",
                **{_short(k): f"{v:.4f}" for k, v in _loss_parts(values).items()},
                img_s=f"{images_per_s:.0f}",
                data_wait=f"{wait_share:.0%}",
                **({"monitor": self.suffix} if self.suffix else {}),
            )
        elif step % self.log_every == 0 or step == self.total:
            eta = elapsed / (step - self.first_step) * (self.total - step)
            line = progress_line(step, self.total, values, lr, images_per_s, wait_share, eta)
            self.say(line + (f"; {self.suffix}" if self.suffix else ""))

    def note(self, text: str) -> None:
        """Show ``text`` (the latest monitor score) with every later progress report."""
        self.suffix = text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_line(
    step: int,
    total: int,
    values: dict[str, float],
    lr: float,
    images_per_s: float,
    wait_share: float,
    eta_s: float,
) -> str:
    """One plain-text progress line: the total loss with its parts, speed and ETA."""
    parts = _loss_parts(values)
    detail = f" ({', '.join(f'{_short(k)} {v:.4f}' for k, v in parts.items())})" if parts else ""
    return (
        f"step {step}/{total} ({step / total:.0%}) loss {values['loss']:.4f}{detail} "
        f"lr {lr:.3g} {images_per_s:.1f} img/s, {wait_share:.0%} waiting for data, "
        f"ETA {format_duration(eta_s)}"
    )


def wants_progress_bar() -> bool:
    """A live bar only on a terminal that reports its width.

    Redirected output, or a terminal with 0 columns (where tqdm prints nothing at
    all), gets plain progress lines with an ETA instead.
    """
    try:
        return sys.stderr.isatty() and os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


def _loss_parts(values: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if k != "loss"}


def _short(key: str) -> str:
    return key.removesuffix("_loss")
