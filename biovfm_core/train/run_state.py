"""What a checkpoint's state file records about the run beyond its weights: every
global RNG the step touches, and what the run is (objective, backbone and options),
so that a resume replays the same random stream into the same model or is refused."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biovfm_core.errors import ConfigError


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


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
