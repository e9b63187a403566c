"""``check_reader``: scan, the modality contract, load, pickling, and ``BadImageError``
on a broken file."""

from __future__ import annotations

import pickle
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from biovfm_core.errors import BadImageError
from biovfm_core.protocols import (
    IMAGE_SHAPES,
    MODALITIES,
    SampleRecord,
    ScanProblem,
    SourceTags,
    image_contract_error,
)
from biovfm_core.testing._plugin import _Plugin
from biovfm_core.testing.errors import ConformanceError, _fail
from biovfm_core.testing.options import check_options


def check_reader(
    name_or_factory: str | Callable[..., Any],
    location: str | Path,
    *,
    options: Mapping[str, Any] | None = None,
    preset: Mapping[str, Any] | None = None,
    modality: str = "auto",
    broken: str | Path | Callable[[Path], Path] | None = None,
    registry: Any = None,
) -> None:
    """Check a reader on real files at ``location``: scan, modality contract, load,
    pickling, and ``BadImageError`` on a broken file.

    ``broken``: a broken file of the reader's format, or a function writing one into
    the folder it gets. By default the kit truncates a copy of the first image's file.
    """
    import numpy as np

    plugin = _Plugin("dataset", name_or_factory, preset=preset, options=options, registry=registry)
    check_options(plugin)
    what = plugin.what
    tags = SourceTags(source="kit", modality=modality)
    reader = plugin.build(str(location), tags)
    for method in ("scan", "load"):
        if not callable(getattr(reader, method, None)):
            raise _fail(what, f"it has no {method}()", "follow protocols.DatasetReader")
    try:
        reader = pickle.loads(pickle.dumps(reader))
    except Exception as exc:
        raise _fail(
            what,
            f"the reader does not pickle ({type(exc).__name__}: {exc}); loader workers get it "
            "pickled",
            "keep open files/handles out of the pickled state (__getstate__), reopen lazily",
        ) from None
    items = list(reader.scan())
    records = [r for r in items if isinstance(r, SampleRecord)]
    strays = [r for r in items if not isinstance(r, SampleRecord | ScanProblem)]
    if strays:
        raise _fail(
            what,
            f"scan() yielded {type(strays[0]).__name__}",
            "yield only SampleRecord or ScanProblem",
        )
    if not records:
        problems = "; ".join(f"{p.path}: {p.reason}" for p in items[:3])
        raise _fail(
            what,
            f"scan() of {location} found no image{' (' + problems + ')' if problems else ''}",
            "pass a location with images of the reader's format, or fix scan()",
        )
    allowed = MODALITIES if modality == "auto" else tuple(modality.split(","))
    for record in records:
        if record.modality not in allowed:
            raise _fail(
                what,
                f"record {record.uri} carries modality {record.modality!r} for "
                f"tags.modality={modality!r}",
                f"give each record exactly one id of {', '.join(allowed)} "
                "('other' when it cannot be told); tags.modality is a constraint, not a value",
            )
        if record.source != tags.source:
            raise _fail(
                what,
                f"record {record.uri} has source {record.source!r}, not {tags.source!r}",
                "copy tags.source into every record",
            )
    if [r for r in reader.scan() if isinstance(r, SampleRecord)] != records:
        raise _fail(what, "two scans gave different records", "make scan() deterministic")
    for record in records[:2]:
        image = reader.load(record)
        problem = image_contract_error(image)
        if problem:
            raise _fail(
                what,
                f"load({record.uri}) {problem}; training stops on such an image",
                f"return a numeric numpy array of {IMAGE_SHAPES} (gray or RGB, channels "
                "last), as protocols.DatasetReader says",
            )
        if not np.array_equal(image, reader.load(record)):
            raise _fail(what, f"loading {record.uri} twice differs", "make load() deterministic")
    _check_broken(reader, records[0], broken, what)


def _check_broken(reader: Any, record: SampleRecord, broken: Any, what: str) -> None:
    path, sep, fragment = record.uri.partition("#")
    with tempfile.TemporaryDirectory(prefix="biovfm-kit-") as folder:
        folder_path = Path(folder)
        if broken is None:
            source = Path(path)
            if not source.is_file():
                raise ConformanceError(
                    f"{what}: cannot make a broken file from {record.uri}, which is not a file; "
                    "pass broken= (a broken file of your format, or a function writing one)"
                )
            target = folder_path / source.name
            shutil.copyfile(source, target)
            data = target.read_bytes()
            target.write_bytes(data[: max(1, len(data) // 3)])
        elif callable(broken):
            target = Path(broken(folder_path))
        else:
            target = Path(broken)
        uri = str(target) + (sep + fragment if sep else "")
        bad = SampleRecord(uri, record.source, record.modality, record.anatomy, record.label)
        try:
            reader.load(bad)
        except BadImageError:
            return
        except Exception as exc:
            raise _fail(
                what,
                f"load() of a broken file ({target.name}) raised {type(exc).__name__}: {exc}",
                "catch the decoder's errors and raise biovfm_core.errors.BadImageError(path, "
                "reason) so training skips and reports the image",
            ) from None
        raise _fail(
            what,
            f"load() of a broken file ({target.name}) returned an image",
            "verify the file decodes completely and raise BadImageError(path, reason) if not",
        )
