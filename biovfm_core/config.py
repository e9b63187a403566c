"""The one run config: typed, loadable from YAML, every field overridable.

Precedence, lowest to highest: defaults < the machine preset < a named recipe
(``recipe:``, ``--recipe``) < ``--config run.yaml`` < ``--set k=v`` and named flags
(``--batch-size``) < ``--opt``. The preset and the recipe fill only keys the user did
not set (``explicit``); ``origins`` records where each set key came from. Plugin options live in
``options.<kind>`` and are checked against the chosen plugin's factory, so a typo
fails before any compute is spent. The resolved config is written into every run
folder and reloads into an equal object.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from biovfm_core.errors import ConfigError
from biovfm_core.files import write_atomic
from biovfm_core.options import coerce, parse_assignment
from biovfm_core.protocols import DEFAULT_MAX_PIXELS

PLUGIN_KINDS = ("backbone", "objective", "augmentation", "dataset", "logger")
# metrics.csv is the run's own record (resume, `biovfm report`, sweeps read it): the
# `csv` logger runs whatever `train.loggers` lists.
ALWAYS_LOGGED = "csv"


@dataclass
class DataConfig:
    """What to train on. ``sources`` empty means the built-in demo data."""

    sources: list[str] = field(default_factory=list)
    """Catalog YAML paths or ``KIND:PATH`` strings (``folder:/data/chest``)."""
    index: str | None = None
    """A prebuilt index from ``biovfm data scan``; skips scanning when given."""
    fraction: float = 1.0
    """Share of images to use (seeded, stratified by source, nested)."""
    modalities: list[str] = field(default_factory=list)
    """Restrict to these modality ids; empty means all."""
    num_workers: int = 4
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    """Images larger than this are skipped as decompression bombs."""
    allow_missing_sources: bool = False
    """Train without sources that are missing or fail to scan (a warning lists them)
    instead of stopping before the first step."""


@dataclass
class OptimConfig:
    """Optimiser and schedules. ``None`` means the objective's published recipe."""

    lr: float | None = None
    """Peak learning rate; ``None`` scales ``base_lr`` by batch size as the recipe does."""
    base_lr: float | None = None
    min_lr: float | None = None
    warmup_epochs: float | None = None
    weight_decay: float | None = None
    weight_decay_end: float | None = None
    betas: tuple[float, float] | None = None
    grad_clip: float | None = None
    clip_mode: Literal["per_module", "global"] = "per_module"
    """``per_module``: clip each module the objective names (its ``clip_groups()``) to
    ``grad_clip`` on its own, as DINOv2 clips backbone, dino_head and ibot_head
    (dinov2/train/train.py); objectives that name none get one global norm.
    ``global``: one norm over all parameters."""
    layer_decay: float | None = None
    patch_embed_lr_mult: float | None = None
    """Learning-rate multiplier of the patch embedding (DINOv2: 0.2)."""
    lr_scaling: Literal["linear", "sqrt", "none"] | None = None
    """How the peak lr follows the batch: ``base_lr * (batch / reference_batch)``
    (linear), its square root (sqrt), or ``base_lr`` as is (none)."""
    reference_batch: int | None = None
    """The batch size ``base_lr`` is stated for (DINOv2: 1024, MAE: 256)."""
    accumulate: int = 1
    """Micro-batches per optimizer step."""


@dataclass
class TrainConfig:
    """How long, where and how precisely to train."""

    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int = 64
    """GLOBAL batch: images per optimizer step summed over all processes (GPUs), split
    evenly over them and then into ``optim.accumulate`` micro-batches. The official
    recipes state theirs the same way: DINOv2 64 per GPU x 32 GPUs = 2,048 (ViT-L),
    MAE 4,096; learning rates are scaled from this global number."""
    epoch_length: int | None = None
    """Optimizer steps per scheduling epoch: what warm-up epochs, the teacher
    temperature warm-up, the prototype freeze and ``train.epochs`` count in. ``None``
    (default): one pass over the data. DINOv2 uses 1,250 (``OFFICIAL_EPOCH_LENGTH``,
    dinov2/configs/ssl_default_config.yaml) whatever the data size."""
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    distributed: Literal["auto", "ddp", "fsdp"] = "auto"
    checkpoint_every: int = 1000
    keep_last: int = 3
    log_every: int = 10
    export_hf: bool = False
    """Also write ``export/hf/``, a Hugging Face transformers ``Dinov2Model`` folder
    (``AutoModel.from_pretrained``). Off by default: it is a second copy of the weights
    under transformers' key names, and the export's own folder is already a timm one."""
    profile_steps: int = 0
    """Profile this many steps with torch.profiler after 3 settling steps; writes
    ``profile/`` in the run folder (a Chrome trace and the costliest ops). 0: off."""
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    """Experiment loggers (``biovfm plugins``: csv, tensorboard, mlflow, wandb, ...);
    ``--logger NAME`` (repeatable) replaces the list. ``csv`` (metrics.csv) is always
    on. Options: ``--opt logger.<name>.<option>=VALUE``."""
    stop_on: Literal["nan", "collapse", "never"] = "nan"
    """What stops a run (docs/monitoring.md). ``nan`` (default): a non-finite loss; the
    collapse sentinels only warn, since a false alarm would end a healthy week-long run.
    ``collapse``: also a collapse sentinel's crossing (``TrainingCollapsed``, naming the
    last good checkpoint). ``never``: nothing; a non-finite step is skipped (no update)."""
    monitor: str | None = None
    """Benchmark the in-training monitor scores the evaluation backbone on: ``demo``
    (``demo:TASK``), ``medmnist:FLAG[:N]`` (``$BIOVFM_MEDMNIST_ROOT``, or a ``.npz``
    path; ``N`` images per split), ``folder:PATH[:N]`` (a labelled folder,
    ``PATH/{train,val,test}/<class>/``) or ``KIND:LOCATION[:N]``. ``None``: off."""
    monitor_every: int = 1000
    """Optimizer steps between monitor evaluations (and one at the last step)."""
    monitor_linear: bool = False
    """Also fit a linear probe at each monitor evaluation (kNN always)."""


@dataclass
class RunConfig:
    """Everything that defines a run. Saved as ``config.yaml`` in its folder."""

    objective: str = "dinov2"
    backbone: str = "vit_small"
    augmentation: str = "auto"
    recipe: str | None = None
    """A named recipe (``biovfm recipes``) whose values fill every key not set here,
    in ``--set``/``--opt`` or by a flag."""
    output: str = "runs"
    """Folder that holds run folders."""
    name: str | None = None
    """Run folder name; default ``<objective>-<backbone>-<timestamp>``."""
    resume: str | None = None
    """A run folder or checkpoint to continue from."""
    init: str | None = None
    """Published weights to start from (``--init``): a DINOv2 or MAE ``.pth``, a timm or
    Hugging Face folder, a biovfm run or export, or ``timm:NAME``; ignored on resume."""
    init_sha256: str | None = None
    """The init weights' checksum, filled in by the run; when set, other weights are an
    error (a saved config re-runs from the same weights)."""
    init_mode: Literal["backbone", "objective"] = "backbone"
    """What ``--init`` carries over: ``backbone`` (its weights only) or ``objective``
    (a biovfm run's whole objective state from its newest checkpoint: heads, EMA teacher,
    centering), for a stage that continues a run, such as ``--recipe dinov2-highres``."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    options: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {kind: {} for kind in PLUGIN_KINDS}
    )
    """Plugin options per kind, e.g. ``options.objective.teacher_temp``."""

    # ---------------------------------------------------------------- (de)serialise

    def to_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        return _plain(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> RunConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level")
        config = cls()
        for key, value in raw.items():
            config.set(key, value, source=source)
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> RunConfig:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict(raw or {}, source=str(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the resolved config atomically (never a half-written file)."""
        return write_atomic(Path(path), self.to_yaml().encode())

    # ------------------------------------------------------------------ overrides

    @property
    def explicit(self) -> set[str]:
        """Dotted keys a user set (file, flags); presets fill only the others."""
        return self.__dict__.setdefault("_explicit", set())

    @property
    def origins(self) -> dict[str, str]:
        """Dotted key -> where its value came from: the config file's path, ``--set
        ...``/``--opt ...``/``--flag`` for the command line, ``recipe NAME (source)`` or
        ``... preset`` for filled values. Keys at their defaults are absent."""
        return self.__dict__.setdefault("_origins", {})

    def is_set(self, key: str) -> bool:
        """Set by the user or a recipe: a machine or objective preset must not fill it."""
        return key in self.explicit or key in self.origins

    def set(self, key: str, value: Any, *, source: str = "--set", record: bool = True) -> None:
        """Set a field by dotted key (``train.batch_size``) or a whole section by dict.

        ``options.<kind>.<name>`` keys are stored as given; the chosen plugin checks
        them (``validate``). ``record=False`` is for presets: the key is not
        marked as the user's choice.
        """
        parts = key.split(".")
        if parts[0] == "stages":
            # Not built: a half-honoured stage list would silently train one stage.
            raise ConfigError(
                f"{source}: stages: a list of stages is not built; run each stage with "
                "biovfm train --init PREVIOUS_RUN --set init_mode=objective (or "
                "--recipe dinov2-highres), see docs/gram.md"
            )
        if parts[0] == "options":
            self._set_option(parts[1:], value, source, record=record)
            return
        target: Any = self
        for depth, part in enumerate(parts):
            fields = {f.name: f for f in dataclasses.fields(target)}
            if part not in fields:
                raise ConfigError(_unknown_key(".".join(parts[: depth + 1]), fields, source))
            hint = typing.get_type_hints(type(target))[part]
            current = getattr(target, part)
            last = depth == len(parts) - 1
            if dataclasses.is_dataclass(current):
                if last:
                    if not isinstance(value, dict):
                        raise ConfigError(f"{source}: {key} must be a mapping")
                    for sub_key, sub_value in value.items():
                        self.set(f"{key}.{sub_key}", sub_value, source=source, record=record)
                    return
                target = current
                continue
            if not last:
                raise ConfigError(f"{source}: {'.'.join(parts[: depth + 1])} has no sub-keys")
            try:
                setattr(target, part, coerce(value, hint))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{source}: {key}: {exc}") from None
            if record:
                self.explicit.add(key)
                self.origins[key] = source
            return

    def _set_option(
        self, parts: list[str], value: Any, source: str, *, record: bool = True
    ) -> None:
        if not parts and isinstance(value, dict):  # the whole `options:` section
            for kind, section in value.items():
                self._set_option([str(kind)], section, source, record=record)
            return
        if not parts or parts[0] not in PLUGIN_KINDS:
            raise ConfigError(
                f"{source}: options must be grouped by kind: "
                f"{', '.join('options.' + k for k in PLUGIN_KINDS)}"
            )
        kind = parts[0]
        if len(parts) == 1:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: options.{kind} must be a mapping")
            updates = dict(value)
        else:
            updates = {".".join(parts[1:]): value}
        self.options[kind].update(updates)
        if record:
            for name in updates:
                self.explicit.add(f"options.{kind}.{name}")
                self.origins[f"options.{kind}.{name}"] = source

    def apply_sets(self, assignments: list[str]) -> None:
        """Apply ``--set train.batch_size=128`` style overrides (raw strings)."""
        for text in assignments:
            key, value = parse_assignment(text)
            self.set(key, value, source=f"--set {text}")

    def apply_opts(self, assignments: list[str]) -> None:
        """Apply ``--opt objective.teacher_temp=0.07`` plugin options (raw strings)."""
        for text in assignments:
            key, value = parse_assignment(text)
            self._set_option(key.split("."), value, source=f"--opt {text}")

    def validate(self, registry: Any) -> None:
        """Check value ranges, then plugin names and options against the registry;
        coerce option values.

        ``dataset`` options are checked per source when the data is opened, because
        each source may use a different reader.
        """
        self.check_ranges()
        plugin_names = {
            "backbone": self.backbone,
            "objective": self.objective,
        }
        if self.augmentation != "auto":
            plugin_names["augmentation"] = self.augmentation
        for kind, name in plugin_names.items():
            self.options[kind] = registry.validate(kind + "s", name, self.options[kind])
        # A registry assembled by hand (tests) has no loggers; the run then falls back
        # to the built-in classes (biovfm_core.train.loggers).
        if registry.names("loggers"):
            self.options["logger"] = {
                name: registry.validate("loggers", name, options)
                for name, options in self.logger_options().items()
            }
        self.check_crop_sizes(registry)

    def loggers_in_use(self) -> list[str]:
        """``train.loggers`` without repeats, ``csv`` first whether listed or not."""
        names = [ALWAYS_LOGGED, *self.train.loggers]
        return list(dict.fromkeys(names))

    def logger_options(self) -> dict[str, dict[str, Any]]:
        """Options per logger in use, from ``--opt logger.NAME.OPTION=V`` (stored as
        ``{"NAME.OPTION": V}``) or YAML (``{NAME: {OPTION: V}}``)."""
        in_use = self.loggers_in_use()
        grouped: dict[str, dict[str, Any]] = {name: {} for name in in_use}
        for key, value in self.options["logger"].items():
            name, _, option = str(key).partition(".")
            if name not in grouped:
                raise ConfigError(
                    f"options.logger.{key}: logger {name!r} is not in train.loggers "
                    f"({', '.join(in_use)}); add it with --logger {name}"
                )
            if option:
                grouped[name][option] = value
            elif isinstance(value, dict):
                grouped[name].update(value)
            else:
                raise ConfigError(
                    f"options.logger.{key} must be a mapping of option to value, "
                    f"or be written options.logger.{key}.OPTION"
                )
        return grouped

    def check_crop_sizes(self, registry: Any) -> None:
        """Crop sides that patches do not tile fail here, before anything is built.

        A ViT cuts a crop into patch-size squares; a side that is not a multiple would
        fail at the first step. The backbone's ``patch_size`` option and the sides
        named in ``CROP_OPTIONS`` (the objective's crops, the backbone's position
        table) are read from the options or the factories' defaults; a backbone
        without a ``patch_size`` option (a CNN, ``timm:NAME``) is not checked here.
        """
        backbone_specs = registry.options("backbones", self.backbone)
        if "patch_size" not in backbone_specs:
            return
        patch = self.options["backbone"].get("patch_size", backbone_specs["patch_size"].default)
        if not isinstance(patch, int) or patch <= 1:
            return
        objective_specs = registry.options("objectives", self.objective)
        for kind, name in CROP_OPTIONS:
            specs = backbone_specs if kind == "backbone" else objective_specs
            if name not in specs:
                continue
            value = self.options[kind].get(name, specs[name].default)
            if name == "local_size":
                crops = self.options[kind].get(
                    "local_crops", getattr(specs.get("local_crops"), "default", 1)
                )
                if not crops:
                    continue
            if isinstance(value, int) and value % patch:
                raise ConfigError(crop_size_message(f"{kind}.{name}", value, patch))

    def check_ranges(self) -> None:
        """Numbers a run cannot work with fail here, naming the key, not mid-run."""
        at_least = {
            "train.batch_size": 1,
            "train.epoch_length": 1,
            "train.max_steps": 1,
            "train.epochs": 1,
            "train.checkpoint_every": 1,
            "train.keep_last": 1,
            "train.log_every": 1,
            "train.profile_steps": 0,
            "train.monitor_every": 1,
            "data.num_workers": 0,
            "data.max_image_pixels": 1,
            "optim.accumulate": 1,
        }
        for key, low in at_least.items():
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if value is not None and value < low:
                raise ConfigError(f"{key} must be at least {low}, got {value}")
        if not 0.0 < self.data.fraction <= 1.0:
            raise ConfigError(f"data.fraction must be in (0, 1], got {self.data.fraction}")
        for name in ("lr", "base_lr"):
            value = getattr(self.optim, name)
            if value is not None and value <= 0:
                raise ConfigError(f"optim.{name} must be positive, got {value}")


# Options that are sides of square crops a ViT cuts into patches (kind, option).
CROP_OPTIONS = (
    ("backbone", "image_size"),
    ("objective", "global_size"),
    ("objective", "local_size"),
    ("objective", "image_size"),
)


def crop_size_message(option: str, value: int, patch: int) -> str:
    """One line: the crop side, the patch size and the nearest sides that fit."""
    below = value // patch * patch
    choices = [v for v in (below, below + patch) if v > 0]
    return (
        f"{option}={value} is not a multiple of the patch size {patch} "
        f"(backbone.patch_size): set --opt {option}=" + " or ".join(str(v) for v in choices)
    )


def _unknown_key(key: str, fields: dict[str, Any], source: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    base = key.rsplit(".", 1)[0] + "." if "." in key else ""
    message = f"{source}: unknown config key {key!r}"
    close = difflib.get_close_matches(leaf, list(fields), n=1)
    if close:
        message += f"; did you mean {base + close[0]!r}?"
    return message + f" Valid keys here: {', '.join(base + f for f in fields)}"


def _plain(value: Any) -> Any:
    """Tuples to lists so the YAML is plain and reloads to the same config."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
