"""What a registered backbone, objective, augmentation recipe and dataset reader provide.

These are the contracts between biovfm's engine and its plugins. They are
`typing.Protocol` classes, so a plugin never has to inherit from anything in core
(it may, for the default no-op hooks of `ObjectiveBase`). The small dataclasses
here (`ViewSpec`, `TaskInfo`, `StepInfo`, `Batch`, `SampleRecord`, ...) are the
values that cross the boundary.

This module must stay importable without torch: `biovfm --help` and
`biovfm plugins` import it, and they have to stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

# The one default for the image-size guard: the folder, DICOM and NIfTI readers'
# ``max_pixels`` and the run config's ``data.max_image_pixels``. A 2D medical image is
# at most a few tens of megapixels (a mammogram is ~30 MP); anything far above is a
# decompression bomb or a whole-slide image that needs a tiling reader, and decoding
# it would exhaust a worker's memory.
DEFAULT_MAX_PIXELS = 200_000_000

# Canonical modality tags: the ten modalities of BioVFM-21M, then "other" for images
# whose modality nobody named or could infer (they get the default augmentation).
# Catalogs and readers use these ids; `normalise_modality` maps the spellings found in
# the wild. New ids go at the end: an index stores ids by position.
MODALITIES: tuple[str, ...] = (
    "xray",
    "ct",
    "mr",
    "us",
    "nm",
    "dermoscopy",
    "endoscopy",
    "microscopy",
    "fundus",
    "octa",
    "other",
)

_MODALITY_ALIASES = {
    "x-ray": "xray",
    "cr": "xray",
    "dx": "xray",
    "radiograph": "xray",
    "mri": "mr",
    "ultrasound": "us",
    "pathology": "microscopy",
    "histology": "microscopy",
    "histopathology": "microscopy",
    "nuclear": "nm",
    "pet": "nm",
    "oct": "octa",
    "dermatology": "dermoscopy",
}


def normalise_modality(tag: str) -> str:
    """Map a modality spelling (``"X-Ray"``, ``"MRI"``, ``"pathology"``) to its id.

    Raises ``ValueError`` naming the valid ids when the tag is unknown.
    """
    key = tag.strip().lower()
    key = _MODALITY_ALIASES.get(key, key)
    if key not in MODALITIES:
        raise ValueError(
            f"unknown modality {tag!r}; valid modalities: {', '.join(MODALITIES)} "
            f"(aliases: {', '.join(sorted(_MODALITY_ALIASES))})"
        )
    return key


# --------------------------------------------------------------------------- views


@dataclass(frozen=True)
class ViewSpec:
    """The crops an objective wants of every image, declared by the objective.

    The data pipeline turns each decoded image into ``global_crops`` views of
    ``global_size`` px and ``local_crops`` views of ``local_size`` px, random-resized
    crops whose area is drawn from the given scale range. ``color_augment`` asks for
    DINO-style photometric augmentation (colour jitter, blur, solarize); MAE asks
    only for crop + flip. ``needs_labels`` makes the pipeline fail early, naming the
    sources without labels, instead of deep inside the first step.
    """

    global_crops: int = 2
    global_size: int = 224
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_crops: int = 8
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.32)
    color_augment: bool = True
    needs_labels: bool = False

    def with_sizes(self, global_size: int, local_size: int | None = None) -> ViewSpec:
        return replace(
            self,
            global_size=global_size,
            local_size=self.local_size if local_size is None else local_size,
        )


@dataclass
class Batch:
    """One training batch as an objective receives it (already on the device).

    ``global_views[i]`` and ``local_views[j]`` are float tensors ``(B, C, H, W)``,
    normalised, with ``C`` equal to the backbone's input channels. ``labels`` is
    ``(B,)`` int64 for single-label data, ``(B, L)`` float 0/1 for multi-label data,
    or ``None`` for unlabelled data. ``modality`` holds one modality id per image.
    """

    global_views: list[torch.Tensor]
    local_views: list[torch.Tensor] = field(default_factory=list)
    labels: torch.Tensor | None = None
    modality: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(uri, reason)`` of the images the loader dropped from this batch."""
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """``(mean, std)`` while the views are light (as loader workers ship them: float32
    in [0, 1] before clipping, one channel where the images have one); ``finish``
    clips, normalises and repeats them to 3 channels on the device. ``None``: finished."""

    @property
    def size(self) -> int:
        return int(self.global_views[0].shape[0])

    def finish(self) -> Batch:
        """The views clipped to [0, 1], normalised and 3-channel, where the loader left
        that to the device (biovfm_core/data/light_views.py); bitwise what the recipe
        would have made in its workers, in float32. A finished batch is returned as is."""
        if self.norm is None:
            return self
        import torch

        device = self.global_views[0].device
        mean = torch.tensor(self.norm[0], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.norm[1], dtype=torch.float32, device=device).view(1, -1, 1, 1)

        def done(v: torch.Tensor) -> torch.Tensor:
            # The same float32 operations in the same order as the recipe's own finish.
            v = v.float().clamp(0.0, 1.0)
            if v.shape[1] != mean.shape[1]:
                v = v.expand(-1, mean.shape[1], -1, -1)
            return (v - mean) / std

        return Batch(
            global_views=[done(v) for v in self.global_views],
            local_views=[done(v) for v in self.local_views],
            labels=self.labels,
            modality=list(self.modality),
            skipped=list(self.skipped),
        )

    def to(self, device: Any, non_blocking: bool = True) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread, so host-to-GPU copies overlap."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn) -> Batch:
        return Batch(
            global_views=[fn(v) for v in self.global_views],
            local_views=[fn(v) for v in self.local_views],
            labels=None if self.labels is None else fn(self.labels),
            modality=list(self.modality),
            skipped=list(self.skipped),
            norm=self.norm,
        )


# ------------------------------------------------------------------------ backbones


@dataclass
class BackboneOutput:
    """Tokens out of a backbone's final norm.

    ``cls``: ``(B, D)`` class-token embedding (for models without one, the mean of
    the patch tokens). ``patches``: ``(B, N, D)`` patch tokens, register tokens
    excluded; with ``keep`` given to ``forward_tokens``, only the kept ``K`` patches
    ``(B, K, D)`` in the order of ``keep``.
    """

    cls: torch.Tensor
    patches: torch.Tensor


@runtime_checkable
class Backbone(Protocol):
    """An image encoder (a ``torch.nn.Module``) that objectives and evaluation share.

    Attributes
    ----------
    embed_dim: width ``D`` of the CLS and patch embeddings.
    patch_size: side of a square patch in pixels (1 for CNNs, which have no tokens).
    image_size: the input side the position embeddings were built for; other sizes
        are interpolated, so multi-crop local views work.
    in_chans: input channels (3 for every built-in backbone; gray images are
        repeated by the data pipeline).
    """

    embed_dim: int
    patch_size: int
    image_size: int
    in_chans: int

    def forward_tokens(
        self,
        images: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> BackboneOutput:
        """Encode ``images`` ``(B, C, H, W)``.

        ``mask``: bool ``(B, N)``, True where a patch token is replaced by the learned
        mask token before the encoder (iBOT). ``keep``: int64 ``(B, K)`` indices of
        the patches to keep; all others are dropped before the encoder (MAE). At most
        one of the two is given. Backbones that cannot mask raise ``NotImplementedError``
        with a message naming the backbone.
        """
        ...

    def num_parameters(self) -> int:
        """Parameter count, for scaling fits (the study plots against millions)."""
        ...

    # Optional: ``export_state() -> (state_dict, description)`` saves the weights in the
    # host library's own layout (a timm ViT's state dict) with a JSON-able description
    # of how that library rebuilds the model; ``load_export_state(state_dict)`` reads
    # them back. Without them, exports hold this module's own ``state_dict``.


# ----------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class OptimRecipe:
    """An objective's published optimisation recipe (``Objective.optim_recipe``).

    The engine starts from it and lets every ``optim.*`` config field override it.
    Peak learning rate = ``base_lr`` scaled by ``batch / reference_batch``
    (``lr_scaling="linear"``, MAE's and DeiT's rule) or its square root
    (``"sqrt"``, DINOv2's rule). Weight decay follows a cosine from
    ``weight_decay`` to ``weight_decay_end`` (``None``: constant). The learning rate
    warms up from 0 over ``warmup_epochs``: ``warmup="linspace"`` is DINOv2's
    ``CosineScheduler`` (peak at the last warm-up step), ``"linear"`` MAE's
    ``lr_sched`` (peak one step later); a cosine to ``min_lr`` follows.
    ``decay_exempt`` names the parameters weight decay skips: ``"bias_norm_gamma"``
    (DINOv2's ``param_groups.py``: names ending ``.bias`` or containing ``norm`` or
    ``gamma``), ``"1d_and_bias"`` (timm 0.3.2's ``add_weight_decay``, which MAE's
    ``main_pretrain.py`` uses: 1-D tensors and ``.bias``), or ``"1d_and_tokens"`` (the
    default: 1-D tensors, position embeddings and class/mask/register tokens).
    ``layer_decay`` multiplies the learning rate of backbone layer ``i`` of ``L`` by
    ``layer_decay ** (L + 1 - i)``; ``patch_embed_lr_mult`` scales the patch
    embedding's further (DINOv2: 0.2).
    """

    base_lr: float = 1e-3
    reference_batch: int = 256
    lr_scaling: str = "linear"
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0
    weight_decay: float = 0.05
    weight_decay_end: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 3.0
    layer_decay: float | None = None
    patch_embed_lr_mult: float = 1.0
    warmup: str = "linspace"
    decay_exempt: str = "1d_and_tokens"


@dataclass(frozen=True)
class TaskInfo:
    """What the data tells an objective before training starts.

    ``num_classes`` is ``None`` for unlabelled data. ``multilabel`` marks data whose
    labels are 0/1 vectors (ChestMNIST's 14 findings).
    """

    num_classes: int | None = None
    multilabel: bool = False
    load_model: Callable[[str], FrozenModel] | None = None
    """Turns a model spec (run, export, hub ``.pth``, timm/HF folder, ``random:NAME``)
    into a ``FrozenModel``, for objectives that learn from another model (distillation).
    The engine, preflight and conformance kit pass it; ``None`` where no model can be
    loaded."""


@runtime_checkable
class FrozenModel(Protocol):
    """A model an objective learns from but never trains (a distillation teacher).

    It is not a sub-module of the objective: its weights are in neither the optimizer
    nor the objective's ``state_dict``, and a deep copy of the objective shares it.
    ``spec`` is how the user named it; ``identity`` a hash of its weights (checkpoints
    record it, so a resume refuses another teacher). ``backbone`` is a ``Backbone`` in
    eval mode with ``requires_grad`` off; ``heads`` the modules its own objective kept
    beside it (a DINOv2 run's ``dino_head`` and ``ibot_head``), empty for a bare model.
    ``to(device)`` moves both and returns the model.
    """

    spec: str
    identity: str
    backbone: Any
    heads: Mapping[str, Any]

    def to(self, device: Any) -> FrozenModel: ...


@dataclass(frozen=True)
class StepInfo:
    """Where training stands; passed to every objective hook so schedules need no state.

    ``step`` counts optimizer steps from 0; ``total_steps`` is the planned number of
    optimizer steps; ``steps_per_epoch`` lets recipes stated in epochs (DINOv2's
    teacher-temperature warm-up, last layer frozen in epoch 0) be followed exactly.
    """

    step: int
    total_steps: int
    steps_per_epoch: int

    @property
    def epoch(self) -> float:
        return self.step / max(1, self.steps_per_epoch)

    @property
    def progress(self) -> float:
        return self.step / max(1, self.total_steps)


@runtime_checkable
class Objective(Protocol):
    """A self-supervised (or supervised) objective: a ``torch.nn.Module`` owning the
    backbone it trains and any heads, teachers and buffers it needs.

    The engine moves it to the device, wraps it for distributed training, builds the
    optimizer over the parameters with ``requires_grad=True`` (an EMA teacher keeps
    ``requires_grad=False``), and calls, per optimizer step::

        out = objective.training_step(batch, info)   # under autocast
        out["loss"].backward()
        objective.before_optimizer_step(info)         # e.g. freeze the last layer
        optimizer.step()
        logged = objective.after_optimizer_step(info) # e.g. EMA teacher update

    Everything the objective keeps across steps (teacher weights, centering
    statistics) must be in its ``state_dict`` so checkpoints and resumption cover it.
    Randomness must come from torch's (or numpy's / Python's) global generators, which
    checkpoints save and restore, so a resumed run repeats the uninterrupted one.

    ``optim_recipe`` is optional: without it the engine uses ``OptimRecipe()``.
    ``uses_every_parameter`` is optional: ``True`` tells distributed training (DDP)
    that every step gives every trainable parameter a gradient, so it skips its
    per-step search for unused ones; leave it out when in doubt (a wrong ``True``
    makes DDP fail).

    ``clip_groups()`` is optional too: a mapping of names to the modules whose
    gradients are clipped each on their own (``optim.clip_mode=per_module``, the
    default), as DINOv2 clips its student's backbone, dino_head and ibot_head
    separately. Parameters in none of them form one more group. Without it, or with
    ``optim.clip_mode=global``, one norm over all parameters is clipped.
    """

    views: ViewSpec
    optim_recipe: OptimRecipe

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, torch.Tensor]:
        """Return ``{"loss": scalar tensor, ...}``; other entries (detached
        scalars such as ``"dino_loss"``, ``"ibot_loss"``) are logged to metrics.csv.

        Optionally ``"signals"``: a dict of detached tensors the loop turns into the
        collapse sentinels on log steps only (``embeddings`` ``(N, D)``,
        ``teacher_probs`` ``(T, K)``, ``koleo_embeddings`` ``(C, B, D)``, or any
        0-dim tensor, logged as ``sentinel/<name>``; docs/monitoring.md). Hand
        references to tensors the step computed anyway, not statistics."""
        ...

    def before_optimizer_step(self, info: StepInfo) -> None:
        """Called after ``backward`` and gradient clipping, before ``optimizer.step``."""
        ...

    def after_optimizer_step(self, info: StepInfo) -> Mapping[str, float]:
        """Called after ``optimizer.step``; returns scalars to log (momentum, temperature)."""
        ...

    def eval_backbone(self) -> Backbone:
        """The backbone evaluation and export use (for DINOv2, the EMA teacher's)."""
        ...


class ObjectiveBase:
    """Optional mixin giving the no-op hooks; combine with ``torch.nn.Module``."""

    def before_optimizer_step(self, info: StepInfo) -> None:
        return None

    def after_optimizer_step(self, info: StepInfo) -> Mapping[str, float]:
        return {}


# --------------------------------------------------------------------- augmentation


@runtime_checkable
class AugmentationRecipe(Protocol):
    """Turns decoded images into the views an objective asked for.

    ``sample_views`` runs in CPU data-loader workers (so the recipe must pickle):
    it maps the image as decoded, with its dynamic range intact (uint8, uint16, or
    float32 Hounsfield units for CT), to ``{"global": [...], "local": [...]}`` of
    float32 ``(C, H, W)`` arrays. The recipe owns the intensity mapping of its
    modality (CT windowing, X-ray CLAHE, ...) and the gray → 3-channel step.
    Every random choice of ``sample_views`` (crops, flips, windows, noise, and those
    of libraries it calls, such as albumentations) must be drawn from ``rng``, never
    from a global or private generator: the loader seeds ``rng`` per sample, so equal
    seeds give bitwise-equal views, in any worker, after pickling, and on resume.

    ``batch_transform`` runs once per batch on the training device (kornia), for the
    photometric part that is cheaper on a GPU; it returns the transformed batch. Its
    randomness comes from torch's global generator, which checkpoints save.

    Optional attributes ``mean`` and ``std`` (three floats each) state the
    normalisation the views end with, ``(x - mean) / std`` of [0, 1] intensities; the
    export records them so evaluation feeds the backbone the inputs it was trained on.
    """

    def sample_views(
        self, image: np.ndarray, record: SampleRecord, rng: np.random.Generator
    ) -> dict[str, list[Any]]: ...

    def batch_transform(self, batch: Batch) -> Batch: ...


# ------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class SourceTags:
    """The catalog's description of one source, handed to its reader.

    ``modality`` is what the user wrote, normalised: one modality id (``"ct"``), a
    comma list of ids for a mixed source (``"ct,mr,us"``), or ``"auto"`` when the
    user did not say. It is a constraint for the reader, not a record's value: the
    reader gives every ``SampleRecord`` exactly one id from ``MODALITIES`` (the one
    id; for a list or ``auto``, one it infers from headers or folder names within
    the allowed ids). A record carrying ``"auto"`` or a list fails the scan with an
    error naming the reader. Options a reader declares reach it from a catalog
    entry's ``options:`` or from ``--data KIND:PATH?key=value``.
    """

    source: str
    modality: str
    anatomy: str = "unknown"


@dataclass(frozen=True)
class SampleRecord:
    """One image in the index: enough to find and decode it later, no pixels.

    ``uri`` is a path, optionally with a fragment for an image inside a file
    (``scan.dcm#frame=3``, ``brain.nii.gz#axis=2&slice=40``, ``pathmnist.npz#train/17``).
    ``label`` is an int class, a tuple of 0/1 for multi-label data, or ``None``.
    ``modality`` is one id of ``MODALITIES`` (never ``"auto"`` or a comma list; see
    ``SourceTags``).
    """

    uri: str
    source: str
    modality: str
    anatomy: str = "unknown"
    label: int | tuple[int, ...] | None = None


@dataclass(frozen=True)
class ScanProblem:
    """A file a reader could not index, with the reason; reported, never fatal."""

    path: str
    reason: str


@runtime_checkable
class DatasetReader(Protocol):
    """Reads one source (a folder, a DICOM tree, a NIfTI volume, an npz) where it lies.

    ``scan`` walks the source once and yields a ``SampleRecord`` per image (or a
    ``ScanProblem`` per file it cannot use); it must not keep decoded pixels, so an
    index of 21M images fits in memory. ``load`` decodes one record into a numpy array
    of ``IMAGE_SHAPES`` (``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``: gray or RGB, channels
    last) and a numeric dtype (bool, int, uint or float; never object), keeping its
    dynamic range. Anything else (a channel-first ``(1, H, W)``, a two-channel
    ``(H, W, 2)``, an object array) is a reader bug: training stops with an error
    naming the reader and the file (``image_contract_error``). It raises
    ``biovfm_core.errors.BadImageError`` naming the file and reason for a corrupt,
    truncated or undecodable image, and the pipeline skips and reports that image.
    """

    def scan(self) -> Iterator[SampleRecord | ScanProblem]: ...

    def load(self, record: SampleRecord) -> np.ndarray: ...


IMAGE_SHAPES = "(H, W), (H, W, 1) or (H, W, 3)"
"""The shapes ``DatasetReader.load`` may return, as messages say them."""


def image_contract_error(image: Any) -> str | None:
    """What is wrong with ``image`` as ``DatasetReader.load``'s result, or ``None``.

    Checked by the conformance kit and, for every image, by the training data path, so
    a reader bug is one clear error instead of a skipped image or a traceback deep in a
    crop or a BatchNorm.
    """
    shape = getattr(image, "shape", None)
    dtype = getattr(image, "dtype", None)
    if type(image).__module__ != "numpy" or shape is None or dtype is None:
        return f"returned {type(image).__name__}, not a numpy array"
    if dtype.kind not in "biuf":
        return f"returned an array of dtype {dtype}, not a numeric one"
    ok = (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3))) and min(shape[:2]) >= 1
    if not ok:
        hint = ""
        if len(shape) == 3 and shape[0] in (1, 3) and shape[2] not in (1, 3):
            hint = " (channels first: move them last, or drop a single channel)"
        return f"returned shape {tuple(shape)}{hint}, not {IMAGE_SHAPES}"
    return None


# --------------------------------------------------------------------------- loggers


@dataclass(frozen=True)
class RunInfo:
    """What a logger learns about the run when it starts (rank 0 only)."""

    run_dir: Path
    """The run folder; a logger may keep its own state there (an id to resume)."""
    name: str
    """The run folder's name, a natural run name for a tracking server."""
    resume_step: int = 0
    """0 for a new run; else the checkpoint's step: rows after it will be logged again."""


@runtime_checkable
class ExperimentLogger(Protocol):
    """Where a run's config, metrics and export go (``train.loggers``, ``--logger``).

    biovfm calls, on rank 0 only and in this order: ``start`` once; ``log_config``
    once; ``log_metrics`` once per optimizer step; ``log_artifact`` for files worth
    keeping (``config.yaml`` at the start, the ``export/`` folder at the end);
    ``finish`` once, with ``"done"``, ``"failed"`` or ``"interrupted"``.

    A row holds every column of ``metrics.csv`` at that step: losses, schedules,
    throughput, and whatever sentinel (``sentinel/...``) and monitor
    (``monitor/...``) columns the run computes; a value not computed at this step is
    ``None`` or NaN, and some cells may be non-numbers. Keep what you can use.

    A logger that raises is warned about once and switched off for the rest of the
    run; training goes on (only the built-in ``csv`` logger, the run's own record, is
    never switched off). ``biovfm_core.testing.check_logger`` exercises all of this.
    """

    def start(self, run: RunInfo) -> None: ...

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def log_metrics(self, step: int, row: Mapping[str, Any]) -> None: ...

    def log_artifact(self, path: Path, name: str) -> None: ...

    def finish(self, status: str) -> None: ...
