"""Where a training step's time goes: torch.profiler split by the loop's phases.

``train.profile_steps: N`` profiles N steps of a real run (after a few settling
steps, so worker start-up and allocator warm-up stay out) and writes
``profile/trace.json.gz`` (open in Perfetto or chrome://tracing) and
``profile/summary.md`` into the run folder: per phase, the top-level tensor ops
(on a GPU each is at least one kernel launch, so a phase of many small ops is
bound by the host), host time and device time per step, then the costliest ops.
``benchmarks/profile_step.py`` prints the same tables for a synthetic step.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biovfm_core.files import write_atomic

# Kineto's own log lines ("ERROR:2026-11-29 23:04:00 4763:4763 DeviceProperties.cpp:56]
# gpuGetDeviceCount failed ..."), written by C++ straight to file descriptor 2.
_KINETO_LINE = re.compile(
    rb"^(USDT|STAGE|INFO|WARNING|ERROR):\d{4}-\d\d-\d\d [\d:]+ \d+:\d+ \S+\.cpp:\d+\]"
)


@contextlib.contextmanager
def quiet_kineto(enabled: bool) -> Iterator[None]:
    """Drop kineto's log lines from stderr while the profiler starts and stops.

    A CUDA build of torch probes the GPUs when a trace is collected, even with only
    CPU activities, and on a machine without a driver logs "gpuGetDeviceCount
    failed": noise on a CPU run. Other stderr output of the block is passed on.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture if not _KINETO_LINE.match(line)]
            if kept:
                sys.stderr.write(b"".join(kept).decode(errors="replace"))
                sys.stderr.flush()


# The loop's phases, in order; each is a torch.profiler record_function label.
PHASES = ("data", "augment", "forward", "backward", "optimizer", "log+checkpoint")


@dataclass
class PhaseRow:
    name: str
    ops: float  # top-level tensor ops per step
    host_ms: float
    device_ms: float | None  # CUDA kernel time; None without a GPU


def phase_rows(prof: Any, steps: int, phases: tuple[str, ...], on_device: bool) -> list[PhaseRow]:
    """Per-phase op counts and times, averaged over ``steps`` profiled steps."""
    ops: dict[str, int] = defaultdict(int)
    host: dict[str, float] = defaultdict(float)
    device: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name in phases:
            host[event.name] += event.cpu_time_total
            device[event.name] += event.device_time_total
        elif event.name.startswith("aten::") and _parent_name(event) in phases:
            ops[event.cpu_parent.name] += 1  # a top-level op of that phase
    return [
        PhaseRow(
            name=p,
            ops=ops[p] / steps,
            host_ms=host[p] / steps / 1e3,
            device_ms=device[p] / steps / 1e3 if on_device else None,
        )
        for p in phases
    ]


def _parent_name(event: Any) -> str | None:
    return event.cpu_parent.name if event.cpu_parent is not None else None


def phase_markdown(rows: list[PhaseRow]) -> str:
    lines = ["| phase | ops/step | host ms/step | device ms/step |", "|---|---:|---:|---:|"]
    for r in rows:
        dev = "-" if r.device_ms is None else f"{r.device_ms:.2f}"
        lines.append(f"| {r.name} | {r.ops:.0f} | {r.host_ms:.2f} | {dev} |")
    total_dev = "-"
    if rows and rows[0].device_ms is not None:
        total_dev = f"{sum(r.device_ms or 0.0 for r in rows):.2f}"
    lines.append(
        f"| **step** | {sum(r.ops for r in rows):.0f} | {sum(r.host_ms for r in rows):.2f} "
        f"| {total_dev} |"
    )
    return "\n".join(lines)


def ops_markdown(prof: Any, steps: int, phases: tuple[str, ...], on_device: bool, top: int) -> str:
    """The ``top`` ops by self time (device time on a GPU, host time otherwise)."""
    key = "self_device_time_total" if on_device else "self_cpu_time_total"
    averages = [a for a in prof.key_averages() if a.key not in phases]
    averages.sort(key=lambda a: getattr(a, key), reverse=True)
    where = "device" if on_device else "host"
    lines = [f"| op | calls/step | self {where} ms/step |", "|---|---:|---:|"]
    for a in averages[:top]:
        lines.append(f"| {a.key} | {a.count / steps:.0f} | {getattr(a, key) / steps / 1e3:.2f} |")
    return "\n".join(lines)


class StepProfiler:
    """Profiles ``steps`` loop steps after ``SETTLE`` steps; a no-op when ``steps`` is 0.

    The loop wraps each phase in ``phase(name)`` and calls ``step()`` once per
    optimizer step. Only the main process profiles (one trace per run, not per rank).
    """

    SETTLE = 3

    def __init__(self, run_dir: Path, steps: int, device_type: str, *, enabled: bool) -> None:
        self.run_dir = run_dir
        self.steps = steps
        self.on_device = device_type == "cuda"
        self._prof = None
        self._calls = 0
        self.written: Path | None = None
        if not (enabled and steps > 0):
            return
        from torch.profiler import ProfilerActivity, profile, schedule

        activities = [ProfilerActivity.CPU]
        if self.on_device:
            activities.append(ProfilerActivity.CUDA)
        self._prof = profile(
            activities=activities,
            schedule=schedule(wait=self.SETTLE - 1, warmup=1, active=steps, repeat=1),
            on_trace_ready=self._write,
        )
        with quiet_kineto(not self.on_device):
            self._prof.__enter__()

    def phase(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A labelled range in the trace while profiling; nothing otherwise."""
        if self._prof is None:
            return contextlib.nullcontext()
        from torch.profiler import record_function

        return record_function(name)

    def step(self) -> None:
        if self._prof is not None:
            self._calls += 1
            with quiet_kineto(not self.on_device):
                self._prof.step()

    @property
    def recorded(self) -> int:
        """Profiled steps so far (the schedule records after the settling steps)."""
        return min(self.steps, max(0, self._calls - self.SETTLE))

    def close(self) -> Path | None:
        """Stop profiling; a run shorter than settle + steps writes what it recorded.
        Returns the profile folder, or None when no step was profiled."""
        if self._prof is not None:
            prof, self._prof = self._prof, None
            with quiet_kineto(not self.on_device):
                prof.__exit__(None, None, None)
        return self.written

    def _write(self, prof: Any) -> None:
        steps = self.recorded
        if steps == 0:
            return
        folder = self.run_dir / "profile"
        folder.mkdir(parents=True, exist_ok=True)
        text = "\n\n".join(
            [
                f"# Profile of {steps} steps after {self.SETTLE} settling steps",
                phase_markdown(phase_rows(prof, steps, PHASES, self.on_device)),
                ops_markdown(prof, steps, PHASES, self.on_device, top=30),
            ]
        )
        write_atomic(folder / "summary.md", (text + "\n").encode())
        tmp = folder / ".tmp-trace.json.gz"  # the suffix tells torch to gzip
        prof.export_chrome_trace(str(tmp))
        os.replace(tmp, folder / "trace.json.gz")
        self.written = folder
