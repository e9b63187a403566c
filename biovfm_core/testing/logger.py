"""``check_logger``: does an experiment logger take what a biovfm run sends it?

It plays a short run against the logger the way the training loop does (rank 0):
``start``, ``log_config`` with a real nested config, three steps of rows holding
losses, schedules, sentinel columns on every step and monitor columns on one step
only, blank (``None``) and NaN cells, a text cell, then ``log_artifact`` for a file
and for the export folder, and ``finish("done")``; then the same run resumed from
step 2, as after a preemption. With ``read_back`` (a function of the run folder
returning ``{step: {column: value}}``) it also checks that every finite number sent
was stored, at its step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from biovfm_core.protocols import ExperimentLogger, RunInfo
from biovfm_core.testing._plugin import _Plugin
from biovfm_core.testing.errors import _fail

ReadBack = Callable[[Path], Mapping[int, Mapping[str, Any]]]

# What a DINOv2 run with the monitor on sends: numbers, blanks and one text cell.
SAMPLE_CONFIG: dict[str, Any] = {
    "objective": "dinov2",
    "backbone": "vit_tiny",
    "data": {"sources": ["folder:/data/a", "folder:/data/b"], "fraction": 1.0},
    "train": {"batch_size": 8, "max_steps": 3, "loggers": ["csv"], "epoch_length": None},
    "options": {"objective": {"teacher_temp": 0.07}, "logger": {}},
    "plan": {"lr": 0.0005, "betas": [0.9, 0.999], "grad_clip": None},
}


def sample_rows() -> dict[int, dict[str, Any]]:
    """Step -> row, as the loop sends them (``step`` is passed apart)."""
    rows: dict[int, dict[str, Any]] = {}
    for step in (1, 2, 3):
        rows[step] = {
            "epoch": step / 15,
            "loss": 10.0 - step,
            "dino_loss": 6.0 - step / 10,
            "lr": 1e-4 * step,
            "weight_decay": 0.04,
            "teacher_temp": 0.04,
            "grad_norm": float("nan") if step == 3 else 2.5,
            "images_per_s": 100.0 + step,
            "data_wait_s": 0.01,
            "bad_images": 0,
            "sentinel/rankme": 0.9 - step / 10,
            "sentinel/loss_at_lnk": 0.95,
            "monitor/knn_acc": 0.61 if step == 2 else None,
            "monitor/knn_acc_low": 0.55 if step == 2 else None,
            "monitor/knn_acc_high": 0.67 if step == 2 else None,
            "note": "resumed" if step == 3 else "",
        }
    return rows


def check_logger(
    name_or_factory: str | Callable[..., Any],
    folder: str | Path,
    *,
    options: Mapping[str, Any] | None = None,
    read_back: ReadBack | None = None,
    resume: bool = True,
    rel_tol: float = 1e-6,
    registry: Any = None,
) -> Path:
    """Run a short fake run through the logger in ``folder``; return its run folder.

    ``name_or_factory`` is a registered logger name or the factory itself; ``options``
    are its options as ``--opt logger.NAME.OPTION`` would give them; ``rel_tol`` how
    close a stored number must be (a store that keeps float32 or rounds). Raises
    ``ConformanceError`` naming what the logger did wrong.
    """
    plugin = _Plugin("logger", name_or_factory, preset={}, options=options, registry=registry)
    run_dir = Path(folder) / "check-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("objective: dinov2\n", encoding="utf-8")
    export = run_dir / "export"
    export.mkdir(exist_ok=True)
    (export / "model.safetensors").write_bytes(b"\0" * 64)
    rows = sample_rows()

    logger = plugin.build()
    if not isinstance(logger, ExperimentLogger):
        missing = [
            m
            for m in ("start", "log_config", "log_metrics", "log_artifact", "finish")
            if not callable(getattr(logger, m, None))
        ]
        raise _fail(
            plugin.what,
            f"the factory's result {type(logger).__name__} lacks {', '.join(missing)}",
            "implement biovfm_core.protocols.ExperimentLogger",
        )
    sent: dict[int, dict[str, Any]] = {}
    _play(plugin.what, logger, RunInfo(run_dir, run_dir.name), rows, (1, 2, 3), sent)
    if resume:
        # Resumed from step 2's checkpoint: step 3 is logged again by a new logger.
        again = plugin.build()
        _play(plugin.what, again, RunInfo(run_dir, run_dir.name, resume_step=2), rows, (3,), sent)
    if read_back is not None:
        _compare(plugin.what, sent, read_back(run_dir), rel_tol)
    return run_dir


def _play(
    what: str,
    logger: Any,
    run: RunInfo,
    rows: dict[int, dict[str, Any]],
    steps: tuple[int, ...],
    sent: dict[int, dict[str, Any]],
) -> None:
    calls: list[tuple[str, tuple[Any, ...]]] = [
        ("start", (run,)),
        ("log_config", (SAMPLE_CONFIG,)),
        ("log_artifact", (run.run_dir / "config.yaml", "config.yaml")),
    ]
    calls += [("log_metrics", (step, dict(rows[step]))) for step in steps]
    calls += [("log_artifact", (run.run_dir / "export", "export")), ("finish", ("done",))]
    for method, args in calls:
        try:
            getattr(logger, method)(*args)
        except Exception as exc:
            at = f" at step {args[0]}" if method == "log_metrics" else ""
            raise _fail(
                what,
                f"{method}(){at} raised {type(exc).__name__}: {exc}",
                "accept every row a run sends: skip None, NaN and non-number cells, and "
                "columns that appear only at some steps (monitor/...); a resumed run "
                "calls start() again with resume_step set",
            ) from exc
        if method == "log_metrics":
            sent.setdefault(args[0], {}).update({k: v for k, v in args[1].items() if _is_number(v)})


def _compare(
    what: str,
    sent: dict[int, dict[str, Any]],
    stored: Mapping[int, Mapping[str, Any]],
    rel_tol: float,
) -> None:
    for step, values in sent.items():
        held = stored.get(step)
        if held is None:
            raise _fail(what, f"nothing was stored for step {step}", "log every row at its step")
        for column, value in values.items():
            got = held.get(column)
            if not isinstance(got, (int, float)) or not math.isclose(
                float(got), float(value), rel_tol=rel_tol
            ):
                raise _fail(
                    what,
                    f"step {step} column {column!r}: sent {value!r}, stored {got!r}",
                    "store every finite number under its column name and step",
                )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
