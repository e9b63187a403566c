"""The sample index: every image of every source, as columns, never as objects.

21M ``SampleRecord`` objects would take ~10 GB of Python heap and minutes to
unpickle. Here each column is one numpy array: uris are split into a directory
prefix (an id into a small table) and a leaf name (bytes in one blob with int64
offsets); source, modality and anatomy are small ints into string tables; labels
are int64 (``-1`` none, a class id, or a bitmask for multi-label sources). An index
of 21M entries is about 1 GB in memory and loads in seconds.

Files are ``.npz`` (uncompressed, no pickle) written atomically: temp file in the
same folder, fsync, rename; a crash never leaves a half-written index.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from array import array
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from biovfm_core.errors import ConfigError
from biovfm_core.files import chmod_as_open
from biovfm_core.protocols import MODALITIES, SampleRecord

FORMAT_VERSION = 1
_MOD_ID = {m: i for i, m in enumerate(MODALITIES)}


def _split_uri(uri: str) -> tuple[str, str]:
    # Cut at the last "/" of the path part, never inside a fragment ("f.npz#train/3").
    hash_at = uri.find("#")
    cut = uri.rfind("/", 0, hash_at if hash_at >= 0 else len(uri)) + 1
    return uri[:cut], uri[cut:]


class IndexBuilder:
    """Accumulates records in compact typed arrays (``array.array``), not lists."""

    def __init__(self) -> None:
        self._prefix_ids: dict[str, int] = {}
        self._source_ids: dict[str, int] = {}
        self._anatomy_ids: dict[str, int] = {}
        self.sources_meta: dict[str, dict[str, Any]] = {}
        self._prefix = array("i")
        self._source = array("h")
        self._modality = array("b")
        self._anatomy = array("h")
        self._label = array("q")
        self._name_end = array("q")
        self._names = bytearray()

    def add_source(self, name: str, **meta: Any) -> None:
        """Register a source and what is needed to reopen it (reader, path, options)."""
        self._source_id(name)
        self.sources_meta.setdefault(name, {}).update(meta)

    def _source_id(self, name: str) -> int:
        sid = self._source_ids.get(name)
        if sid is None:
            sid = self._source_ids[name] = len(self._source_ids)
            self.sources_meta.setdefault(name, {})
        return sid

    def add(self, record: SampleRecord) -> None:
        mid = _MOD_ID.get(record.modality)
        if mid is None:
            raise ConfigError(
                f"{record.uri}: record modality {record.modality!r} is not one modality id "
                f"({', '.join(MODALITIES)}); a reader resolves its source's modality tag "
                f"('auto' or a comma list) to one id per record"
            )
        prefix, name = _split_uri(record.uri)
        pid = self._prefix_ids.get(prefix)
        if pid is None:
            pid = self._prefix_ids[prefix] = len(self._prefix_ids)
        aid = self._anatomy_ids.get(record.anatomy)
        if aid is None:
            aid = self._anatomy_ids[record.anatomy] = len(self._anatomy_ids)
        sid = self._source_ids.get(record.source)
        if sid is None:
            sid = self._source_id(record.source)
        label = record.label
        if label is None:
            code = -1
        elif isinstance(label, tuple):
            if len(label) > 62:
                raise ValueError(f"{record.uri}: at most 62 labels per image, got {len(label)}")
            code = 0
            for bit, v in enumerate(label):
                if v:
                    code |= 1 << bit
            meta = self.sources_meta[record.source]
            meta["label_width"] = max(meta.get("label_width", 0), len(label))
        else:
            code = int(label)
        self._prefix.append(pid)
        self._source.append(sid)
        self._modality.append(mid)
        self._anatomy.append(aid)
        self._label.append(code)
        # surrogateescape: a file name that is not UTF-8 (os.fsdecode gave its bad bytes
        # as surrogates) is stored as its original bytes and comes back unchanged.
        self._names += name.encode("utf-8", "surrogateescape")
        self._name_end.append(len(self._names))

    def __len__(self) -> int:
        return len(self._source)

    def truncate(self, n: int) -> None:
        """Forget every record added after the first ``n``."""
        if n < len(self):
            del self._names[self._name_end[n - 1] if n else 0 :]
            for column in (
                self._prefix,
                self._source,
                self._modality,
                self._anatomy,
                self._label,
                self._name_end,
            ):
                del column[n:]

    def build(self) -> SampleIndex:
        def table(ids: Mapping[str, int]) -> list[str]:
            return sorted(ids, key=ids.__getitem__)

        ends = np.frombuffer(self._name_end, dtype=np.int64)
        return SampleIndex(
            prefix=np.frombuffer(self._prefix, dtype=np.int32).copy(),
            source=np.frombuffer(self._source, dtype=np.int16).copy(),
            modality=np.frombuffer(self._modality, dtype=np.int8).copy(),
            anatomy=np.frombuffer(self._anatomy, dtype=np.int16).copy(),
            label=np.frombuffer(self._label, dtype=np.int64).copy(),
            name_offsets=np.concatenate([np.zeros(1, np.int64), ends]),
            names=np.frombuffer(bytes(self._names), dtype=np.uint8),
            prefixes=table(self._prefix_ids),
            sources=table(self._source_ids),
            anatomies=table(self._anatomy_ids),
            sources_meta=self.sources_meta,
        )


class SampleIndex:
    """Columnar index. ``rows`` (optional) makes it a view: a subset sharing the columns."""

    def __init__(
        self,
        *,
        prefix: np.ndarray,
        source: np.ndarray,
        modality: np.ndarray,
        anatomy: np.ndarray,
        label: np.ndarray,
        name_offsets: np.ndarray,
        names: np.ndarray,
        prefixes: Sequence[str],
        sources: Sequence[str],
        anatomies: Sequence[str],
        sources_meta: Mapping[str, dict[str, Any]] | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        self._prefix = prefix
        self._source = source
        self._modality = modality
        self._anatomy = anatomy
        self._label = label
        self._name_offsets = name_offsets
        self._names = names
        self.prefixes = list(prefixes)
        self.sources = list(sources)
        self.anatomies = list(anatomies)
        self.sources_meta = {k: dict(v) for k, v in (sources_meta or {}).items()}
        self._rows = rows

    # ------------------------------------------------------------------ columns
    def _col(self, arr: np.ndarray) -> np.ndarray:
        return arr if self._rows is None else arr[self._rows]

    @property
    def source_ids(self) -> np.ndarray:
        return self._col(self._source)

    @property
    def modality_ids(self) -> np.ndarray:
        return self._col(self._modality)

    @property
    def anatomy_ids(self) -> np.ndarray:
        return self._col(self._anatomy)

    @property
    def labels(self) -> np.ndarray:
        return self._col(self._label)

    def __len__(self) -> int:
        return len(self._source) if self._rows is None else len(self._rows)

    def _row(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        i %= n
        return int(i if self._rows is None else self._rows[i])

    def base_row(self, i: int) -> int:
        """Row ``i`` of this view in the full index it was cut from."""
        return self._row(i)

    def base_rows(self) -> np.ndarray:
        """Every row of this view in the full index (ascending for subsets)."""
        return np.arange(len(self), dtype=np.int64) if self._rows is None else self._rows

    def uri(self, i: int) -> str:
        r = self._row(i)
        a, b = self._name_offsets[r], self._name_offsets[r + 1]
        return self.prefixes[self._prefix[r]] + self._names[a:b].tobytes().decode(
            "utf-8", "surrogateescape"
        )

    def record(self, i: int) -> SampleRecord:
        r = self._row(i)
        source = self.sources[self._source[r]]
        code = int(self._label[r])
        width = int(self.sources_meta.get(source, {}).get("label_width", 0))
        label: int | tuple[int, ...] | None
        label = tuple(code >> b & 1 for b in range(width)) if width else None if code < 0 else code
        a, b = self._name_offsets[r], self._name_offsets[r + 1]
        return SampleRecord(
            uri=self.prefixes[self._prefix[r]]
            + self._names[a:b].tobytes().decode("utf-8", "surrogateescape"),
            source=source,
            modality=MODALITIES[self._modality[r]],
            anatomy=self.anatomies[self._anatomy[r]],
            label=label,
        )

    def __getitem__(self, i: int) -> SampleRecord:
        return self.record(i)

    def __iter__(self) -> Iterator[SampleRecord]:
        for i in range(len(self)):
            yield self.record(i)

    def select(self, rows: np.ndarray) -> SampleIndex:
        """A view on the given positions (of this index or view)."""
        rows = np.asarray(rows, dtype=np.int64)
        base = rows if self._rows is None else self._rows[rows]
        view = SampleIndex.__new__(SampleIndex)
        view.__dict__.update(self.__dict__)
        view._rows = base
        return view

    # ------------------------------------------------------------------- counts
    def counts(self, by: str) -> dict[str, int]:
        """Images per ``source``, ``modality`` or ``anatomy``, largest first, zeros left out."""
        if by == "source":
            ids, names = self.source_ids, self.sources
        elif by == "modality":
            ids, names = self.modality_ids, list(MODALITIES)
        elif by == "anatomy":
            ids, names = self.anatomy_ids, self.anatomies
        else:
            raise ValueError(f"count by source, modality or anatomy, not {by!r}")
        n = np.bincount(ids.astype(np.int64), minlength=len(names))
        out = {names[i]: int(c) for i, c in enumerate(n) if c}
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def task_info(self) -> tuple[int | None, bool]:
        """``(num_classes, multilabel)`` of the labelled data, ``(None, False)`` if unlabelled."""
        labels = self.labels
        if len(labels) == 0 or (labels < 0).any():
            return None, False
        widths = {
            int(self.sources_meta.get(s, {}).get("label_width", 0))
            for s in (self.sources[i] for i in np.unique(self.source_ids))
        }
        if widths - {0}:
            return max(widths), True
        return int(labels.max()) + 1, False

    # ---------------------------------------------------------------- save/load
    def _materialised(self) -> dict[str, np.ndarray]:
        if self._rows is None:
            return {
                "prefix": self._prefix,
                "source": self._source,
                "modality": self._modality,
                "anatomy": self._anatomy,
                "label": self._label,
                "name_offsets": self._name_offsets,
                "names": self._names,
            }
        rows = self._rows
        starts = self._name_offsets[rows]
        lens = self._name_offsets[rows + 1] - starts
        offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lens)])
        names = np.empty(int(offsets[-1]), np.uint8)
        # Gather names a chunk at a time: one flat position array for 21M names
        # would need several GB.
        step = 1 << 20
        for lo in range(0, len(rows), step):
            hi = min(lo + step, len(rows))
            ln = lens[lo:hi]
            pos = np.repeat(starts[lo:hi] - offsets[lo:hi], ln) + np.arange(
                offsets[lo], offsets[hi]
            )
            names[offsets[lo] : offsets[hi]] = self._names[pos]
        return {
            "prefix": self._prefix[rows],
            "source": self._source[rows],
            "modality": self._modality[rows],
            "anatomy": self._anatomy[rows],
            "label": self._label[rows],
            "name_offsets": offsets,
            "names": names,
        }

    def save(self, path: str | os.PathLike[str]) -> str:
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        meta = {
            "format": "biovfm-index",
            "version": FORMAT_VERSION,
            "modalities": list(MODALITIES),
            "prefixes": self.prefixes,
            "sources": self.sources,
            "anatomies": self.anatomies,
            "sources_meta": self.sources_meta,
        }
        arrays = self._materialised()
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".npz.tmp", dir=folder)
        try:
            chmod_as_open(fd)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SampleIndex:
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode("utf-8"))
                cols = {
                    k: z[k]
                    for k in (
                        "prefix",
                        "source",
                        "modality",
                        "anatomy",
                        "label",
                        "name_offsets",
                        "names",
                    )
                }
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            # A truncated .npz is a zip without its directory (BadZipFile) or with a cut
            # member (EOFError, zlib.error).
            raise ConfigError(f"{path}: not a biovfm index ({exc})") from exc
        if meta.get("format") != "biovfm-index" or meta.get("version") != FORMAT_VERSION:
            raise ConfigError(
                f"{path}: unsupported index format {meta.get('format')} v{meta.get('version')}"
            )
        # Ids are positions, and new modalities are only ever appended: an index from
        # an older list still reads right.
        if meta["modalities"] != list(MODALITIES)[: len(meta["modalities"])]:
            raise ConfigError(f"{path}: index was built with another modality list; rescan it")
        return cls(
            **cols,
            prefixes=meta["prefixes"],
            sources=meta["sources"],
            anatomies=meta["anatomies"],
            sources_meta=meta["sources_meta"],
        )

    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for a in (
                self._prefix,
                self._source,
                self._modality,
                self._anatomy,
                self._label,
                self._name_offsets,
                self._names,
            )
        )


def build_index(records: Iterator[SampleRecord] | Sequence[SampleRecord]) -> SampleIndex:
    builder = IndexBuilder()
    for r in records:
        builder.add(r)
    return builder.build()


def concat_indexes(indexes: Sequence[SampleIndex]) -> SampleIndex:
    """One index of several, rows in order (the first's, then the second's, ...).

    String tables are merged and ids remapped. Two indexes naming the same source are
    refused by the caller, which knows where they came from; here their metadata would
    merge silently.
    """
    if len(indexes) == 1:
        return indexes[0]
    prefixes: dict[str, int] = {}
    sources: dict[str, int] = {}
    anatomies: dict[str, int] = {}
    meta: dict[str, dict[str, Any]] = {}
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("prefix", "source", "anatomy")}
    fixed: dict[str, list[np.ndarray]] = {k: [] for k in ("modality", "label", "names")}
    ends: list[np.ndarray] = []
    names_so_far = 0

    def ids(table: list[str], into: dict[str, int]) -> np.ndarray:
        return np.array([into.setdefault(name, len(into)) for name in table], dtype=np.int64)

    for index in indexes:
        cols = index._materialised()
        parts["prefix"].append(ids(index.prefixes, prefixes)[cols["prefix"]].astype(np.int32))
        parts["source"].append(ids(index.sources, sources)[cols["source"]].astype(np.int16))
        parts["anatomy"].append(ids(index.anatomies, anatomies)[cols["anatomy"]].astype(np.int16))
        fixed["modality"].append(cols["modality"])
        fixed["label"].append(cols["label"])
        fixed["names"].append(cols["names"])
        ends.append(cols["name_offsets"][1:] + names_so_far)
        names_so_far += int(cols["name_offsets"][-1])
        meta.update(index.sources_meta)

    def table(into: dict[str, int]) -> list[str]:
        return sorted(into, key=into.__getitem__)

    return SampleIndex(
        prefix=np.concatenate(parts["prefix"]),
        source=np.concatenate(parts["source"]),
        modality=np.concatenate(fixed["modality"]),
        anatomy=np.concatenate(parts["anatomy"]),
        label=np.concatenate(fixed["label"]),
        name_offsets=np.concatenate([np.zeros(1, np.int64), *ends]),
        names=np.concatenate(fixed["names"]),
        prefixes=table(prefixes),
        sources=table(sources),
        anatomies=table(anatomies),
        sources_meta=meta,
    )
