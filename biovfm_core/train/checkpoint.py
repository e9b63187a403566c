"""Checkpoints: weights as safetensors, the rest in a state file loaded without pickle code.

A checkpoint is a folder ``checkpoints/step_00001000/`` holding

- ``model.safetensors``: the objective's whole ``state_dict`` (student, teacher,
  heads, centering buffers);
- ``state.pt``: optimizer and grad-scaler state, step, data position, RNG states and
  what the run is (objective, backbone, their options), read back with
  ``torch.load(weights_only=True)`` so opening a checkpoint never executes code.

It is written into a hidden temporary folder, every file fsynced, then renamed into
place, so a crash at any moment leaves either the previous checkpoints or the new
one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from biovfm_core.errors import ConfigError

CHECKPOINT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d{8})$")


@dataclass(frozen=True)
class Identity:
    """What a checkpoint holds; resuming into anything else is refused."""

    objective: str
    backbone: str
    objective_options: dict[str, Any]
    backbone_options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "backbone": self.backbone,
            "objective_options": _plain(self.objective_options),
            "backbone_options": _plain(self.backbone_options),
        }

    def describe(self) -> str:
        return f"objective {self.objective!r} on backbone {self.backbone!r}"


def rng_state() -> dict[str, Any]:
    """Every global RNG the step touches, as plain tensors and ints (weights_only-safe)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np_keys.astype(np.int64)),
            np_pos,
            np_has_gauss,
            np_gauss,
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders are ignored)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_RE.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def latest_checkpoint(path: Path) -> Path | None:
    """``path`` itself if it is a checkpoint folder, else the newest one of the run."""
    if (path / "state.pt").is_file():
        return path
    found = list_checkpoints(path)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    *,
    keep_last: int,
) -> Path:
    """Write a checkpoint atomically and prune all but the newest ``keep_last``."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        weights = _unshared(model_state)
        save_file(weights, str(tmp / "model.safetensors"), metadata={"step": str(step)})
        torch.save(state, tmp / "state.pt")
        # What the checkpoint is, readable without loading gigabytes of optimizer state.
        meta = {"step": step, **state.get("identity", {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        for name in ("model.safetensors", "state.pt", "meta.json"):
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
        if final.exists():  # a re-run of the same step replaces it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[: -max(1, keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and state of the checkpoint folder ``path``."""
    state_file, weights_file = path / "state.pt", path / "model.safetensors"
    if not state_file.is_file() or not weights_file.is_file():
        raise ConfigError(
            f"{path} is not a biovfm checkpoint (expected model.safetensors and state.pt)"
        )
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{state_file}: cannot be read as a biovfm state file: {exc}") from exc
    return load_file(str(weights_file)), state


def read_meta(path: Path) -> dict[str, Any]:
    """The small description of checkpoint folder ``path`` (step, objective, backbone)."""
    try:
        return json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: missing or unreadable meta.json: {exc}") from None


def check_identity(path: Path, held: dict[str, Any], wanted: Identity) -> None:
    """Refuse to resume a checkpoint of another objective, backbone or shape."""
    mismatches = [
        key
        for key in ("objective", "backbone", "objective_options", "backbone_options")
        if _plain(held.get(key)) != wanted.to_dict()[key]
    ]
    if mismatches:
        raise ConfigError(
            f"checkpoint {path} holds objective {held.get('objective')!r} on backbone "
            f"{held.get('backbone')!r} (objective options {held.get('objective_options')}, "
            f"backbone options {held.get('backbone_options')}); this run is "
            f"{wanted.describe()} (objective options {wanted.objective_options}, backbone "
            f"options {wanted.backbone_options}). Differing: {', '.join(mismatches)}"
        )


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


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
