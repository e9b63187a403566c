"""Opening a shard folder for training: its index at once, its pixels one row at a time.

``open_shards`` reads only the manifest, ``biovfm-index.npz`` and litdata's
``index.json`` (how many items each chunk holds), never a chunk, so a 21M-image set
opens in seconds. The index it returns says, for every source, reader ``shards`` at
this folder: the training dataset reopens the shards, not the original files, and
the original reader, path and options stay under ``packed_from``.

``ShardReader`` is the ``shards`` dataset reader. Training reads by row
(``load_row``: row ``i`` of the index is litdata item ``i``); ``scan`` lists the
packed images from the index, so ``biovfm data scan --data shards:X`` reports them.

Every item carries its original uri, and a read by row checks it against the uri
its index row names (one string comparison): an item that is not its row's image
(a set whose chunks and index came from two packs) is refused, never trained on.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from biovfm_core.data.catalog import is_url
from biovfm_core.errors import BadImageError, ConfigError
from biovfm_core.protocols import SampleRecord, SourceTags

from .format import INDEX, LITDATA_INDEX, MANIFEST, Manifest, decode, from_stored, read_manifest

# sources_meta key saying that row i of this index is litdata item i of the folder,
# so the dataset may read by row; an index built by scanning shards lacks it.
ROWS_KEY = "shard_rows"
# ... and the row of the run's index where that folder's item 0 sits (several sets).
OFFSET_KEY = "shard_row_offset"

# Folders whose items carry no uri, already reported by this process.
_UNCHECKED: set[str] = set()


def load_index(folder: str, local: str) -> Any:
    """The set's ``biovfm-index.npz``, or a ``ConfigError`` saying how to get it back."""
    from biovfm_core.data.index import SampleIndex

    try:
        return SampleIndex.load(os.path.join(local, INDEX))
    except ConfigError as exc:
        raise ConfigError(
            f"shards:{folder}: {exc}; the index is truncated or damaged, so its rows cannot "
            "be matched to the chunks: restore the folder from a copy, or repack it (the "
            "same `biovfm data pack` command with --overwrite)"
        ) from exc


def stored_uri(uri: str) -> str:
    """``uri`` as an item stores it (a name that is not UTF-8 with backslash escapes)."""
    return uri.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class ShardSet:
    """A complete shard folder, opened: its manifest, index and chunk layout."""

    folder: str
    manifest: Manifest
    index: Any  # SampleIndex whose row i is litdata item i
    chunk_sizes: np.ndarray  # items per chunk, in litdata's item order


def cache_folder(url: str) -> str:
    """Where a remote set's manifest and indexes (and, under ``chunks/``, the chunks
    litdata downloads) are kept: ``$BIOVFM_CACHE/shards/<hash of the URL>``."""
    import hashlib

    base = os.environ.get("BIOVFM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "biovfm"
    )
    return os.path.join(base, "shards", hashlib.sha1(url.encode()).hexdigest()[:16])


def metadata_folder(location: str, *, refresh: bool = False) -> str:
    """A local folder holding the set's manifest and indexes: the folder itself, or
    for a URL a cached copy of those three small files (never of the chunks, which
    litdata streams). ``refresh`` downloads them again (a repacked set)."""
    if not is_url(location):
        return location
    from litdata.streaming.downloader import get_downloader

    local = cache_folder(location)
    names = (MANIFEST, INDEX, LITDATA_INDEX)
    if not refresh and all(os.path.exists(os.path.join(local, n)) for n in names):
        return local
    # Each process downloads into its own folder and renames file by file, so ranks
    # sharing a node never see a half-written file.
    tmp = os.path.join(local, f".download-{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    downloader = get_downloader(location, tmp, [])
    try:
        for name in names:
            target = os.path.join(tmp, name)
            if os.path.exists(target):
                os.unlink(target)
            try:
                downloader.download_file(f"{location.rstrip('/')}/{name}", target)
            except Exception as exc:
                if name == MANIFEST:
                    raise ConfigError(
                        f"shards:{location}: cannot read its {MANIFEST} ({type(exc).__name__}: "
                        f"{exc}); not a complete biovfm shard set, or not reachable"
                    ) from exc
                raise ConfigError(
                    f"shards:{location}: cannot read {name}: {type(exc).__name__}: {exc}"
                ) from exc
        for name in names:
            os.replace(os.path.join(tmp, name), os.path.join(local, name))
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return local


def chunk_sizes(folder: str) -> np.ndarray:
    """Items per chunk, from litdata's ``index.json`` (chunk ``c`` holds the items
    after those of chunks ``0..c-1``)."""
    path = os.path.join(folder, LITDATA_INDEX)
    try:
        with open(path, encoding="utf-8") as f:
            chunks = json.load(f)["chunks"]
        return np.array([int(c["chunk_size"]) for c in chunks], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable litdata index ({exc})") from exc


def open_shards(folder: str) -> ShardSet:
    """The shard set at ``folder``, or a ``ConfigError`` naming what is wrong with it."""
    folder = folder if is_url(folder) else os.path.abspath(os.path.expanduser(folder))
    local = metadata_folder(folder, refresh=True)
    manifest = read_manifest(local)
    index = load_index(folder, local)
    sizes = chunk_sizes(local)
    if not len(index) == manifest.images == int(sizes.sum()):
        raise ConfigError(
            f"shards:{folder}: the manifest says {manifest.images} images, {INDEX} holds "
            f"{len(index)} and the chunks {int(sizes.sum())}; the folder is damaged, repack it"
        )
    meta: dict[str, dict[str, Any]] = {}
    for name, original in index.sources_meta.items():
        kept = {k: original[k] for k in ("label_width", "classes") if k in original}
        meta[name] = {
            "reader": "shards",
            "path": folder,
            "options": {},
            "anatomy": original.get("anatomy", "unknown"),
            **kept,
            ROWS_KEY: True,
            OFFSET_KEY: 0,
            "packed_from": original,
        }
    index.sources_meta = meta
    return ShardSet(folder=folder, manifest=manifest, index=index, chunk_sizes=sizes)


def open_shard_sets(locations: Sequence[str]) -> tuple[Any, list[ShardSet]]:
    """Several shard sets as one index (the first set's rows, then the second's, ...);
    each source records the row its set starts at. Sources are named once across the
    sets: the same name twice (or one set given twice) is refused."""
    from biovfm_core.data.index import concat_indexes

    sets = [open_shards(location) for location in locations]
    where: dict[str, str] = {}
    offset = 0
    for s in sets:
        for name in s.index.sources:
            if name in where:
                raise ConfigError(
                    f"source {name!r} is in shards:{where[name]} and in shards:{s.folder}; "
                    "a run reads each source once (pack a source into one set only)"
                )
            where[name] = s.folder
        for meta in s.index.sources_meta.values():
            meta[OFFSET_KEY] = offset
        offset += len(s.index)
    return concat_indexes([s.index for s in sets]), sets


def shard_layout(index: Any) -> list[tuple[str, int]] | None:
    """``(folder, first row)`` of each shard set the rows of ``index`` come from, in
    row order; ``None`` unless every source of ``index`` is read by row from shards."""
    metas = [index.sources_meta.get(s, {}) for s in index.sources]
    if not metas or not all(m.get(ROWS_KEY) for m in metas):
        return None
    return sorted({(m["path"], int(m.get(OFFSET_KEY, 0))) for m in metas}, key=lambda x: x[1])


class ShardReader:
    """Images packed by ``biovfm data pack`` (a folder holding ``biovfm-shards.json``).

    The location is a folder, or a URL litdata streams from (``s3://``, ``gs://``,
    ``azure://``, ``hf://``, ``r2://``): chunks then come on demand into litdata's
    cache, the manifest and indexes into ``$BIOVFM_CACHE/shards``. No options: what
    was decoded, resized and how is fixed at pack time (the manifest's ``options``
    records it). Images come back at their packed depth
    (uint8, uint16, or float32 where the packer rescaled), and the modality recipe
    windows them as it does the original files.
    """

    def __init__(self, location: str, tags: SourceTags | None = None) -> None:
        self._url = is_url(location)
        self.folder = location if self._url else os.path.abspath(os.path.expanduser(location))
        self.tags = tags
        self.manifest = read_manifest(metadata_folder(self.folder))
        self._dataset: Any = None
        self._pid: int | None = None
        self._rows_by_uri: dict[str, int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Each loader worker opens its own litdata dataset (file handles do not fork well).
        state = self.__dict__.copy()
        state["_dataset"], state["_pid"], state["_rows_by_uri"] = None, None, None
        return state

    def _items(self) -> Any:
        if self._dataset is None or self._pid != os.getpid():
            from litdata import StreamingDataset

            cache = os.path.join(cache_folder(self.folder), "chunks") if self._url else None
            # batch_decode off: ShardOrder reads a chunk's items shuffled, and litdata's
            # window decoding re-decoded a window per out-of-order read (raw 512² uint16
            # items: 2.5 ms each shuffled against 0.23 ms without it, measured).
            self._dataset = StreamingDataset(self.folder, cache_dir=cache, batch_decode=False)
            self._pid = os.getpid()
        return self._dataset

    def load_row(self, row: int, uri: str | None = None) -> np.ndarray:
        """Litdata item ``row`` as the original reader gave it (values, not stored codes);
        with ``uri`` (what the index row names), an item holding another image is refused."""
        where = f"{self.folder} item {row}"
        try:
            item = self._items()[int(row)]
        except (IndexError, KeyError) as exc:
            raise BadImageError(where, f"no such item in the shards ({exc})") from exc
        except Exception as exc:  # a truncated or corrupt chunk: skip the image, name it
            reason = f"shard item unreadable: {type(exc).__name__}: {exc}"
            raise BadImageError(where, reason) from exc
        if not isinstance(item, dict) or "image" not in item:
            raise BadImageError(where, "shard item has no image")
        if uri is not None:
            self._check_uri(item.get("uri"), uri, row)
        where = str(item.get("uri") or where)
        try:
            stored = decode(item["image"], self.manifest.encoding, where)
            return from_stored(
                stored, float(item.get("scale", 1.0)), float(item.get("offset", 0.0))
            )
        except BadImageError:
            raise
        except (TypeError, ValueError) as exc:
            raise BadImageError(where, f"shard item does not decode: {exc}") from exc

    def _check_uri(self, held: Any, uri: str, row: int) -> None:
        # The plain comparison decides for every UTF-8 name; only a mismatch pays for
        # the escaped form a non-UTF-8 name is stored in.
        if held == uri or (isinstance(held, str) and held == stored_uri(uri)):
            return
        if held is None:
            if self.folder not in _UNCHECKED:
                _UNCHECKED.add(self.folder)
                print(
                    f"warning: shards:{self.folder}: its items carry no uri, so they are read "
                    "without checking each is the image its index row names; repack the set "
                    "with `biovfm data pack` to have them checked",
                    file=sys.stderr,
                )
            return
        raise BadImageError(
            uri,
            f"shards:{self.folder} row {row} holds {held}, not this image: the set's chunks "
            "and biovfm-index.npz disagree (written by two packs at once, or files replaced); "
            "not trained on. Repack the set (`biovfm data pack` with --overwrite)",
        )

    def _index(self) -> Any:
        return load_index(self.folder, metadata_folder(self.folder))

    def scan(self) -> Iterator[SampleRecord]:
        """The packed images, with their original uris, sources, modalities and labels."""
        yield from self._index()

    @property
    def sources_meta(self) -> dict[str, dict[str, Any]]:
        """What an index built by scanning needs to reopen each packed source here."""
        return {
            name: {k: v for k, v in meta.items() if k not in (ROWS_KEY, OFFSET_KEY)}
            for name, meta in open_shards(self.folder).index.sources_meta.items()
        }

    def load(self, record: SampleRecord) -> np.ndarray:
        """The image of ``record``, found by its original uri (a uri table is built on
        first use; training reads by row and never needs it)."""
        if self._rows_by_uri is None:
            index = self._index()
            self._rows_by_uri = {index.uri(i): i for i in range(len(index))}
        row = self._rows_by_uri.get(record.uri)
        if row is None:
            raise BadImageError(record.uri, f"not among the images packed in {self.folder}")
        return self.load_row(row, record.uri)
