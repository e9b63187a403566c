"""The report's figures, each a PNG (bytes) or None when the run has nothing to show.

matplotlib is imported here only, with the Agg backend, so the report works on a
machine without a display and ``biovfm --help`` stays fast.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from biovfm_core.runreport.read import RunRecord
from biovfm_core.train.sentinels import HOLD_STEPS, SENTINELS, Sentinel

# The schedules a run logs, as metrics.csv names them (DINOv2's teacher ones only there).
SCHEDULES = (
    ("lr", "learning rate"),
    ("weight_decay", "weight decay"),
    ("teacher_momentum", "teacher momentum"),
    ("teacher_temp", "teacher temperature"),
)
# Interval columns beside a monitor value ``monitor/x``: the first pair found is drawn.
INTERVAL_SUFFIXES = (
    ("_low", "_high"),
    ("_ci_low", "_ci_high"),
    ("_lo", "_hi"),
    ("_lower", "_upper"),
)


@dataclass
class Figure:
    title: str
    png: bytes
    note: str = ""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def _xy(record: RunRecord, column: str) -> tuple[list[int], list[float]]:
    pairs = [
        (s, v)
        for s, v in zip(record.steps, record.columns[column], strict=True)
        if math.isfinite(v)
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _style(count: int) -> dict:
    # A few points (a short or monitor-only curve) would be invisible as a bare line.
    return {"marker": "o", "markersize": 3} if count <= 30 else {}


def losses(record: RunRecord) -> Figure | None:
    names = [c for c in record.columns if c.endswith("loss") and record.has(c)]
    if not names:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name in sorted(names, key=lambda n: (n != "loss", n)):
        xs, ys = _xy(record, name)
        ax.plot(xs, ys, label=name, linewidth=2.2 if name == "loss" else 1.2, **_style(len(xs)))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return Figure("Loss and its parts", _png(fig))


def schedules(record: RunRecord) -> Figure | None:
    present = [(c, label) for c, label in SCHEDULES if record.has(c)]
    if not present:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 2.8), squeeze=False)
    for ax, (column, label) in zip(axes[0], present, strict=True):
        xs, ys = _xy(record, column)
        ax.plot(xs, ys, **_style(len(xs)))
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.tight_layout()
    return Figure("Schedules: lr, weight decay, teacher momentum and temperature", _png(fig))


# Seconds, not a score: drawn on its own axis so the scores (0-1) keep their scale.
MONITOR_SECONDS = "monitor/seconds"


def monitor_columns(record: RunRecord) -> dict[str, tuple[str, str] | None]:
    """Each monitor value column and its interval pair (None without one)."""
    interval_columns = set()
    found: dict[str, tuple[str, str] | None] = {}
    names = [c for c in record.columns if c.startswith("monitor/") and c != MONITOR_SECONDS]
    for name in names:
        for low, high in INTERVAL_SUFFIXES:
            if name + low in record.columns and name + high in record.columns:
                interval_columns |= {name + low, name + high}
                found[name] = (name + low, name + high)
                break
    for name in names:
        if name not in found and name not in interval_columns and record.has(name):
            found[name] = None
    return {k: found[k] for k in names if k in found and record.has(k)}


def monitor(record: RunRecord) -> Figure | None:
    found = monitor_columns(record)
    if not found:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, interval in found.items():
        xs, ys = _xy(record, name)
        (line,) = ax.plot(xs, ys, label=name.removeprefix("monitor/"), marker="o", markersize=4)
        if interval is not None:
            rows = [
                (s, lo, hi)
                for s, lo, hi in zip(
                    record.steps,
                    record.columns[interval[0]],
                    record.columns[interval[1]],
                    strict=True,
                )
                if math.isfinite(lo) and math.isfinite(hi)
            ]
            if rows:
                ax.fill_between(
                    [r[0] for r in rows],
                    [r[1] for r in rows],
                    [r[2] for r in rows],
                    color=line.get_color(),
                    alpha=0.2,
                    label=f"{name.removeprefix('monitor/')} interval",
                )
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if record.has(MONITOR_SECONDS):
        xs, ys = _xy(record, MONITOR_SECONDS)
        right = ax.twinx()
        right.plot(xs, ys, color="0.6", linestyle=":", marker=".", label="seconds")
        right.set_ylabel("monitor seconds (dotted)", color="0.4")
    return Figure("Monitor (features of the evaluation backbone, with intervals)", _png(fig))


def threshold_line(sentinel: Sentinel, values: list[float]) -> list[float]:
    """The alarm level at each logged step: the threshold itself, or for ``of_best``
    the threshold times the best value so far (highest for a ``below`` sentinel)."""
    if sentinel.rule != "of_best":
        return [sentinel.threshold] * len(values)
    line, best = [], math.nan
    for value in values:
        if math.isfinite(value):
            if not math.isfinite(best):
                best = value
            else:
                best = max(best, value) if sentinel.direction == "below" else min(best, value)
        line.append(sentinel.threshold * best if math.isfinite(best) else math.nan)
    return line


def sentinels(record: RunRecord) -> Figure | None:
    present = [s for s in SENTINELS if record.has(s.column)]
    if not present:
        return None
    plt = _pyplot()
    cols = min(3, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    notes = []
    for ax, sentinel in zip(list(axes.flat)[: len(present)], present, strict=True):
        values = record.columns[sentinel.column]
        xs, ys = _xy(record, sentinel.column)
        ax.plot(xs, ys, **_style(len(xs)))
        limit = threshold_line(sentinel, values)
        ax.plot(
            record.steps, limit, color="tab:red", linestyle="--", linewidth=1, label="alarm level"
        )
        ax.set_title(sentinel.column.removeprefix("sentinel/"), fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        rule = {
            "value": f"alarm when {sentinel.direction} {sentinel.threshold:g}",
            "of_best": f"alarm when {sentinel.direction} {sentinel.threshold:g} x its best so far",
            "held": f"alarm when {sentinel.direction} {sentinel.threshold:g} "
            f"for {HOLD_STEPS} log steps in a row",
        }[sentinel.rule]
        notes.append(f"{sentinel.column}: {sentinel.label}; {rule}.")
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    fig.tight_layout()
    return Figure("Sentinels and their alarm levels", _png(fig), "\n".join(notes))


def throughput(record: RunRecord) -> Figure | None:
    if not record.has("images_per_s"):
        return None
    plt = _pyplot()
    xs, speed = _xy(record, "images_per_s")
    share = _data_wait_share(record)
    panels = 2 if share else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 2.8), squeeze=False)
    axes[0][0].plot(xs, speed, **_style(len(xs)))
    axes[0][0].set_title("images per second", fontsize=9)
    if share:
        axes[0][1].plot(share[0], [100 * v for v in share[1]], **_style(len(share[0])))
        axes[0][1].set_title("share of step time waiting for data (%)", fontsize=9)
        axes[0][1].set_ylim(bottom=0)
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return Figure("Throughput and data wait", _png(fig))


def _data_wait_share(record: RunRecord) -> tuple[list[int], list[float]] | None:
    """data_wait_s / step time; the step time is the global batch / images_per_s (the
    loop logs images_per_s as train.batch_size / the step's seconds)."""
    batch = (record.config.get("train") or {}).get("batch_size")
    if not batch or not record.has("data_wait_s"):
        return None
    xs, share = [], []
    for step, wait, speed in zip(
        record.steps, record.columns["data_wait_s"], record.columns["images_per_s"], strict=True
    ):
        if math.isfinite(wait) and math.isfinite(speed) and speed > 0:
            xs.append(step)
            share.append(min(1.0, wait / (batch / speed)))
    return (xs, share) if xs else None


def all_figures(record: RunRecord) -> list[Figure]:
    made = (losses, schedules, monitor, sentinels, throughput)
    return [f for f in (make(record) for make in made) if f is not None]
