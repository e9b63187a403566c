"""Checkpoints: weights as safetensors, the rest in a state file loaded without pickle code.

A checkpoint is a folder ``checkpoints/step_00001000/`` holding

- ``model.safetensors``: the objective's whole ``state_dict`` (student, teacher,
  heads, centering buffers);
- ``state.pt``: optimizer and grad-scaler state, step, data position, RNG states and
  what the run is (objective, backbone, their options), read back with
  ``torch.load(weights_only=True)`` so opening a checkpoint never executes code.

It is written into a hidden temporary folder, every file fsynced, then renamed into
place, so a crash at any moment leaves either the previous checkpoints or the new
one, never half of one. Old checkpoints are pruned by renaming them to a hidden
``.deleting-*`` name first, so an interrupted prune never leaves a half-deleted
folder that looks complete; leftovers of either kind are removed by the next run.

A checkpoint is *confirmed* (``confirmed.json``) once the loss stayed finite for some
steps after it: weights can explode a step before the loss turns NaN, so the newest
checkpoint before a divergence is not necessarily a good one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from biovfm_core.errors import BiovfmError, ConfigError
from biovfm_core.files import write_atomic
from biovfm_core.locks import pid_alive

CHECKPOINT_DIR = "checkpoints"
CONFIRMED = "confirmed.json"
_STEP_RE = re.compile(r"^step_(\d{8})$")
_TMP_RE = re.compile(r"^\.tmp-step_\d{8}-(\d+)$")
_DELETING_PREFIX = ".deleting-"

# Errors of a write that failed for want of room or permission: the user's to fix.
WRITE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.EFBIG}


class CheckpointError(ConfigError):
    """A checkpoint file cannot be read, or does not fit the model it is loaded into."""


class CheckpointWriteError(BiovfmError):
    """A checkpoint could not be written (full disk, no permission)."""


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders are ignored)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_RE.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def is_checkpoint_folder(path: Path) -> bool:
    return bool(_STEP_RE.match(path.name)) and path.parent.name == CHECKPOINT_DIR


def latest_checkpoint(path: Path) -> Path | None:
    """``path`` itself if it is a checkpoint folder, else the newest one of the run."""
    if (path / "state.pt").is_file() or is_checkpoint_folder(path):
        return path
    found = list_checkpoints(path)
    return found[-1] if found else None


def resume_candidates(path: Path) -> list[Path]:
    """What ``--resume path`` may use, in order of preference.

    A checkpoint folder named explicitly is the only candidate; for a run folder,
    its checkpoints newest first, so a corrupt newest one can be passed over.
    """
    if (path / "state.pt").is_file() or is_checkpoint_folder(path):
        return [path]
    return list_checkpoints(path)[::-1]


def is_confirmed(path: Path) -> bool:
    return (path / CONFIRMED).is_file()


def confirm(path: Path, *, finite_steps_after: int, through_step: int) -> None:
    """Record that training stayed finite for ``finite_steps_after`` steps after ``path``."""
    record = {"finite_steps_after": finite_steps_after, "through_step": through_step}
    write_atomic(path / CONFIRMED, json.dumps(record).encode())


def last_confirmed(run_dir: Path) -> Path | None:
    confirmed = [p for p in list_checkpoints(run_dir) if is_confirmed(p)]
    return confirmed[-1] if confirmed else None


def nonfinite_keys(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    with torch.no_grad():
        return [
            key
            for key, value in weights.items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())
        ]


def remove_leftovers(run_dir: Path, say: Callable[[str], None] = lambda _: None) -> None:
    """Delete temp folders of dead writers and folders whose prune was interrupted.

    Called by the process that owns the run folder's lock, so no other live process
    of this run can be writing them.
    """
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        match = _TMP_RE.match(path.name)
        half_written = match is not None and not (
            int(match.group(1)) == os.getpid() or pid_alive(int(match.group(1)))
        )
        if half_written or path.name.startswith(_DELETING_PREFIX):
            shutil.rmtree(path, ignore_errors=True)
            what = "half-written checkpoint" if half_written else "partly pruned checkpoint"
            say(f"removed {what} {path}")


def _prune(old: Path) -> None:
    # Renamed first: a kill during rmtree then leaves a hidden folder that
    # list_checkpoints ignores, never a step_* folder missing some of its files.
    doomed = old.with_name(f"{_DELETING_PREFIX}{old.name}-{os.getpid()}")
    try:
        os.replace(old, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    *,
    keep_last: int,
    protect: Path | None = None,
) -> Path:
    """Write a checkpoint atomically and prune all but the newest ``keep_last``.

    ``protect`` (the newest confirmed checkpoint) is kept even when older than those.
    Weights that are not finite are refused: a checkpoint must be resumable.
    """
    weights = _unshared(model_state)
    bad = nonfinite_keys(weights)
    if bad:
        raise CheckpointError(
            f"refusing to write checkpoint step_{step:08d} in {checkpoint_root(run_dir)}: "
            f"{len(bad)} weight tensors hold NaN or infinite values (first: {', '.join(bad[:3])})"
        )
    root = checkpoint_root(run_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    try:
        _write(root, tmp, final, step, weights, state)
    except Exception as exc:
        reason = write_failure_reason(exc)
        if reason is None:
            raise
        raise CheckpointWriteError(_write_failure(run_dir, final, reason)) from None
    kept = list_checkpoints(run_dir)[-max(1, keep_last) :]
    for old in list_checkpoints(run_dir):
        if old not in kept and old != protect:
            _prune(old)
    return final


def write_failure_reason(exc: BaseException) -> str | None:
    """Why a write failed, when it is the disk's or the folder's fault; None otherwise."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return exc.strerror or os.strerror(exc.errno)
    text = str(exc)
    # torch.save reports a full disk as "PytorchStreamWriter failed writing file ...
    # unexpected pos"; safetensors passes the OS error on inside its own message.
    if "unexpected pos" in text or "PytorchStreamWriter" in text:
        return f"the write failed, most likely a full disk ({text.splitlines()[0]})"
    for code in WRITE_ERRNOS:
        if f"os error {code})" in text or os.strerror(code) in text:
            return os.strerror(code)
    return None


def _write_failure(run_dir: Path, final: Path, reason: str) -> str:
    previous = [p for p in list_checkpoints(run_dir) if p != final]
    return (
        f"cannot write checkpoint {final.name} into {final.parent}: {reason}. "
        f"The previous checkpoint {previous[-1] if previous else '(none yet)'} is intact; "
        "free space or fix the folder's permissions, then resume it"
    )


def _write(root: Path, tmp: Path, final: Path, step: int, weights, state) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"step": str(step)})
        torch.save(state, tmp / "state.pt")
        # What the checkpoint is, readable without loading gigabytes of optimizer state.
        meta = {"step": step, **state.get("identity", {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        for name in ("model.safetensors", "state.pt", "meta.json"):
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
        if final.exists():  # a re-run of the same step replaces it whole
            _prune(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or a one-line error naming the file and its fault."""
    from safetensors import SafetensorError

    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        text = str(exc)
        if "header too large" in text or "header too small" in text:
            with open(path, "rb") as handle:
                head = handle.read(2)
            kind = (
                " (it is a pickle/torch.save file)" if head[:1] == b"\x80" or head == b"PK" else ""
            )
            why = f"not a safetensors file{kind}: {text}"
        elif "not fully covered" in text or "incomplete" in text:
            why = f"truncated or incomplete safetensors file: {text}"
        else:
            why = f"corrupt safetensors file: {text}"
        raise CheckpointError(f"{path}: {why}") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and state of the checkpoint folder ``path``, checked to be usable."""
    state_file, weights_file = path / "state.pt", path / "model.safetensors"
    if not state_file.is_file() or not weights_file.is_file():
        raise CheckpointError(
            f"{path} is not a biovfm checkpoint (expected model.safetensors and state.pt)"
        )
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{state_file}: cannot be read as a biovfm state file: {first}"
        ) from None
    weights = read_weights(weights_file)
    bad = nonfinite_keys(weights)
    if bad:
        raise CheckpointError(
            f"{weights_file}: {len(bad)} weight tensors hold NaN or infinite values "
            f"(first: {', '.join(bad[:3])})"
        )
    return weights, state


def shape_mismatches(
    expected: dict[str, torch.Size], stored: dict[str, torch.Tensor]
) -> list[tuple[str, tuple, tuple]]:
    """``(key, stored shape, expected shape)`` for the keys present in both that differ."""
    return [
        (key, tuple(stored[key].shape), tuple(shape))
        for key, shape in expected.items()
        if key in stored and tuple(stored[key].shape) != tuple(shape)
    ]


def describe_stored_vit(stored: dict[str, Any]) -> str | None:
    """The ViT settings that produce the stored shapes, read from the tensors.

    Works on any key prefix (student/teacher/backbone/...): the first patch
    embedding found gives width, input channels and patch size; its blocks give
    the depth. ``stored`` maps names to tensors or shapes.
    """
    patch = next((k for k in stored if k.endswith("patch_embed.proj.weight")), None)
    if patch is None:
        return None
    width, channels, patch_size = (int(v) for v in _shape(stored[patch])[:3])
    prefix = patch.removesuffix("patch_embed.proj.weight")
    blocks = {
        int(m.group(1))
        for k in stored
        if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))
    }
    depth = max(blocks) + 1 if blocks else 0
    named = {192: "vit_tiny", 384: "vit_small", 768: "vit_base", 1024: "vit_large"}
    named[1536] = "vit_giant"
    guess = named.get(width)
    return (
        f"embed dim {width}, depth {depth}, patch size {patch_size}, {channels} input channels"
        + (f" (as --backbone {guess} --opt backbone.patch_size={patch_size})" if guess else "")
    )


def _shape(value: Any) -> tuple:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def read_meta(path: Path) -> dict[str, Any]:
    """The small description of checkpoint folder ``path`` (step, objective, backbone)."""
    try:
        return json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: missing or unreadable meta.json: {exc}") from None


def _unshared(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights); copy the repeats.
    seen: set[int] = set()
    out = {}
    for key, value in model_state.items():
        tensor = value.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
