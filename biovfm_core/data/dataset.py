"""Torch dataset and collate: decode via the source's reader, make views, skip bad images.

A bad image (``BadImageError``) never stops training: the sample becomes a
``Skipped`` marker, ``collate`` drops it and carries ``(uri, reason)`` on the batch
(``batch.skipped``; an ``EmptyBatch`` when no image of the batch was usable), and
``BadImageLog`` in the main process counts them and writes the report file to the
run folder. Workers cannot share a counter, so the list
travels with the batch.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from biovfm_core.errors import BadImageError, BiovfmError, PluginError
from biovfm_core.protocols import (
    IMAGE_SHAPES,
    AugmentationRecipe,
    Batch,
    image_contract_error,
)

from .index import SampleIndex
from .light_views import NORM_KEY, batch_norm, finish_views, same_channels
from .shards.reader import OFFSET_KEY, ROWS_KEY


@dataclass(frozen=True)
class Skipped:
    uri: str
    reason: str


class ImageDataset:
    """``index[i]`` decoded by its source's reader and turned into views by ``recipe``.

    ``recipe`` is one recipe, or a mapping modality id → recipe with a ``"default"``
    entry (``--augmentation auto``). ``open_reader(index, source)`` builds readers;
    by default the registry rebuilds them from what the index recorded. Readers are
    built lazily per worker process. ``light_views``: recipes that can ship light
    views do (light_views.py); the batches then need ``Batch.finish`` on the device.
    """

    def __init__(
        self,
        index: SampleIndex,
        recipe: AugmentationRecipe | Mapping[str, AugmentationRecipe],
        open_reader: Callable[[SampleIndex, str], Any] | None = None,
        *,
        light_views: bool = False,
    ) -> None:
        self.index = index
        self.light_views = light_views
        self.recipes = dict(recipe) if isinstance(recipe, Mapping) else {"default": recipe}
        if "default" not in self.recipes:
            raise BiovfmError("a per-modality recipe mapping needs a 'default' entry")
        if open_reader is None:
            from .scan import open_reader as _open

            open_reader = _open
        self._open_reader = open_reader
        self._readers: dict[str, Any] = {}
        # Sources packed into shards are read by row: (reader key of their folder, the
        # row of its item 0); the key sits beside the per-source readers, never one.
        self._by_row = {
            name: (f"shards:{meta['path']}", int(meta.get(OFFSET_KEY, 0)))
            for name, meta in index.sources_meta.items()
            if meta.get(ROWS_KEY)
        }

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = {}
        return state

    def __len__(self) -> int:
        return len(self.index)

    def reader(self, source: str) -> Any:
        r = self._readers.get(source)
        if r is None:
            r = self._readers[source] = self._open_reader(self.index, source)
        return r

    def _shard_reader(self, source: str) -> tuple[Any, int] | None:
        """The reader of the shard folder ``source`` was packed into, if it reads by
        row (one per folder, however many sources were packed into it), and the row
        of this index where that folder's item 0 sits."""
        packed = self._by_row.get(source)
        if packed is None:
            return None
        key, first_row = packed
        r = self._readers.get(key)
        if r is None:
            r = self._readers[key] = self._open_reader(self.index, source)
        return r, first_row

    def recipe_for(self, modality: str) -> AugmentationRecipe:
        return self.recipes.get(modality, self.recipes["default"])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | Skipped:
        """Sample ``key``: an index ``i``, or ``(i, seed)`` for views that depend only
        on ``seed`` (a sampler yielding pairs makes an epoch replayable on resume,
        whatever the worker count). A plain ``i`` draws from fresh OS entropy."""
        if isinstance(key, tuple):
            i, seed = key
            rng = np.random.default_rng(seed)
        else:
            i, rng = key, np.random.default_rng()
        record = self.index.record(int(i))
        try:
            shards = self._shard_reader(record.source)
            if shards is not None:
                reader, first_row = shards
                # The record's uri lets the reader check the item is this row's image.
                image = reader.load_row(self.index.base_row(int(i)) - first_row, record.uri)
            else:
                image = self.reader(record.source).load(record)
            problem = image_contract_error(image)
            if problem:
                # A reader bug, not a bad file: it would hit every image, so skipping
                # them (or letting a crop or BatchNorm fail on them later) hides it.
                reader = self.index.sources_meta.get(record.source, {}).get("reader", "?")
                raise PluginError(
                    f"reader {reader!r} of source {record.source!r}: load({record.uri}) "
                    f"{problem}; a reader must return a numeric numpy array of {IMAGE_SHAPES} "
                    "(protocols.DatasetReader): fix the reader, or check it with "
                    "biovfm_core.testing.check_reader"
                )
            recipe = self.recipe_for(record.modality)
            if self.light_views and getattr(recipe, "supports_light_views", False):
                views = recipe.sample_views(image, record, rng, light=True)
            else:
                views = recipe.sample_views(image, record, rng)
        except BadImageError as exc:
            return Skipped(record.uri, exc.reason)
        except (ValueError, OSError) as exc:  # e.g. a degenerate image the crop cannot handle
            return Skipped(record.uri, f"{type(exc).__name__}: {exc}")
        return {"views": views, "label": record.label, "modality": record.modality}


@dataclass(frozen=True)
class EmptyBatch:
    """What ``collate`` returns when every sample of a batch was unusable.

    Not a ``Batch`` (it has no views, so an objective cannot be handed one by
    mistake); it still carries the reasons so ``BadImageLog`` counts the images.
    """

    skipped: list[tuple[str, str]]


def collate(samples: list[dict[str, Any] | Skipped]) -> Batch | EmptyBatch:
    """Stack views into ``Batch``; skipped samples are dropped and listed on
    ``batch.skipped``. Returns ``EmptyBatch`` when every sample of the batch was bad."""
    import torch

    good = [s for s in samples if not isinstance(s, Skipped)]
    skipped = [(s.uri, s.reason) for s in samples if isinstance(s, Skipped)]
    if not good:
        return EmptyBatch(skipped)
    from torch.utils.data import default_collate

    all_views = [s["views"] for s in good]
    norm = batch_norm(all_views)
    if norm is not None:
        all_views = same_channels(all_views)
    else:
        all_views = [finish_views(v) if NORM_KEY in v else v for v in all_views]

    def stack(kind: str, k: int) -> torch.Tensor:
        # torch's collate stacks straight into shared memory inside a loader worker;
        # a plain np.stack would be copied a second time on its way to the queue.
        return default_collate([torch.from_numpy(v[kind][k]) for v in all_views])

    global_views = [stack("global", k) for k in range(len(all_views[0]["global"]))]
    local_views = [stack("local", k) for k in range(len(all_views[0]["local"]))]
    labels_raw = [s["label"] for s in good]
    labels = None
    if all(lb is not None for lb in labels_raw):
        if isinstance(labels_raw[0], tuple):
            labels = torch.tensor(labels_raw, dtype=torch.float32)
        else:
            labels = torch.tensor(labels_raw, dtype=torch.int64)
    return Batch(
        global_views=global_views,
        local_views=local_views,
        labels=labels,
        modality=[s["modality"] for s in good],
        skipped=skipped,
        norm=norm,
    )


class BadImageLog:
    """Counts skipped images in the main process and writes them to a report file."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []

    @property
    def count(self) -> int:
        return len(self.entries)

    def add(self, batch: Batch | EmptyBatch) -> None:
        self.entries.extend(batch.skipped)

    def track(self, batches: Iterable[Batch | EmptyBatch]) -> Iterator[Batch]:
        """Yield the usable batches of a loader, logging what each skipped."""
        for b in batches:
            self.add(b)
            if isinstance(b, Batch):
                yield b

    def reasons(self) -> Counter[str]:
        return Counter(r.split(":")[0] for _, r in self.entries)

    def write(self, path: str) -> None:
        with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            w = csv.writer(f)
            w.writerow(["uri", "reason"])
            w.writerows(self.entries)
