"""The training loop: one loop for every objective, from a CPU demo to torchrun on many GPUs.

Per optimizer step: set lr and weight decay from the plan; for each micro-batch,
move it to the device, apply the recipe's per-batch transform, run the objective's
step under autocast and backpropagate (gradient all-reduce only on the last
micro-batch); average the logged losses over ranks — a non-finite value on any rank
stops every rank before the optimizer step, leaving the last checkpoint as it was;
clip, call the objective's hooks around ``optimizer.step`` (last-layer freeze, EMA).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from biovfm_core.config import RunConfig
from biovfm_core.data.order import batches_per_epoch, check_order
from biovfm_core.durations import format_duration
from biovfm_core.errors import BiovfmError, ConfigError
from biovfm_core.files import write_atomic
from biovfm_core.locks import RunLock
from biovfm_core.models import checkpoint as ckpt
from biovfm_core.models.export import export_backbone
from biovfm_core.models.normalisation import input_normalisation
from biovfm_core.protocols import Batch, OptimRecipe, StepInfo, TaskInfo
from biovfm_core.train import distributed as D
from biovfm_core.train import run_state
from biovfm_core.train.data import (
    make_loader,
    make_order,
    open_index,
    order_record,
    training_data,
)
from biovfm_core.train.metrics import MetricsLog
from biovfm_core.train.optim import apply_schedule, build_optimizer, make_plan
from biovfm_core.train.profiling import StepProfiler

DEFAULT_EPOCHS = 100  # DINOv2's and a common MAE schedule length, when none is given


class TrainingDiverged(BiovfmError):
    """The loss became NaN or infinite; the run stopped before corrupting its state."""


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


def resolve_auto_resume(config: RunConfig) -> None:
    """``--resume auto``: continue ``output/name`` if it has a checkpoint, else start it.

    What a requeued cluster job wants: the same command line works for the first
    attempt and for every restart after a preemption.
    """
    if config.resume != "auto":
        return
    if not config.name:
        raise ConfigError("--resume auto needs --name, to know which run folder to continue")
    folder = Path(config.output) / config.name
    config.resume = str(folder) if ckpt.latest_checkpoint(folder) is not None else None


def run_folder(config: RunConfig) -> Path:
    if config.resume:
        path = Path(config.resume)
        # A checkpoint folder's run is two levels up: RUN/checkpoints/step_N.
        explicit = (path / "state.pt").is_file() or ckpt.is_checkpoint_folder(path)
        return path.parent.parent if explicit else path
    return Path(config.output) / (config.name or default_run_name(config))


def default_run_name(config: RunConfig) -> str:
    # A time stamp alone collides: sweeps and job arrays start runs in the same second.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{config.objective}-{config.backbone}-{stamp}-{secrets.token_hex(2)}"


def train(config: RunConfig, registry=None, *, progress: bool = True) -> RunResult:
    """Run (or resume) the training ``config`` describes; return where it left things."""
    if registry is None:
        from biovfm_core.registry import get_registry

        registry = get_registry()
    resolve_auto_resume(config)
    if config.resume:
        check_resume_names(config)
    config.validate(registry)
    runtime = D.start(config.train.device, config.train.precision)
    try:
        return _Trainer(config, registry, runtime, progress).run()
    finally:
        D.stop(runtime)


def check_resume_names(config: RunConfig) -> None:
    # Before option checks: "this checkpoint is a DINOv2 run" says more than
    # "unknown option prototypes for mae".
    candidates = ckpt.resume_candidates(Path(config.resume))
    if not candidates:
        raise ConfigError(f"--resume {config.resume}: no checkpoint found there")
    held, problem = None, None
    for found in candidates:  # a corrupt newest checkpoint is passed over later, too
        try:
            held = ckpt.read_meta(found)
            break
        except ConfigError as exc:
            problem = exc
    if held is None:
        raise problem
    if (held.get("objective"), held.get("backbone")) != (config.objective, config.backbone):
        raise ConfigError(
            f"checkpoint {found} holds objective {held.get('objective')!r} on backbone "
            f"{held.get('backbone')!r}; this run is objective {config.objective!r} on backbone "
            f"{config.backbone!r}. Resume it with the same objective and backbone, or start a "
            "new run without --resume"
        )


# A checkpoint counts as good once the loss stayed finite this many steps after it
# (at most until the next checkpoint): weights can explode a step before the loss
# turns NaN, so the newest checkpoint before a divergence may already be poisoned.
CONFIRM_STEPS = 10

# Images that failed to decode in a row (no usable image in between) before the run
# stops: a run whose every image is unreadable would otherwise wait forever for a
# usable batch. Capped by the data size, so a small broken source stops within an epoch.
MAX_FAILED_IN_A_ROW = 1000


class BadDataError(BiovfmError):
    """The data stream yields no usable images."""


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
    micro: int
    steps_per_epoch: int
    total_steps: int
    step: int
    epoch: int
    batch_in_epoch: int
    metrics: MetricsLog | None = None


class _Trainer:
    def __init__(self, config: RunConfig, registry, runtime: D.Runtime, progress: bool) -> None:
        self.config = config
        self.registry = registry
        self.rt = runtime
        self.progress = progress and runtime.is_main
        self.run_dir = self._agree(run_folder(config))
        self.position = [0, 0]  # (epoch, loader batches consumed in it)
        self.bad_images = 0
        self.bad_entries: list[tuple[str, str]] = []
        self.failed_in_a_row: list[tuple[str, str]] = []
        self.lock: RunLock | None = None
        self.created_folder = False
        self.steps_done = 0  # by this process
        self.unconfirmed: tuple[Path, int] | None = None  # (checkpoint, its step)
        self.feed = LoaderWait()
        self.last: dict[str, float] = {}

    def run(self) -> RunResult:
        try:
            self._claim_folder()
            resumed = self._resume_checkpoint()
            if self.rt.is_main:
                self.config.save(self.run_dir / "config.yaml")
            self.rt.barrier()
            parts = self._set_up(resumed)
            self._loop(parts)
            return self._finish(parts)
        except OSError as exc:
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
        except BaseException:
            self._abandon()
            raise
        finally:
            if self.lock is not None:
                self.lock.release()

    # ---------------------------------------------------------------- set-up

    def _agree(self, path: Path) -> Path:
        """Rank 0's run folder on every rank (a default name has a random part)."""
        if not self.rt.distributed:
            return path
        shared = [str(path)]
        dist.broadcast_object_list(shared, src=0)
        return Path(shared[0])

    def _claim_folder(self) -> None:
        """Create and lock the run folder (rank 0); refuse a folder another run owns."""
        if not self.rt.is_main:
            return
        self.created_folder = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.run_dir).acquire(self._say)
        if not self.config.resume and ckpt.list_checkpoints(self.run_dir):
            raise ConfigError(
                f"run folder {self.run_dir} already holds checkpoints of a run; continue it "
                "with --resume, or choose another --name or --output"
            )
        ckpt.remove_leftovers(self.run_dir, self._say)

    def _abandon(self) -> None:
        """A run that failed before its first step leaves no folder it created behind."""
        # Only while holding the lock: a process that lost the race for a new folder
        # must not remove the winner's.
        if not (self.lock is not None and self.created_folder and self.steps_done == 0):
            return
        if ckpt.list_checkpoints(self.run_dir):
            return
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        shutil.rmtree(self.run_dir, ignore_errors=True)

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
            TaskInfo(num_classes=num_classes, multilabel=multilabel),
            options=cfg.options["objective"],
        )
        if cfg.init and resumed is None:  # a resumed run's checkpoint already holds them
            from biovfm_core.models import published as init_weights

            source = init_weights.read_init(cfg.init, self.registry)
            init_weights.check_recorded_sha(source, cfg.init_sha256)
            options = cfg.options["backbone"]
            target = f"backbone {cfg.backbone!r}" + (f" with options {options}" if options else "")
            init_weights.init_objective(objective, backbone, source, target)
            if source.sha256 and cfg.init_sha256 != source.sha256:
                cfg.init_sha256 = source.sha256
                if rt.is_main:
                    cfg.save(self.run_dir / "config.yaml")
            self._say(f"starting from {source.kind} weights {cfg.init}")
        data = training_data(index, objective.views, cfg, self.registry)
        self.data_order = order_record(data, workers=cfg.data.num_workers)
        self._accelerate(objective)
        objective.to(rt.device)

        micro, steps_per_epoch, total_steps = self._schedule_shape(data.num_images)
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
            micro=micro,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            step=0,
            epoch=0,
            batch_in_epoch=0,
        )
        if resumed is not None:
            parts.step, parts.epoch, parts.batch_in_epoch = self._restore(resumed, parts)
            if rt.is_main:
                self._set_aside_newer(resumed)
        else:
            torch.manual_seed(cfg.train.seed + rt.rank)  # per-rank masks and drop-path

        parts.metrics = MetricsLog(self.run_dir, resume_step=parts.step, enabled=rt.is_main)
        if rt.is_main:
            summary = {
                "images": data.num_images,
                "world_size": rt.world_size,
                "device": str(rt.device),
                "precision": rt.precision,
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
            self._say(
                f"training {cfg.objective} on {cfg.backbone} "
                f"({backbone.num_parameters() / 1e6:.1f}M parameters) with {data.num_images} "
                f"images on {rt.world_size}x {rt.device} ({rt.precision}); {total_steps} steps "
                f"of {cfg.train.batch_size} images, peak lr {plan.lr:.3g}; run folder {self.run_dir}"
            )
        return parts

    # ------------------------------------------------------------------ loop

    def _loop(self, p: _Parts) -> None:
        cfg, rt = self.config, self.rt
        stream = self._batches(p.data, p.micro, p.epoch, p.batch_in_epoch)
        step, total_steps = p.step, p.total_steps
        bar = self._progress_bar(step, total_steps)
        started = tick = _clock()
        first_step = step
        profiler = StepProfiler(
            self.run_dir, cfg.train.profile_steps, rt.device.type, enabled=rt.is_main
        )
        try:
            while step < total_steps:
                info = StepInfo(step, total_steps, p.steps_per_epoch)
                lr, wd = apply_schedule(p.optimizer, p.plan, step)
                values, grad_norm, logged, waited = self._step(stream, p, info, profiler)
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
                        "bad_images": self.bad_images,
                    }
                    p.metrics.log(row)
                    self.last = row
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            loss=f"{values['loss']:.4f}",
                            **{_short(k): f"{v:.4f}" for k, v in _loss_parts(values).items()},
                            img_s=f"{row['images_per_s']:.0f}",
                            data_wait=f"{waited / seconds:.0%}",
                        )
                    elif step % cfg.train.log_every == 0 or step == total_steps:
                        eta = (now - started) / (step - first_step) * (total_steps - step)
                        line = progress_line(
                            step,
                            total_steps,
                            values,
                            lr,
                            row["images_per_s"],
                            waited / seconds,
                            eta,
                        )
                        self._say(line)
                    self._confirm_checkpoint(step)
                    if step % cfg.train.checkpoint_every == 0 or step == total_steps:
                        self._save(step, p)
                profiler.step()
        finally:
            profiled = profiler.close()
            if bar is not None:
                bar.close()
            p.metrics.close()
        p.step = step
        if profiled is not None:
            self._say(f"profile of {profiler.recorded} steps written to {profiled}")
        fraction = self.feed.fraction
        if rt.is_main and fraction is not None and fraction > LOADER_BOUND:
            self._say(
                f"the loader held training up: {fraction:.0%} of the time after the first "
                f"step went to waiting for batches ({cfg.data.num_workers} loader workers). "
                "More data.num_workers, faster storage or lighter decoding would speed this up; "
                "benchmarks/bench_loader.py measures the rate per worker."
            )

    # ---------------------------------------------------------------- finish

    def _finish(self, p: _Parts) -> RunResult:
        cfg, rt = self.config, self.rt
        full_state = self._full_model_state(p.model, p.objective)
        checksums = D.all_equal_across_ranks(_checksum(full_state) if full_state else 0.0, rt)
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
            self._write_bad_images()
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
            )
            write_atomic(
                self.run_dir / "summary.json",
                json.dumps(
                    {
                        "steps": p.step,
                        "last": self.last,
                        "data_wait_fraction": self.feed.fraction,
                        "rank_weight_checksums": checksums,
                    },
                    indent=2,
                ).encode(),
            )
            if len(set(checksums)) > 1:
                raise BiovfmError(f"ranks ended with different weights: checksums {checksums}")
            self._say(f"done: {p.step} steps; backbone exported to {result.export}")
        rt.barrier()
        return result

    # ------------------------------------------------------------------ step

    def _step(self, stream, p: _Parts, info: StepInfo, profiler):
        """One optimizer step over ``optim.accumulate`` micro-batches.

        Returns the rank-averaged logged values, the gradient norm, what the
        objective's after-step hook reported, and the seconds spent waiting for data.
        """
        cfg, rt = self.config, self.rt
        data, model, objective = p.data, p.model, p.objective
        optimizer, scaler = p.optimizer, p.scaler
        parts: dict[str, torch.Tensor] = {}
        waited = 0.0
        for m in range(cfg.optim.accumulate):
            start_wait = _clock()
            with profiler.phase("data"):
                batch = next(stream)
                waited += _clock() - start_wait
                batch = batch.to(rt.device)
            with profiler.phase("augment"):
                batch = data.batch_recipe.batch_transform(batch)
            with D.no_sync(model, m < cfg.optim.accumulate - 1):
                with profiler.phase("forward"), rt.autocast():
                    out = model(batch, info)
                loss = out["loss"] / cfg.optim.accumulate
                with profiler.phase("backward"):
                    (scaler.scale(loss) if scaler else loss).backward()
            for key, value in out.items():
                parts[key] = parts.get(key, 0.0) + value.detach().float() / cfg.optim.accumulate
        with profiler.phase("optimizer"):
            if scaler:
                scaler.unscale_(optimizer)
            # Clipping first lets the gradient norm travel with the losses: one
            # collective and one device sync per step. Nothing is applied before the
            # finiteness check, so a bad step still leaves the weights untouched.
            grad_norm = self._clip(objective, p.plan.grad_clip)
            values = self._reduce({**parts, "grad_norm": grad_norm})
            grad_norm = values.pop("grad_norm")
            # Under fp16 an infinite gradient is the scaler's business (it skips the step).
            finite_norm = scaler is not None or math.isfinite(grad_norm)
            if not (all(math.isfinite(v) for v in values.values()) and finite_norm):
                # 1-based, like metrics.csv: the step that would have been row step+1.
                raise TrainingDiverged(
                    f"loss is not finite at step {info.step + 1} ({_fmt(values)}, grad_norm="
                    f"{grad_norm}); stopped before the optimizer step, so no weights were "
                    f"changed. {self._last_good_text()}"
                )
            objective.before_optimizer_step(info)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            logged = dict(objective.after_optimizer_step(info))
        return values, grad_norm, logged, waited

    def _schedule_shape(self, num_images: int) -> tuple[int, int, int]:
        cfg, rt = self.config, self.rt
        per_rank, rest = divmod(cfg.train.batch_size, rt.world_size)
        if rest:
            raise ConfigError(
                f"train.batch_size {cfg.train.batch_size} is not divisible by the "
                f"{rt.world_size} processes"
            )
        micro, rest = divmod(per_rank, cfg.optim.accumulate)
        if rest or micro == 0:
            raise ConfigError(
                f"the per-process batch {per_rank} is not divisible into optim.accumulate="
                f"{cfg.optim.accumulate} micro-batches"
            )
        loader_batches = batches_per_epoch(num_images, micro, rt.world_size)
        steps_per_epoch = loader_batches // cfg.optim.accumulate
        if steps_per_epoch == 0:
            raise ConfigError(
                f"{num_images} images are fewer than one batch of {cfg.train.batch_size}; "
                "lower --batch-size or add data"
            )
        if cfg.train.max_steps is not None:
            total = cfg.train.max_steps
        else:
            total = (cfg.train.epochs or DEFAULT_EPOCHS) * steps_per_epoch
        return micro, steps_per_epoch, total

    def _accelerate(self, objective: torch.nn.Module) -> None:
        if self.config.train.activation_checkpointing:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
                apply_activation_checkpointing,
            )

            blocks = {id(b) for b in D._repeated_blocks(objective)}
            apply_activation_checkpointing(objective, check_fn=lambda m: id(m) in blocks)
        if self.config.train.compile:
            # Whole-step compilation would break on data-dependent masking; the
            # transformer blocks carry the FLOPs and compile cleanly one by one.
            D.for_each_block(objective, lambda block: block.compile())

    # -------------------------------------------------------------- data

    def _batches(self, data, micro: int, epoch: int, batch_in_epoch: int) -> Iterator[Batch]:
        """Batches forever, epoch after epoch; tracks the position for checkpoints."""
        cfg, rt = self.config, self.rt
        order = make_order(
            data,
            batch=micro,
            seed=cfg.train.seed,
            rank=rt.rank,
            world_size=rt.world_size,
            epoch=epoch,
            start_batch=batch_in_epoch,
            workers=cfg.data.num_workers,
        )
        loader = make_loader(
            data, order, num_workers=cfg.data.num_workers, pin_memory=rt.device.type == "cuda"
        )
        self.position = [epoch, batch_in_epoch]
        for item in loader:
            epoch_done = self.position[1] + 1 == order.batches_per_epoch
            self.position = (
                [self.position[0] + 1, 0]
                if epoch_done
                else [
                    self.position[0],
                    self.position[1] + 1,
                ]
            )
            skipped = getattr(item, "skipped", [])
            self.bad_images += len(skipped)
            self.bad_entries.extend(skipped)
            if isinstance(item, Batch):
                self.failed_in_a_row = []
                yield item
            else:
                self._count_failures(skipped, data)

    def _count_failures(self, skipped: list[tuple[str, str]], data) -> None:
        """Stop when images keep failing with no usable one in between."""
        self.failed_in_a_row.extend(skipped)
        limit = min(MAX_FAILED_IN_A_ROW, data.num_images)
        if len(self.failed_in_a_row) < limit:
            return
        sources = getattr(getattr(data.dataset, "index", None), "sources", None) or ["?"]
        examples = "; ".join(f"{uri}: {reason}" for uri, reason in self.failed_in_a_row[:3])
        raise BadDataError(
            f"{len(self.failed_in_a_row)} images in a row could not be decoded, with no usable "
            f"image in between (sources: {', '.join(sources)}). Examples: {examples}. "
            "Check the sources' reader options and files (biovfm data scan lists problems)"
        )

    def _write_bad_images(self) -> None:
        """One row per unusable image, with how often the run met it (once per epoch)."""
        import csv
        from collections import Counter

        counts = Counter(self.bad_entries)
        with open(self.run_dir / "bad_images.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["uri", "reason", "times_skipped"])
            writer.writerows((uri, reason, n) for (uri, reason), n in sorted(counts.items()))

    # ------------------------------------------------------------ numerics

    def _reduce(self, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean over ranks of each logged value, in one collective and one sync."""
        keys = sorted(parts)
        stacked = torch.stack([parts[k].reshape(()) for k in keys])
        if self.rt.distributed:
            dist.all_reduce(stacked)
            stacked /= self.rt.world_size
        return dict(zip(keys, stacked.tolist(), strict=True))

    def _clip(self, objective: torch.nn.Module, max_norm: float | None) -> torch.Tensor:
        """The total gradient norm (a device tensor: no sync), clipped to ``max_norm``."""
        params = [p for p in objective.parameters() if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.rt.device)
        limit = max_norm if max_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, limit)
        # Under FSDP the norm of sharded gradients is a DTensor; make it a plain one.
        full = getattr(norm, "full_tensor", None)
        return (full() if full is not None else norm).float()

    # ------------------------------------------------------- checkpoints

    def _resume_checkpoint(self):
        """``(path, weights, state)`` to resume, passing over a corrupt newest checkpoint."""
        if not self.config.resume:
            return None
        candidates = ckpt.resume_candidates(Path(self.config.resume))
        if not candidates:
            raise ConfigError(f"--resume {self.config.resume}: no checkpoint found there")
        for i, path in enumerate(candidates):
            try:
                weights, state = ckpt.load_checkpoint(path)
            except ckpt.CheckpointError as exc:
                if i == len(candidates) - 1:
                    raise
                self._say(f"warning: skipping unusable checkpoint: {exc}; trying an older one")
                continue
            return path, weights, state
        raise AssertionError("unreachable")

    def _set_aside_newer(self, resumed) -> None:
        """Resuming an older checkpoint: newer ones move to RUN/set_aside/, out of the way.

        They belong to the abandoned continuation (often a diverged one); left in
        checkpoints/ they would be taken for this run's newest and pruned against it.
        """
        if resumed is None:
            return
        path, _, state = resumed
        newer = [c for c in ckpt.list_checkpoints(self.run_dir) if _step_of(c) > state["step"]]
        if not newer:
            return
        aside = self.run_dir / "set_aside"
        aside.mkdir(exist_ok=True)
        for folder in newer:
            target = aside / folder.name
            if target.exists():
                target = aside / f"{folder.name}-{int(time.time())}"
            os.replace(folder, target)
        self._say(
            f"resuming {path.name}: the {len(newer)} newer checkpoints "
            f"({', '.join(c.name for c in newer)}) were moved to {aside}"
        )

    def _full_model_state(self, model, objective) -> dict[str, torch.Tensor]:
        """The objective's whole state on rank 0 (gathered from shards under FSDP)."""
        if not self.sharded:
            return objective.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return {k.removeprefix("objective."): v for k, v in full.items()}

    def _eval_backbone(self, objective, full_state: dict[str, torch.Tensor]):
        backbone = objective.eval_backbone()
        if not self.sharded:
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

    def _last_good_text(self) -> str:
        """Which checkpoint to resume after a divergence, and why that one."""
        good = ckpt.last_confirmed(self.run_dir)
        newest = ckpt.latest_checkpoint(self.run_dir)
        text = (
            f"Last good checkpoint: {good} (the loss stayed finite for the steps after it); "
            f"resume it with --resume {good}, perhaps with a lower optim.lr"
            if good is not None
            else "No checkpoint of this run is confirmed good yet"
        )
        if newest is not None and newest != good:
            text += (
                f". The newer {newest.name} was written shortly before the divergence and may "
                "hold exploding weights"
            )
        return text

    def _confirm_checkpoint(self, step: int) -> None:
        if self.unconfirmed is None or not self.rt.is_main:
            return
        path, written = self.unconfirmed
        wanted = min(CONFIRM_STEPS, self.config.train.checkpoint_every)
        if step - written >= wanted and path.is_dir():
            ckpt.confirm(path, finite_steps_after=step - written, through_step=step)
            self.unconfirmed = None

    def _save(self, step: int, p: _Parts) -> None:
        model, objective, optimizer, scaler = p.model, p.objective, p.optimizer, p.scaler
        rt = self.rt
        rngs = [run_state.rng_state()]
        if rt.distributed:
            rngs = [None] * rt.world_size
            dist.all_gather_object(rngs, run_state.rng_state())
        model_state = self._full_model_state(model, objective)
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            optimizer_state = get_optimizer_state_dict(
                model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        else:
            optimizer_state = optimizer.state_dict()
        if rt.is_main:
            bad = ckpt.nonfinite_keys(model_state)
            if bad:
                raise TrainingDiverged(
                    f"weights are not finite after step {step} ({len(bad)} tensors, first: "
                    f"{', '.join(bad[:3])}); no checkpoint written. {self._last_good_text()}"
                )
            state = {
                "step": step,
                "epoch": self.position[0],
                "batch_in_epoch": self.position[1],
                "bad_images": self.bad_images,
                "optimizer_layout": "fsdp_full" if self.sharded else "torch",
                "optimizer": optimizer_state,
                "scaler": scaler.state_dict() if scaler else {},
                "rng": rngs,
                "identity": p.identity.to_dict(),
                "world_size": rt.world_size,
                "data_order": self.data_order,
            }
            written = ckpt.save_checkpoint(
                self.run_dir,
                step,
                model_state,
                state,
                keep_last=self.config.train.keep_last,
                protect=ckpt.last_confirmed(self.run_dir),
            )
            self.unconfirmed = (written, step)
        rt.barrier()

    def _restore(self, resumed, p: _Parts) -> tuple[int, int, int]:
        path, weights, state = resumed
        model, objective, optimizer, scaler = p.model, p.objective, p.optimizer, p.scaler
        run_state.check_identity(path, state["identity"], p.identity)
        worlds = (int(state.get("world_size", self.rt.world_size)), self.rt.world_size)
        held_order, at = state.get("data_order"), int(state["batch_in_epoch"])
        note = check_order(path, held_order, self.data_order, at, worlds)
        if note:
            self._say(f"warning: {note}")
        layout = "fsdp_full" if self.sharded else "torch"
        if state.get("optimizer_layout", "torch") != layout:
            raise ConfigError(
                f"checkpoint {path} was written with train.distributed="
                f"{'fsdp' if layout == 'torch' else 'ddp'}; resume it with the same setting"
            )
        if not self.sharded:
            check_fits(path, objective.state_dict(), weights)
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            set_model_state_dict(
                model,
                {f"objective.{k}": v for k, v in weights.items()},
                options=StateDictOptions(full_state_dict=True),
            )
            # Parameters that never got a gradient yet (DINOv2's last layer during its
            # frozen first epoch) have no AdamW state to restore; that is expected.
            set_optimizer_state_dict(
                model,
                optimizer,
                state["optimizer"],
                options=StateDictOptions(full_state_dict=True, strict=False),
            )
        else:
            objective.load_state_dict(weights)
            optimizer.load_state_dict(state["optimizer"])
        if scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) == self.rt.world_size:
            run_state.set_rng_state(rngs[self.rt.rank])
        else:
            torch.manual_seed(self.config.train.seed + self.rt.rank + state["step"])
            self._say(
                f"warning: checkpoint was written by {len(rngs)} processes, this run has "
                f"{self.rt.world_size}; random streams restart (data order is kept)"
            )
        self.bad_images = int(state.get("bad_images", 0))
        if self.rt.is_main and not ckpt.is_confirmed(path):
            self.unconfirmed = (path, int(state["step"]))
        self._say(f"resumed from {path} at step {state['step']}")
        return int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])

    # ------------------------------------------------------------ output

    def _progress_bar(self, step: int, total: int):
        if not (self.progress and wants_progress_bar()):
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)

    def _say(self, message: str) -> None:
        if self.rt.is_main and self.progress:
            print(message, file=sys.stderr, flush=True)


def check_fits(path: Path, expected: dict[str, torch.Tensor], weights: dict) -> None:
    """Refuse weights whose names or shapes differ from the model's, saying how."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = ckpt.shape_mismatches({k: v.shape for k, v in expected.items()}, weights)
    if not (missing or unexpected or shapes):
        return
    parts = []
    if shapes:
        parts.append(
            f"{len(shapes)} tensors differ in shape, first "
            + ", ".join(f"{k} {list(a)} (model {list(b)})" for k, a, b in shapes[:3])
        )
    if missing:
        parts.append(f"missing {missing[:5]}")
    if unexpected:
        parts.append(f"unexpected {unexpected[:5]}")
    stored = ckpt.describe_stored_vit(weights)
    hint = f"; the stored shapes fit a backbone with {stored}" if stored else ""
    raise ckpt.CheckpointError(
        f"checkpoint {path / 'model.safetensors'} does not fit this model: {'; '.join(parts)}{hint}"
    )


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


def _loss_parts(values: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if k != "loss"}


def _short(key: str) -> str:
    return key.removesuffix("_loss")


def wants_progress_bar() -> bool:
    """A live bar only on a terminal that reports its width.

    Redirected output, or a terminal with 0 columns (where tqdm prints nothing at
    all), gets plain progress lines with an ETA instead.
    """
    try:
        return sys.stderr.isatty() and os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def _checksum(state: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        return float(sum(t.double().sum() for t in state.values() if t.is_floating_point()))


def _memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _fmt(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())
