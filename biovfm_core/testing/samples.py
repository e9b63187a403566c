"""What the checks feed a plugin: the kit's small sizes, the built-in demo images, and
collated batches of their views."""

from __future__ import annotations

import functools
from typing import Any

from biovfm_core.protocols import Batch, SampleRecord, SourceTags, ViewSpec

# Small views so a check runs in seconds: what a CPU demo run would use.
KIT_VIEWS = ViewSpec(global_crops=2, global_size=32, local_crops=2, local_size=16)
BATCH = 4
KIT_BACKBONE_SIZE = 32
# Blocks of the kit's ViT where the backbone has a `depth` option (vit_tiny has 12).
KIT_BACKBONE_DEPTH = 2
# check_backbone tries these image sizes, smallest first, until the backbone runs.
KIT_TRY_SIZES = (KIT_BACKBONE_SIZE, 64, 128, 256)


_DEMO_2D = "skimage"
_DEMO_ORIGIN = {"ct": "pydicom", "mr": "pydicom", "us": "pydicom", "nm": "pydicom"}


@functools.lru_cache(maxsize=4)
def _demo_records(origins: str) -> tuple[tuple[SampleRecord, ...], Any]:
    """The built-in demo images of ``origins`` (the ``demo`` reader's option)."""
    from biovfm_core.registry import get_registry

    reader = get_registry().build(
        "datasets", "demo", "", SourceTags(source="demo", modality="auto"),
        options={"origins": origins},
    )  # fmt: skip
    records = tuple(r for r in reader.scan() if isinstance(r, SampleRecord))
    if not records:
        raise RuntimeError(f"the built-in demo data ({origins}) is empty")
    return records, reader


def _demo_images(modality: str | None, count: int) -> list[tuple[Any, SampleRecord]]:
    """``count`` decoded demo images, of ``modality`` where the demo has it."""
    records, reader = _demo_records(_DEMO_ORIGIN.get(modality or "", _DEMO_2D))
    chosen = [r for r in records if r.modality == modality] if modality else []
    if not chosen:
        # A modality the demo lacks (xray): feed the 2D photos tagged as that modality.
        chosen = list(records)
        if modality:
            chosen = [SampleRecord(r.uri, r.source, modality, r.anatomy) for r in chosen]
    # Spread over the demo's different images, not one image's neighbouring patches.
    step = max(1, len(chosen) // count)
    picked = (chosen[::step] * count)[:count]
    return [(reader.load(r), r) for r in picked]


def _default_recipe(views: ViewSpec) -> Any:
    from biovfm_core.registry import get_registry

    return get_registry().build("augmentations", "default", views)


def _batch(views: ViewSpec, recipe: Any, seed: int, labels: bool) -> Batch:
    """A collated, device-transformed batch of demo images, as the loader makes it."""
    import numpy as np
    import torch

    from biovfm_core.data.dataset import collate

    samples = []
    for k, (image, record) in enumerate(_demo_images(None, BATCH)):
        out = recipe.sample_views(image, record, np.random.default_rng([seed, k]))
        samples.append({"views": out, "label": k % 2 if labels else None, "modality": "other"})
    batch = collate(samples)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return recipe.batch_transform(batch)
    finally:
        torch.random.set_rng_state(state)
