"""The training data stream: index → subset → seeded per-rank order → loader → batches.

Every image's position in an epoch and its augmentation seed are functions of
``(seed, epoch, position)`` alone, so a run resumed at batch ``k`` of epoch ``e``
sees exactly the images and crops the uninterrupted run saw, and the ranks of a
distributed run see disjoint shards of each epoch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from biovfm_core.config import RunConfig
from biovfm_core.data.order import RunOrder
from biovfm_core.data.shards.order import ShardOrder
from biovfm_core.errors import ConfigError
from biovfm_core.protocols import AugmentationRecipe, ViewSpec


@dataclass
class TrainData:
    """Everything the loop needs from the data side."""

    dataset: torch.utils.data.Dataset
    batch_recipe: AugmentationRecipe
    num_images: int
    # Items per chunk when the data is a shard set: the order then keeps reads
    # chunk-local (ShardOrder) instead of a global permutation (RunOrder).
    shard_chunks: np.ndarray | None = None


def open_index(config: RunConfig, run_dir: Path | None = None):
    """The configured subset of the data's index, and a report of how it was built.

    Scans ``data.sources`` (the demo data when empty) unless ``data.index`` names a
    prebuilt index; files that cannot be indexed go to ``scan_problems.csv``.
    """
    from biovfm_core.data.catalog import resolve_data
    from biovfm_core.data.index import SampleIndex
    from biovfm_core.data.scan import check_sources, scan_sources
    from biovfm_core.data.subsets import subset

    report: dict = {}
    sources = []
    if not config.data.index:
        sources, _ = resolve_data(config.data.sources, options=config.options["dataset"])
    if config.data.index:
        index = SampleIndex.load(config.data.index)
        report["index"] = config.data.index
    elif any(spec.reader == "shards" for spec in sources):
        index = _open_shards(sources, report)
    else:
        sources = [_with_pixel_limit(spec, config.data.max_image_pixels) for spec in sources]
        allow = config.data.allow_missing_sources
        index, scan_report = scan_sources(
            sources, stop_on_error=not allow, stop_on_missing=not allow
        )
        report.update(scan_report.as_dict())
        if scan_report.problems and run_dir is not None:
            scan_report.write_problems(str(run_dir / "scan_problems.csv"))
        warn = (lambda m: print(f"warning: {m}", file=sys.stderr)) if run_dir else None
        report["dropped_sources"] = check_sources(scan_report, allow_missing=allow, warn=warn)
        failed = [
            f"{s.name} ({s.status}{': ' + s.error if s.error else ''})"
            for s in scan_report.sources
            if s.status in ("missing", "error")
        ]
        if len(index) == 0:
            raise ConfigError(
                f"no images found in --data {' '.join(config.data.sources) or '(demo)'}"
                + (f"; {'; '.join(failed)}" if failed else "")
            )
    index = subset(
        index,
        fraction=config.data.fraction,
        modalities=config.data.modalities or None,
        seed=config.train.seed,
    )
    report["images"] = len(index)
    report["by_source"] = index.counts("source")
    report["by_modality"] = index.counts("modality")
    return index, report


def _open_shards(sources, report: dict):
    """The index of the shard sets, read whole from their folders: no scan of 21M files."""
    from biovfm_core.data.shards.reader import open_shard_sets

    others = [f"{s.reader}:{s.path}" for s in sources if s.reader != "shards"]
    if others:
        raise ConfigError(
            f"--data shards: cannot be mixed with other sources ({', '.join(others)}): a run "
            "reads shards chunk by chunk, files one by one; pack them too with "
            "`biovfm data pack` and give both shard sets"
        )
    index, sets = open_shard_sets([spec.path for spec in sources])
    for spec in sources:
        spec.build_reader()  # checks the source's options as every other reader's are
    report["shards"] = [s.folder for s in sets]
    report["total"] = sum(s.manifest.images for s in sets)
    report["packed_sources"] = {k: v for s in sets for k, v in s.manifest.sources.items()}
    report["pack_options"] = {s.folder: s.manifest.options for s in sets}
    return index


def _with_pixel_limit(spec, limit: int):
    """The run's decompression-bomb limit for readers that take one, unless the source set it."""
    from dataclasses import replace

    from biovfm_core.registry import get_registry

    if "max_pixels" in spec.options:
        return spec
    if "max_pixels" not in get_registry().options("datasets", spec.reader):
        return spec
    return replace(spec, options={**spec.options, "max_pixels": limit})


def training_data(index, views: ViewSpec, config: RunConfig, registry) -> TrainData:
    """Attach the augmentation recipes the objective's views need to the index."""
    from biovfm_core.data.dataset import ImageDataset

    num_classes, _ = index.task_info()
    if views.needs_labels and num_classes is None:
        raise ConfigError(
            f"objective {config.objective!r} needs labels, but the data has unlabelled images "
            f"(sources: {', '.join(index.sources)})"
        )
    recipes = _recipes(config, views, registry, index.counts("modality"))
    from biovfm_core.data.shards.reader import chunk_sizes, metadata_folder, shard_layout

    layout = shard_layout(index)
    # A URL's index.json is in the local cache; several sets' chunks follow each other
    # as their rows do.
    chunks = (
        np.concatenate([chunk_sizes(metadata_folder(folder)) for folder, _ in layout])
        if layout
        else None
    )
    return TrainData(
        # Light views are switched on per device by BatchStream; the loop finishes
        # them (Batch.finish).
        dataset=ImageDataset(index, recipes),
        batch_recipe=recipes["default"],
        num_images=len(index),
        shard_chunks=chunks,
    )


BY_MODALITY = "by_modality"


def recipe_plan(config: RunConfig, registry, modalities) -> dict[str, tuple[str, str]]:
    """Which recipe ``--augmentation auto`` gives each modality, and why.

    ``modality -> (recipe name, reason)``, ``"default"`` included. In order: the run's
    ``augmentation.by_modality`` (``--opt augmentation.by_modality.fundus=fundus_green``),
    the recipe named after the modality (the built-ins claim ``ct``, ``mr``, ``fundus`` …),
    a plugin's ``register(..., modalities=[...])`` declaration for a modality nobody else
    claims, then ``default``. A third-party recipe is thus used for a modality only
    where a run maps it or no recipe claims it, never for the other modalities of a
    mixed run.
    """
    from biovfm_core.protocols import normalise_modality

    mapped = _run_mapping(config.options["augmentation"])
    plan: dict[str, tuple[str, str]] = {}
    for key, name in mapped.items():
        try:
            modality = key if key == "default" else normalise_modality(key)
        except ValueError as exc:
            raise ConfigError(f"augmentation.{BY_MODALITY}.{key}: {exc}") from None
        registry.get("augmentations", name)  # an unknown recipe is an error naming it
        plan[modality] = (name, f"augmentation.{BY_MODALITY}")
    names = set(registry.names("augmentations"))
    declared: dict[str, list[str]] = {}
    for name in sorted(names):
        try:
            registration, _ = registry.get("augmentations", name)
        except Exception:  # a clashing name serves no modality
            continue
        for modality in getattr(registration, "modalities", ()):
            declared.setdefault(modality, []).append(name)
    for modality in ("default", *modalities):
        if modality in plan:
            continue
        if modality in names:
            plan[modality] = (modality, "recipe of that name")
        elif len(declared.get(modality, [])) == 1:
            plan[modality] = (declared[modality][0], "declared by its plugin")
    plan.setdefault("default", ("default", "recipe of that name"))
    return plan


def _run_mapping(options) -> dict[str, str]:
    """``by_modality`` from YAML (a mapping) or ``--opt`` (``by_modality.<id>`` keys)."""
    mapped = dict(options.get(BY_MODALITY) or {})
    prefix = BY_MODALITY + "."
    mapped.update({k[len(prefix) :]: v for k, v in options.items() if k.startswith(prefix)})
    return {str(k): str(v) for k, v in mapped.items()}


def _recipes(config: RunConfig, views: ViewSpec, registry, modalities) -> dict:
    options = {
        k: v
        for k, v in config.options["augmentation"].items()
        if k != BY_MODALITY and not k.startswith(BY_MODALITY + ".")
    }
    if config.augmentation != "auto":
        return {
            "default": registry.build("augmentations", config.augmentation, views, options=options)
        }
    # One recipe per modality present that has its own, the default for the rest.
    # Options given with `auto` go to every recipe that accepts them.
    plan = recipe_plan(config, registry, list(modalities))
    built: dict[str, object] = {}
    recipes = {}
    for modality in ("default", *(m for m in modalities if m in plan)):
        name = plan[modality][0]
        if name not in built:
            accepted = registry.options("augmentations", name)
            built[name] = registry.build(
                "augmentations",
                name,
                views,
                options={k: v for k, v in options.items() if k in accepted},
            )
        recipes[modality] = built[name]
    return recipes


def make_order(data: TrainData, *, workers: int = 0, **order: int) -> torch.utils.data.Sampler:
    """``RunOrder`` over files, ``ShardOrder`` over shard sets, from ``RunOrder``'s
    keywords (``order``); the shards order gives each of the loader's ``workers`` its
    own run of chunks."""
    if data.shard_chunks is None:
        return RunOrder(data.num_images, **order)
    return ShardOrder(data.dataset.index.base_rows(), data.shard_chunks, workers=workers, **order)


def order_record(data: TrainData, workers: int = 0) -> dict:
    """What a checkpoint records about the data order its position refers to."""
    if data.shard_chunks is None:
        return {"kind": "run", "images": data.num_images}
    import zlib

    rows = data.dataset.index.base_rows()
    return {
        "kind": "shards",
        "images": data.num_images,
        "chunks": len(data.shard_chunks),
        # Which rows of the set: another subset or another shard set is another order.
        "rows_crc32": zlib.crc32(np.ascontiguousarray(rows, dtype=np.int64).tobytes()),
        # The loader's worker count shapes the order (each worker its own chunks).
        "workers": max(1, workers),
    }


def make_loader(
    data: TrainData,
    order: torch.utils.data.Sampler,
    *,
    num_workers: int,
    pin_memory: bool,
) -> torch.utils.data.DataLoader:
    from biovfm_core.data.dataset import collate

    return torch.utils.data.DataLoader(
        data.dataset,
        batch_size=order.batch,
        sampler=order,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        # Worker seeds come from this generator, not the global RNG, so creating the
        # loader does not shift the random stream a resumed run must replay.
        generator=torch.Generator().manual_seed(order.seed * 1_000_003 + order.epoch),
        prefetch_factor=4 if num_workers > 0 else None,
    )
