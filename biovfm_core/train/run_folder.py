"""The run folder: which one a run writes to, and owning it while the run lasts.

A run's checkpoints, metrics and export all live in ``output/name``; two processes
writing one folder would mix them, and a run that fails before its first step
should not leave an empty folder behind to be mistaken for a run.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from biovfm_core.config import RunConfig
from biovfm_core.errors import ConfigError
from biovfm_core.locks import RunLock
from biovfm_core.models import checkpoint as ckpt
from biovfm_core.train import distributed as D


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
    """A resumed run continues in its own folder; a new one gets ``output/name``."""
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


def agree(path: Path, rt: D.Runtime) -> Path:
    """Rank 0's run folder on every rank (a default name has a random part)."""
    if not rt.distributed:
        return path
    shared = [str(path)]
    dist.broadcast_object_list(shared, src=0)
    return Path(shared[0])


class RunFolder:
    """The run folder, owned by this process from :meth:`claim` to :meth:`release`.

    Only rank 0 claims it; the other ranks write nothing there themselves.
    """

    def __init__(self, path: Path, say: Callable[[str], None]) -> None:
        self.path = path
        self.say = say
        self.lock: RunLock | None = None
        self.created = False

    def claim(self, resuming: bool) -> None:
        """Create and lock the folder; refuse a folder another run owns."""
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.path).acquire(self.say)
        if not resuming and ckpt.list_checkpoints(self.path):
            raise ConfigError(
                f"run folder {self.path} already holds checkpoints of a run; continue it "
                "with --resume, or choose another --name or --output"
            )
        ckpt.remove_leftovers(self.path, self.say)

    def abandon(self) -> None:
        """Remove the folder of a run that failed before its first step, if this run made it."""
        # Only while holding the lock: a process that lost the race for a new folder
        # must not remove the winner's.
        if not (self.lock is not None and self.created):
            return
        if ckpt.list_checkpoints(self.path):
            return
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
