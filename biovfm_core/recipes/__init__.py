"""Named training recipes: the official setups (DINOv2, MAE, the BioVFM-21M study) as
small YAML files, each value with the file and key it comes from.

A recipe file (``biovfm_core/recipes/NAME.yaml``)::

    summary: one line
    model: ViT-L/14
    source: where the recipe as a whole comes from
    extends: _dinov2-ssl-default     # optional: a base recipe (a name starting with _)
    values:                          # our config keys, applied where the user set none
      optim.base_lr: {value: 2.0e-4, source: "dinov2/configs/train/vitl14.yaml: optim.base_lr"}
    not_applied:                     # official values biovfm has no knob for, and why
      train.batch_size_per_gpu: {value: 32, source: "...", why: "..."}
    built_in:                        # official values biovfm's code always follows
      student.qkv_bias: {value: true, source: "...", why: "timm's ViT default"}

A source is ``dinov2/PATH: key`` (facebookresearch/dinov2), ``mae/PATH: key``
(facebookresearch/mae, ``mae/`` standing for its root), ``dinov3/PATH: key``
(facebookresearch/dinov3), ``study: ...`` (what the
BioVFM-21M study or its public code states) or ``derived: why``.

Precedence (``RunConfig``): defaults < machine preset < recipe < config file <
``--set`` and flags < ``--opt``. This module reads YAML only (no torch), so
``biovfm recipes`` stays fast.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from biovfm_core.config import RunConfig
from biovfm_core.errors import ConfigError

RECIPE_DIR = Path(__file__).resolve().parent
SOURCE_PREFIXES = ("dinov2/", "dinov3/", "mae/", "study: ", "derived: ")


@dataclass(frozen=True)
class Entry:
    """One value of a recipe: our key (or the official key, for values not applied),
    the value, where it comes from, and for values not applied, why."""

    key: str
    value: Any
    source: str
    why: str | None = None


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    model: str
    source: str
    values: dict[str, Entry] = field(default_factory=dict)
    not_applied: dict[str, Entry] = field(default_factory=dict)
    built_in: dict[str, Entry] = field(default_factory=dict)

    @property
    def per_gpu_batch(self) -> int | None:
        """The official per-GPU batch, which biovfm's global batch does not carry."""
        for key in ("train.batch_size_per_gpu", "--batch_size"):
            if key in self.not_applied:
                return int(self.not_applied[key].value)
        return None


def names() -> list[str]:
    """Recipes a user can name (base files, ``_NAME.yaml``, are not listed)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def load(name: str) -> Recipe:
    """The recipe ``name`` with its bases merged (the recipe's own entries win)."""
    raw = _read(name, seen=())
    return Recipe(
        name=name,
        summary=str(raw.get("summary", "")),
        model=str(raw.get("model", "")),
        source=str(raw.get("source", "")),
        values=_entries(name, raw.get("values", {}), need_why=False),
        not_applied=_entries(name, raw.get("not_applied", {}), need_why=True),
        built_in=_entries(name, raw.get("built_in", {}), need_why=True),
    )


def _read(name: str, seen: tuple[str, ...]) -> dict[str, Any]:
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file() or name in seen:
        if name in seen:
            raise ConfigError(f"recipe {name!r} extends itself through {' -> '.join(seen)}")
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown recipe {name!r}{hint} Valid: {', '.join(names())} (biovfm recipes)"
        )
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    base = raw.pop("extends", None)
    if base is None:
        return raw
    merged = _read(str(base), (*seen, name))
    for section in ("values", "not_applied", "built_in"):
        # A recipe's own value replaces its base's, as DINOv2's train/*.yaml do
        # over ssl_default_config.yaml; `null` removes a base entry.
        combined = {**merged.get(section, {}), **raw.pop(section, {})}
        merged[section] = {k: v for k, v in combined.items() if v is not None}
    merged.update(raw)
    return merged


def _entries(name: str, raw: dict[str, Any], *, need_why: bool) -> dict[str, Entry]:
    out = {}
    for key, item in raw.items():
        if not isinstance(item, dict) or "value" not in item or "source" not in item:
            raise ConfigError(f"recipe {name}: {key} needs a value and a source")
        source = str(item["source"])
        if not source.startswith(SOURCE_PREFIXES):
            raise ConfigError(
                f"recipe {name}: {key}: source {source!r} must start with one of "
                + ", ".join(repr(p) for p in SOURCE_PREFIXES)
            )
        if need_why and not item.get("why"):
            raise ConfigError(f"recipe {name}: {key} needs a `why`")
        out[str(key)] = Entry(str(key), item["value"], source, item.get("why"))
    return out


def apply_recipe(config: RunConfig) -> dict[str, Entry]:
    """Fill every key of ``config.recipe`` the user did not set; return what was filled.

    The filled keys are not the user's (``explicit``) but their ``origins`` name the
    recipe and source, so presets leave them alone and ``--dry-run`` shows where
    each came from.
    """
    if not config.recipe:
        return {}
    recipe = load(config.recipe)
    filled = {}
    for key, entry in recipe.values.items():
        if key in config.explicit:
            continue
        config.set(key, entry.value, source=f"recipe {recipe.name}", record=False)
        config.origins[key] = f"recipe {recipe.name} ({entry.source})"
        filled[key] = entry
    return filled
