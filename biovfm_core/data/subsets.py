"""Subsets for data-scaling studies.

By fraction: every source is shuffled once with a generator seeded by ``(seed,
source name)`` and the first ``round(fraction * n_source)`` images are kept. Hence
the subsets are stratified by source (each source keeps its share), reproducible
whatever order sources were scanned in, and nested: the 1% subset is the head of
the same permutation the 10% subset is cut from.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import MODALITIES, normalise_modality

from .index import SampleIndex


def _source_seed(seed: int, name: str) -> list[int]:
    return [seed & 0xFFFFFFFF, zlib.crc32(name.encode("utf-8", "surrogateescape"))]


def fraction_rows(index: SampleIndex, fraction: float, seed: int = 0) -> np.ndarray:
    """Positions (sorted) of a stratified, nested ``fraction`` of ``index``."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], not {fraction}")
    ids = index.source_ids.astype(np.int64)
    if fraction == 1.0:
        return np.arange(len(ids), dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    counts = np.bincount(ids, minlength=len(index.sources))
    starts = np.concatenate([[0], np.cumsum(counts)])
    keep: list[np.ndarray] = []
    for sid, n in enumerate(counts):
        if n == 0:
            continue
        k = round(fraction * n)
        if k == 0:
            continue
        members = order[starts[sid] : starts[sid + 1]]
        rng = np.random.Generator(np.random.PCG64(_source_seed(seed, index.sources[sid])))
        keep.append(members[rng.permutation(n)[:k]])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def modality_rows(index: SampleIndex, modalities: Iterable[str] | str | None) -> np.ndarray:
    """Positions of the images of the given modalities (``None``/``"all"``: every image)."""
    if modalities is None or modalities == "all":
        return np.arange(len(index), dtype=np.int64)
    if isinstance(modalities, str):
        modalities = modalities.split(",")
    wanted = [normalise_modality(m) for m in modalities if m.strip()]
    if not wanted or "all" in wanted:
        return np.arange(len(index), dtype=np.int64)
    ids = np.array([MODALITIES.index(m) for m in wanted], dtype=np.int8)
    return np.flatnonzero(np.isin(index.modality_ids, ids))


def subset(
    index: SampleIndex,
    *,
    fraction: float = 1.0,
    modalities: Iterable[str] | str | None = None,
    seed: int = 0,
) -> SampleIndex:
    """The modality filter first, then the fraction of what remains (per source)."""
    try:
        view = index.select(modality_rows(index, modalities))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if len(view) == 0:
        raise ConfigError(
            f"no images of modality {modalities} in the data (have: {index.counts('modality')})"
        )
    return view.select(fraction_rows(view, fraction, seed))
