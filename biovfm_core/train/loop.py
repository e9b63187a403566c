"""The training loop: one loop for every objective, from a CPU demo to torchrun on many GPUs.

Per optimizer step: set lr and weight decay from the plan; for each micro-batch,
move it to the device, apply the recipe's per-batch transform, run the objective's
step under autocast and backpropagate (gradient all-reduce only on the last
micro-batch); average the logged losses over ranks — a non-finite value on any rank
stops every rank before the optimizer step, leaving the last checkpoint as it was;
clip, call the objective's hooks around ``optimizer.step`` (last-layer freeze, EMA).

The run folder, checkpoints, the batch stream, progress output and skipped images
each have a module of their own; this one sets a run up, steps it and finishes it.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from biovfm_core.config import RunConfig
from biovfm_core.errors import BiovfmError, ConfigError
from biovfm_core.files import write_atomic
from biovfm_core.models import checkpoint as ckpt
from biovfm_core.models.export import export_backbone
from biovfm_core.models.normalisation import input_normalisation
from biovfm_core.models.specs import frozen_loader
from biovfm_core.protocols import OptimRecipe, RunInfo, StepInfo, TaskInfo
from biovfm_core.train import distributed as D
from biovfm_core.train import run_state
from biovfm_core.train.bad_images import BadImages
from biovfm_core.train.batching import BatchStream, batch_text, step_shape
from biovfm_core.train.checkpoints import RunCheckpoints, TrainingDiverged, pick_resume
from biovfm_core.train.data import open_index, order_record, training_data
from biovfm_core.train.loggers import RunLoggers
from biovfm_core.train.monitoring import Monitor, MonitorFactory, is_due
from biovfm_core.train.numerics import clip_gradients, mean_over_ranks, weights_checksum
from biovfm_core.train.optim import apply_schedule, build_optimizer, make_plan
from biovfm_core.train.preflight import run_preflight
from biovfm_core.train.profiling import StepProfiler
from biovfm_core.train.progress import LoaderWait, ProgressReport
from biovfm_core.train.run_folder import (
    RunFolder,
    agree,
    check_resume_names,
    resolve_auto_resume,
    run_folder,
)
from biovfm_core.train.sentinels import COLUMNS as SENTINEL_COLUMNS
from biovfm_core.train.signals import PREFIX as SENTINEL
from biovfm_core.train.signals import sentinel_values
from biovfm_core.train.watch import GRAD_SPIKE, SentinelWatch, TrainingCollapsed


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    checkpoint: Path | None
    export: Path | None
    last: dict[str, float] = field(default_factory=dict)
    rank_checksums: list[float] = field(default_factory=list)


# The loop's clock for speeds, data waits and ETAs; tests replace it with a fake one.
_clock = time.perf_counter


def train(
    config: RunConfig,
    registry=None,
    *,
    progress: bool = True,
    monitor_factory: MonitorFactory | None = None,
) -> RunResult:
    """Run (or resume) the training ``config`` describes; return where it left things.

    ``monitor_factory`` builds the ``train.monitor`` (``biovfm_core.eval.monitor.
    build_monitor``; the CLI passes it, as training cannot import evaluation)."""
    if registry is None:
        from biovfm_core.registry import get_registry

        registry = get_registry()
    if config.train.monitor and monitor_factory is None:
        raise ConfigError(
            f"train.monitor={config.train.monitor}: the monitor is built by the evaluation "
            "code; run `biovfm train`, or pass monitor_factory="
            "biovfm_core.eval.monitor.build_monitor to train()"
        )
    resolve_auto_resume(config)
    if config.resume:
        check_resume_names(config)
    config.validate(registry)
    # Before any data is scanned or loaded: a crop the patches do not tile, a model
    # checkpointing cannot split, fail here in one line, not at step 1.
    problems = run_preflight(config, registry).problems
    if problems:
        raise ConfigError("; ".join(problems))
    runtime = D.start(config.train.device, config.train.precision)
    try:
        return _Trainer(config, registry, runtime, progress, monitor_factory).run()
    finally:
        D.stop(runtime)


@dataclass
class _Parts:
    """What set-up builds and the loop and finish use."""

    data: Any
    backbone: Any
    objective: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    plan: Any
    identity: run_state.Identity
    steps_per_epoch: int
    total_steps: int
    step: int
    metrics: RunLoggers | None = None
    stream: BatchStream | None = None
    watch: SentinelWatch = field(default_factory=SentinelWatch)
    monitor: Monitor | None = None


class _Trainer:
    """One run as this process takes part in it (every rank has one)."""

    def __init__(
        self,
        config: RunConfig,
        registry,
        runtime: D.Runtime,
        progress: bool,
        monitor_factory: MonitorFactory | None = None,
    ) -> None:
        self.config = config
        self.monitor_factory = monitor_factory
        self.registry = registry
        self.rt = runtime
        self.progress = progress and runtime.is_main
        self.run_dir = agree(run_folder(config), runtime)
        self.folder = RunFolder(self.run_dir, self._say)
        self.checkpoints: RunCheckpoints | None = None  # once set-up knows the sharding
        self.bad = BadImages(self._say)
        self.steps_done = 0  # by this process
        self.feed = LoaderWait()
        self.last: dict[str, float] = {}
        self.loggers: RunLoggers | None = None
        self.collapsed: list = []  # this step's collapse alarms

    def run(self) -> RunResult:
        try:
            if self.rt.is_main:
                self.folder.claim(resuming=bool(self.config.resume))
            resumed = pick_resume(self.config.resume, self._say)
            if self.rt.is_main:
                self.config.save(self.run_dir / "config.yaml")
            self.rt.barrier()
            parts = self._set_up(resumed)
            self._loop(parts)
            result = self._finish(parts)
            self._finish_loggers("done")
            return result
        except OSError as exc:
            self._finish_loggers("failed")
            self._abandon()
            reason = ckpt.write_failure_reason(exc)
            if reason is None:
                raise
            where = exc.filename or self.run_dir
            raise BiovfmError(
                f"cannot write {where} (run folder {self.run_dir}): {reason}. Choose a "
                "writable --output with free space"
                + (", then resume the run" if self.steps_done else "")
            ) from None
        except BaseException as exc:
            self._finish_loggers("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            self._abandon()
            raise
        finally:
            self.folder.release()

    def _finish_loggers(self, status: str) -> None:
        if self.loggers is not None:
            self.loggers.finish(status)

    def _abandon(self) -> None:
        """A run that failed before its first step leaves no folder it created behind."""
        if self.steps_done == 0:
            self.folder.abandon()

    # ---------------------------------------------------------------- set-up

    def _set_up(self, resumed) -> _Parts:
        cfg, rt = self.config, self.rt
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        index, data_report = open_index(cfg, self.run_dir if rt.is_main else None)
        num_classes, multilabel = index.task_info()
        backbone = self.registry.build("backbones", cfg.backbone, options=cfg.options["backbone"])
        objective = self.registry.build(
            "objectives",
            cfg.objective,
            backbone,
            TaskInfo(
                num_classes=num_classes,
                multilabel=multilabel,
                load_model=frozen_loader(self.registry),
            ),
            options=cfg.options["objective"],
        )
        if cfg.init and resumed is None and cfg.init_mode == "objective":
            from biovfm_core.train.stage_init import init_from_run

            init_from_run(objective, cfg.objective, cfg.init, self._say)
        elif cfg.init and resumed is None:  # a resumed run's checkpoint already holds them
            from biovfm_core.models import published

            source = published.read_init(cfg.init, self.registry)
            published.check_recorded_sha(source, cfg.init_sha256)
            options = cfg.options["backbone"]
            target = f"backbone {cfg.backbone!r}" + (f" with options {options}" if options else "")
            published.init_objective(objective, backbone, source, target)
            if source.sha256 and cfg.init_sha256 != source.sha256:
                cfg.init_sha256 = source.sha256
                if rt.is_main:
                    cfg.save(self.run_dir / "config.yaml")
            self._say(f"starting from {source.kind} weights {cfg.init}")
        data = training_data(index, objective.views, cfg, self.registry)
        self.data_order = order_record(data, workers=cfg.data.num_workers)
        D.accelerate(
            objective,
            activation_checkpointing=cfg.train.activation_checkpointing,
            compile_blocks=cfg.train.compile,
        )
        objective.to(rt.device)

        micro, steps_per_epoch, total_steps = step_shape(cfg, rt.world_size, data.num_images)
        recipe = getattr(objective, "optim_recipe", None) or OptimRecipe()
        plan = make_plan(
            recipe,
            cfg.optim,
            batch_size=cfg.train.batch_size,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
        )
        # FSDP replaces parameters when it shards them: wrap before the optimizer
        # collects them, and restore checkpoints into the wrapped model.
        model = D.wrap(objective, rt, cfg.train.distributed)
        self.sharded = D.is_sharded(model)
        self.checkpoints = RunCheckpoints(
            self.run_dir, rt, cfg.train, sharded=self.sharded, say=self._say
        )
        parts = _Parts(
            data=data,
            backbone=backbone,
            objective=objective,
            model=model,
            optimizer=build_optimizer(objective, backbone, plan, rt.device),
            scaler=torch.amp.GradScaler("cuda") if rt.precision == "fp16" else None,
            plan=plan,
            identity=run_state.Identity(
                cfg.objective, cfg.backbone, cfg.options["objective"], cfg.options["backbone"]
            ),
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            step=0,
        )
        parts.watch = SentinelWatch(plan.warmup_steps)
        parts.monitor = self._build_monitor(objective)
        epoch, batch_in_epoch = 0, 0
        if resumed is not None:
            parts.watch.load_state_dict(resumed.state.get("sentinels", {}))
            parts.step, epoch, batch_in_epoch, self.bad.count = self.checkpoints.restore(
                resumed, parts, self.data_order
            )
            if rt.is_main:
                self.checkpoints.set_aside_newer(resumed)
        else:
            torch.manual_seed(cfg.train.seed + rt.rank)  # per-rank masks and drop-path

        parts.metrics = self.loggers = RunLoggers(
            cfg,
            self.registry,
            RunInfo(self.run_dir, self.run_dir.name, resume_step=parts.step),
            enabled=rt.is_main,
        )
        parts.stream = BatchStream(
            data, cfg, rt, micro=micro, epoch=epoch, batch_in_epoch=batch_in_epoch, bad=self.bad
        )
        if rt.is_main:
            summary = {
                "images": data.num_images,
                "world_size": rt.world_size,
                "device": str(rt.device),
                "precision": rt.precision,
                "batch_size_global": cfg.train.batch_size,
                "batch_per_rank": cfg.train.batch_size // rt.world_size,
                "micro_batch_per_rank": micro,
                "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps,
                "plan": plan.__dict__,
                "data": data_report,
            }
            write_atomic(
                self.run_dir / "data_report.json",
                json.dumps(summary, indent=2, default=str).encode(),
            )
            # The resolved recipe: the config as run, and the plan it resolved to
            # (peak lr after batch scaling, warm-up steps, ...).
            parts.metrics.log_config(
                {**cfg.to_dict(), "plan": json.loads(json.dumps(plan.__dict__))}
            )
            parts.metrics.log_artifact(self.run_dir / "config.yaml", "config.yaml")
            self._say(
                f"training {cfg.objective} on {cfg.backbone} "
                f"({backbone.num_parameters() / 1e6:.1f}M parameters) with {data.num_images} "
                f"images on {rt.world_size}x {rt.device} ({rt.precision}); {total_steps} steps, "
                f"{batch_text(cfg.train.batch_size, rt.world_size, cfg.optim.accumulate)}; "
                f"{steps_per_epoch} steps per epoch; peak lr {plan.lr:.3g}; "
                f"run folder {self.run_dir}"
            )
        return parts

    # ------------------------------------------------------------------ loop

    def _loop(self, p: _Parts) -> None:
        cfg, rt = self.config, self.rt
        step, total_steps = p.step, p.total_steps
        report = ProgressReport(
            step, total_steps, log_every=cfg.train.log_every, shown=self.progress, say=self._say
        )
        started = tick = _clock()
        profiler = StepProfiler(
            self.run_dir, cfg.train.profile_steps, rt.device.type, enabled=rt.is_main
        )
        try:
            while step < total_steps:
                info = StepInfo(step, total_steps, p.steps_per_epoch)
                lr, wd = apply_schedule(p.optimizer, p.plan, step)
                values, grad_norm, logged, waited, sentinels = self._step(p, info, profiler)
                step += 1
                self.steps_done += 1

                now = _clock()
                seconds, tick = now - tick, now
                self.feed.add(waited, seconds)
                with profiler.phase("log+checkpoint"):
                    row = {
                        "step": step,
                        "epoch": round(step / p.steps_per_epoch, 4),
                        **values,
                        "lr": lr,
                        "weight_decay": wd,
                        "grad_norm": grad_norm,
                        **logged,
                        "images_per_s": cfg.train.batch_size / seconds,
                        "data_wait_s": waited,
                        "memory_gb": _memory_gb(rt.device),
                        "bad_images": self.bad.count,
                        **self._watch(p, step, grad_norm, sentinels),
                    }
                    if cfg.train.monitor:
                        row.update(self._monitor(p, step, report))
                        tick = _clock()  # the next step's speed leaves the monitor out
                    p.metrics.log(row)
                    self._stop_on_collapse(step)
                    self.last = row
                    report.update(
                        step, values, lr, row["images_per_s"], waited / seconds, now - started
                    )
                    self.checkpoints.confirm(step)
                    if step % cfg.train.checkpoint_every == 0 or step == total_steps:
                        self._save(step, p)
                profiler.step()
        finally:
            profiled = profiler.close()
            report.close()
        p.step = step
        if profiled is not None:
            self._say(f"profile of {profiler.recorded} steps written to {profiled}")
        held_up = self.feed.held_up(cfg.data.num_workers)
        if rt.is_main and held_up:
            self._say(held_up)

    # ---------------------------------------------------------------- finish

    def _build_monitor(self, objective) -> Monitor | None:
        cfg, rt = self.config, self.rt
        if not (cfg.train.monitor and rt.is_main):
            return None
        monitor = self.monitor_factory(cfg, self.registry, rt.device, objective.views.global_size)
        self._say(monitor.describe() + f", every {cfg.train.monitor_every} steps")
        return monitor

    def _monitor(self, p: _Parts, step: int, report: ProgressReport) -> dict[str, Any]:
        """The monitor's columns: its scores on a due step, empty cells otherwise."""
        rt = self.rt
        if not is_due(step, self.config.train.monitor_every, p.total_steps):
            return dict.fromkeys(p.monitor.columns) if p.monitor else {}
        if self.sharded:
            # Sharded (FSDP) weights are gathered by every rank together; rank 0 then
            # evaluates a whole copy, built without touching the training streams.
            full_state = self.checkpoints.full_model_state(p.model, p.objective)
            if not rt.is_main:
                return {}
            with torch.random.fork_rng(devices=[rt.device] if rt.device.type == "cuda" else []):
                backbone = self._eval_backbone(p.objective, full_state).to(rt.device)
        elif rt.is_main:
            backbone = p.objective.eval_backbone()
        else:
            return {}  # DDP: the other ranks wait for rank 0 at the next all-reduce
        row: dict[str, Any] = dict.fromkeys(p.monitor.columns)
        scores = p.monitor.measure(backbone)
        row.update(scores)
        auc, low, high = (scores.get(f"monitor/knn_auc{b}") for b in ("", "_low", "_high"))
        if auc is not None:
            interval = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
            report.note(f"kNN AUC {auc:.3f}{interval} @{step}")
        return row

    def _watch(
        self, p: _Parts, step: int, grad_norm: float, sentinels: dict[str, float]
    ) -> dict[str, Any]:
        """The sentinel columns of this step; warns on a crossing and, under
        ``train.stop_on=collapse``, stops on a collapse sentinel's."""
        row: dict[str, Any] = dict.fromkeys(SENTINEL_COLUMNS)
        row.update(sentinels)
        row[GRAD_SPIKE] = p.watch.grad_spike(grad_norm)
        alarms = p.watch.check(row, step)
        for alarm in alarms:
            self._say(alarm.line())
        self.collapsed = [a for a in alarms if a.sentinel.kind == "collapse"]
        return row

    def _stop_on_collapse(self, step: int) -> None:
        """After the step's row is logged (the report shows the crossing), before any
        checkpoint of the collapsed weights is written."""
        if not (self.collapsed and self.config.train.stop_on == "collapse"):
            return
        first = self.collapsed[0]
        raise TrainingCollapsed(
            f"stopped at step {step} (train.stop_on=collapse): {first.sentinel.column} = "
            f"{first.value:.4g}; likely cause: {first.sentinel.cause}. "
            + self.checkpoints.last_good_text(
                what="no collapse sentinel crossed",
                advice="after changing the knob named above",
                event="the collapse",
                risk="collapsing features",
            )
        )

    def _finish(self, p: _Parts) -> RunResult:
        cfg, rt = self.config, self.rt
        full_state = self.checkpoints.full_model_state(p.model, p.objective)
        checksums = D.all_equal_across_ranks(
            weights_checksum(full_state) if full_state else 0.0, rt
        )
        if self.sharded:
            checksums = checksums[:1]  # one full model, gathered on rank 0
        result = RunResult(
            self.run_dir,
            p.step,
            ckpt.latest_checkpoint(self.run_dir),
            None,
            self.last,
            checksums,
        )
        if rt.is_main:
            self.bad.write(self.run_dir)
            result.export = export_backbone(
                self._eval_backbone(p.objective, full_state),
                self.run_dir / "export",
                backbone_name=cfg.backbone,
                backbone_options=cfg.options["backbone"],
                step=p.step,
                source=f"{cfg.objective} run {self.run_dir.name}",
                input_norm=input_normalisation(p.data.batch_recipe),
                init={"spec": cfg.init, "sha256": cfg.init_sha256} if cfg.init else None,
                run_config=cfg,
                hf=cfg.train.export_hf,
            )
            write_atomic(
                self.run_dir / "summary.json",
                json.dumps(
                    {
                        "steps": p.step,
                        "last": self.last,
                        "data_wait_fraction": self.feed.fraction,
                        "bad_images": self.bad.count,
                        "rank_weight_checksums": checksums,
                    },
                    indent=2,
                ).encode(),
            )
            self.loggers.log_artifact(self.run_dir / "export", "export")
            self.loggers.log_artifact(self.run_dir / "summary.json", "summary.json")
            if len(set(checksums)) > 1:
                raise BiovfmError(f"ranks ended with different weights: checksums {checksums}")
            skipped = self.bad.summary(self.run_dir)
            if skipped:
                self._say(skipped)
            self._say(f"done: {p.step} steps; backbone exported to {result.export}")
        rt.barrier()
        return result

    # ------------------------------------------------------------------ step

    def _step(self, p: _Parts, info: StepInfo, profiler):
        """One optimizer step over ``optim.accumulate`` micro-batches.

        Returns the rank-averaged logged values, the gradient norm, what the
        objective's after-step hook reported, and the seconds spent waiting for data.
        """
        cfg, rt = self.config, self.rt
        data, model, objective = p.data, p.model, p.objective
        optimizer, scaler = p.optimizer, p.scaler
        parts: dict[str, torch.Tensor] = {}
        signals: dict[str, torch.Tensor] = {}
        waited = 0.0
        for m in range(cfg.optim.accumulate):
            start_wait = _clock()
            with profiler.phase("data"):
                batch = next(p.stream)
                waited += _clock() - start_wait
                batch = batch.to(rt.device).finish()
            with profiler.phase("augment"):
                batch = data.batch_recipe.batch_transform(batch)
            with D.no_sync(model, m < cfg.optim.accumulate - 1):
                with profiler.phase("forward"), rt.autocast():
                    out = model(batch, info)
                loss = out["loss"] / cfg.optim.accumulate
                with profiler.phase("backward"):
                    (scaler.scale(loss) if scaler else loss).backward()
            signals = dict(out.pop("signals", None) or {})  # the last micro-batch's
            for key, value in out.items():
                parts[key] = parts.get(key, 0.0) + value.detach().float() / cfg.optim.accumulate
        # Sentinels on log steps (and the first, which fixes the metrics.csv columns),
        # averaged over ranks with the losses: every rank sees the same values.
        row_step = info.step + 1
        if row_step == 1 or row_step % cfg.train.log_every == 0 or row_step == info.total_steps:
            parts.update(sentinel_values(signals))
        del signals
        with profiler.phase("optimizer"):
            if scaler:
                scaler.unscale_(optimizer)
            # Clipping first lets the gradient norm travel with the losses: one
            # collective and one device sync per step. Nothing is applied before the
            # finiteness check, so a bad step still leaves the weights untouched.
            grad_norm = clip_gradients(objective, p.plan.grad_clip, rt.device, cfg.optim.clip_mode)
            values = mean_over_ranks({**parts, "grad_norm": grad_norm}, rt)
            grad_norm = values.pop("grad_norm")
            sentinels = {k: values.pop(k) for k in list(values) if k.startswith(SENTINEL)}
            # Under fp16 an infinite gradient is the scaler's business (it skips the step).
            finite_norm = scaler is not None or math.isfinite(grad_norm)
            finite = all(math.isfinite(v) for v in values.values()) and finite_norm
            if not finite and cfg.train.stop_on == "never":
                # Skip the update, as GradScaler skips an fp16 step with infinite grads.
                optimizer.zero_grad(set_to_none=True)
                self._say(
                    f"warning: loss is not finite at step {info.step + 1} ({_fmt(values)}); "
                    "skipped this step's update (train.stop_on=never)"
                )
                return values, grad_norm, {}, waited, sentinels
            if not finite:
                # 1-based, like metrics.csv: the step that would have been row step+1.
                raise TrainingDiverged(
                    f"loss is not finite at step {info.step + 1} ({_fmt(values)}, grad_norm="
                    f"{grad_norm}); stopped before the optimizer step, so no weights were "
                    f"changed. {self.checkpoints.last_good_text()}"
                )
            objective.before_optimizer_step(info)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            logged = dict(objective.after_optimizer_step(info))
        return values, grad_norm, logged, waited, sentinels

    # ------------------------------------------------------------ output

    def _save(self, step: int, p: _Parts) -> None:
        """Checkpoint ``step``, with where the loop stands in the data."""
        self.checkpoints.save(
            step,
            p,
            p.stream.position,
            self.bad.count,
            self.data_order,
            extra={"sentinels": p.watch.state_dict()},
        )

    def _eval_backbone(self, objective, full_state: dict[str, torch.Tensor] | None):
        backbone = objective.eval_backbone()
        if not self.sharded or full_state is None:
            return backbone
        # Sharded parameters cannot be exported; rebuild the backbone whole on rank 0.
        prefix = next(n for n, m in objective.named_modules() if m is backbone) + "."
        whole = self.registry.build(
            "backbones", self.config.backbone, options=self.config.options["backbone"]
        )
        whole.load_state_dict(
            {k.removeprefix(prefix): v for k, v in full_state.items() if k.startswith(prefix)}
        )
        return whole

    def _say(self, message: str) -> None:
        if self.rt.is_main and self.progress:
            print(message, file=sys.stderr, flush=True)


def _memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _fmt(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())
