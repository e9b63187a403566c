"""``check_augmentation``: view shapes, pickling, seeded reproducibility and
``batch_transform`` on demo images."""

from __future__ import annotations

import copy
import pickle
import random
from collections.abc import Callable, Mapping
from typing import Any

from biovfm_core.protocols import MODALITIES, Batch, SampleRecord, ViewSpec
from biovfm_core.testing._plugin import _Plugin
from biovfm_core.testing.errors import _fail
from biovfm_core.testing.options import check_options
from biovfm_core.testing.samples import KIT_VIEWS, _demo_images


def check_augmentation(
    name_or_factory: str | Callable[..., Any],
    *,
    options: Mapping[str, Any] | None = None,
    preset: Mapping[str, Any] | None = None,
    views: ViewSpec = KIT_VIEWS,
    modality: str | None = None,
    in_chans: int = 3,
    seed: int = 0,
    registry: Any = None,
) -> None:
    """Check a recipe on demo images: view shapes, pickling, seeded reproducibility
    (no global generators), and ``batch_transform``.

    ``modality`` picks demo images of that modality (a registered modality name,
    ``ct``, is its own default); modalities the demo lacks get its 2D photos.
    """
    import numpy as np
    import torch

    plugin = _Plugin(
        "augmentation", name_or_factory, preset=preset, options=options, registry=registry
    )
    check_options(plugin)
    what = plugin.what
    if modality is None and isinstance(name_or_factory, str) and name_or_factory in MODALITIES:
        modality = name_or_factory
    recipe = plugin.build(views)
    try:
        clone = pickle.loads(pickle.dumps(recipe))
    except Exception as exc:
        raise _fail(
            what,
            f"the recipe does not pickle ({type(exc).__name__}: {exc}); data-loader workers "
            "receive it pickled",
            "drop unpicklable members in __getstate__ and rebuild them in __setstate__",
        ) from None
    images = _demo_images(modality, 3)
    for k, (image, record) in enumerate(images):
        np.random.seed(1)
        random.seed(1)
        first = recipe.sample_views(image, record, np.random.default_rng([seed, k]))
        _check_views(first, views, in_chans, what, record)
        np.random.seed(2)
        random.seed(2)
        again = clone.sample_views(image, record, np.random.default_rng([seed, k]))
        if not _views_equal(first, again):
            raise _fail(
                what,
                f"the same rng seed gave different views of {record.uri} (after pickling, "
                "with numpy's and Python's global generators in another state)",
                "draw every random choice from the `rng` argument; seed albumentations from it "
                "(compose.set_random_state(rng, random.Random(int(rng.integers(2**63)))))",
            )
    image, record = images[0]
    a = recipe.sample_views(image, record, np.random.default_rng([seed, 0]))
    b = recipe.sample_views(image, record, np.random.default_rng([seed + 1, 0]))
    if _views_equal(a, b):
        raise _fail(
            what,
            "two different rng seeds gave identical views",
            "draw the crops' randomness from the `rng` argument",
        )
    from biovfm_core.data.dataset import collate

    samples = [
        {"views": recipe.sample_views(img, rec, np.random.default_rng(k)), "label": None,
         "modality": rec.modality}
        for k, (img, rec) in enumerate(images)
    ]  # fmt: skip
    outs = []
    for _ in range(2):
        batch = collate(copy.deepcopy(samples))
        torch.manual_seed(seed)
        outs.append(recipe.batch_transform(batch))
    out = outs[0]
    if not isinstance(out, Batch):
        raise _fail(what, "batch_transform did not return a Batch", "return the transformed Batch")
    for kind, size, count in (
        ("global", views.global_size, views.global_crops),
        ("local", views.local_size, views.local_crops),
    ):
        tensors = out.global_views if kind == "global" else out.local_views
        if len(tensors) != count or any(
            tuple(t.shape) != (len(images), in_chans, size, size) or not t.is_floating_point()
            for t in tensors
        ):
            raise _fail(
                what,
                f"batch_transform changed the {kind} views' number or shape",
                "keep every view's (B, C, H, W) float shape",
            )
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            raise _fail(what, f"batch_transform gave NaN/inf {kind} views", "keep them finite")
    same = all(
        torch.equal(x, y)
        for x, y in zip(
            outs[0].global_views + outs[0].local_views,
            outs[1].global_views + outs[1].local_views,
            strict=True,
        )
    )
    if not same:
        raise _fail(
            what,
            "batch_transform gave different results under the same torch seed",
            "draw its randomness from torch's global generator (checkpoints restore it)",
        )
    for attr in ("mean", "std"):
        value = getattr(recipe, attr, None)
        if value is not None and len(list(value)) != 3:
            raise _fail(what, f"{attr} is {value!r}", f"make {attr} three floats, or drop it")


def _check_views(out: Any, views: ViewSpec, in_chans: int, what: str, record: SampleRecord) -> None:
    import numpy as np

    if not isinstance(out, Mapping) or set(out) != {"global", "local"}:
        raise _fail(
            what,
            f"sample_views returned {type(out).__name__} {list(out) if isinstance(out, Mapping) else ''}",
            'return {"global": [...], "local": [...]}',
        )
    for kind, count, size in (
        ("global", views.global_crops, views.global_size),
        ("local", views.local_crops, views.local_size),
    ):
        if len(out[kind]) != count:
            raise _fail(
                what,
                f"{len(out[kind])} {kind} views of {record.uri}, the ViewSpec asks for {count}",
                f"make views.{kind}_crops views",
            )
        for view in out[kind]:
            shape = getattr(view, "shape", None)
            if (
                not isinstance(view, np.ndarray)
                or view.dtype != np.float32
                or shape != (in_chans, size, size)
            ):
                raise _fail(
                    what,
                    f"a {kind} view of {record.uri} ({record.modality}) is "
                    f"{type(view).__name__} {getattr(view, 'dtype', '')} {shape}",
                    f"return float32 arrays (C={in_chans}, {size}, {size}) as the ViewSpec asks "
                    "(repeat gray images to 3 channels)",
                )
            if not np.isfinite(view).all():
                raise _fail(what, f"a {kind} view of {record.uri} has NaN/inf", "keep views finite")


def _views_equal(a: Mapping[str, list], b: Mapping[str, list]) -> bool:
    import numpy as np

    return all(
        len(a[k]) == len(b[k])
        and all(np.array_equal(x, y) for x, y in zip(a[k], b[k], strict=True))
        for k in ("global", "local")
    )
