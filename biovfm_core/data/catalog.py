"""Dataset catalogs and ``--data`` specs.

A catalog is a YAML file::

    root: /data/biovfm21m          # relative source paths resolve against it
    missing: report                # or "fail" (default): what a missing path does
    sources:
      - name: ChestXray-14
        reader: folder              # any registered dataset reader
        path: ChestXray-14/images
        modality: xray              # an id, a list/comma list for mixed sources, or auto
        anatomy: chest
        expected_count: 86524
        url: https://nihcc.app.box.com/v/ChestXray-NIHCC
        options: {verify: false}    # keyword options of the reader

``--data`` takes such a file, the name of a shipped catalog (``biovfm21m``), or one
source ``KIND:PATH`` with optional tags and options after ``?``:
``folder:/data/cxr?modality=xray&anatomy=chest&labels_from_subfolders=true``.
Problems in a catalog (unknown reader or modality, a missing path) fail at once with
the file and line of the entry.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import MODALITIES, SourceTags, normalise_modality

# Query keys of a KIND:PATH spec that are tags, not reader options.
_TAG_KEYS = {"modality", "anatomy", "name", "expected_count"}
_ENTRY_KEYS = {
    "name",
    "reader",
    "path",
    "modality",
    "anatomy",
    "expected_count",
    "url",
    "options",
    "optional",
    "notes",
}
SHIPPED_CATALOGS = ("biovfm21m",)


def is_url(location: str) -> bool:
    """An object-store location (``s3://bucket/x``; litdata's ``local:/x`` streams a
    folder through its cache the same way), kept as written, never made a local
    path; only readers that stream (``shards``) accept one."""
    scheme, sep, _ = location.partition("://")
    return location.startswith("local:") or (
        bool(sep) and scheme.replace("+", "").replace("-", "").isalnum()
    )


@dataclass(frozen=True)
class SourceSpec:
    """One source to scan: which reader, where, and its tags."""

    name: str
    reader: str
    path: str
    modality: str = "auto"
    anatomy: str = "unknown"
    expected_count: int | None = None
    url: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    where: str = ""  # "catalog.yaml:12" or "--data folder:/x", for messages
    optional: bool = False

    @property
    def tags(self) -> SourceTags:
        return SourceTags(source=self.name, modality=self.modality, anatomy=self.anatomy)

    @property
    def exists(self) -> bool:
        return self.reader == "demo" or is_url(self.path) or os.path.exists(self.path)

    def build_reader(self) -> Any:
        """The reader, built through the plugin registry (options validated there)."""
        from biovfm_core.registry import get_registry

        try:
            return get_registry().build(
                "datasets", self.reader, self.path, self.tags, options=dict(self.options)
            )
        except ConfigError as exc:
            raise ConfigError(f"{self.where}: {exc}") from exc


@dataclass
class Catalog:
    path: str
    root: str
    sources: list[SourceSpec]
    missing: str = "fail"


def _modality_tag(value: Any, where: str) -> str:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return "auto"
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        ids = [normalise_modality(str(v)) for v in items if str(v).strip()]
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return ",".join(dict.fromkeys(ids))


def _known_readers() -> list[str]:
    from biovfm_core.registry import get_registry

    return get_registry().names("datasets")


def _check_reader(reader: str, where: str, known: Iterable[str]) -> None:
    known = list(known)
    if reader not in known:
        from biovfm_core.registry import get_registry

        raise ConfigError(
            f"{where}: unknown reader {reader!r}; registered readers: {', '.join(known) or '(none)'}"
            + get_registry().load_failure_note()
        )


def shipped_catalog_path(name: str) -> str:
    return str(resources.files("biovfm_core.data").joinpath("catalogs", f"{name}.yaml"))


def load_catalog(path: str, *, root: str | None = None, check_paths: bool = True) -> Catalog:
    """Parse and validate a catalog; ``root`` overrides the file's ``root:``."""
    import yaml

    if path in SHIPPED_CATALOGS:
        path = shipped_catalog_path(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read catalog {path}: {exc}") from exc
    try:
        node = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("sources"), list):
        raise ConfigError(f"{path}: a catalog needs a 'sources:' list")
    # Line numbers of each entry, so every message can point at the line to fix.
    lines: list[int] = []
    for key, value in node.value:  # type: ignore[union-attr]
        if key.value == "sources":
            lines = [item.start_mark.line + 1 for item in value.value]
    base = os.path.dirname(os.path.abspath(path))
    cat_root = root if root is not None else doc.get("root")
    cat_root = os.path.expanduser(os.path.expandvars(str(cat_root))) if cat_root else base
    if not os.path.isabs(cat_root):
        cat_root = os.path.join(base, cat_root)
    missing = str(doc.get("missing", "fail"))
    if missing not in ("fail", "report"):
        raise ConfigError(f"{path}: 'missing' must be 'fail' or 'report', not {missing!r}")
    # A "missing: report" catalog with no root yet is the start of a download: every
    # source is reported missing (with its download page) instead of failing here.
    if check_paths and missing == "fail" and not os.path.isdir(cat_root):
        raise ConfigError(
            f"{path}: root folder {cat_root!r} does not exist (set 'root:' in the catalog or pass --root)"
        )
    known = _known_readers()
    sources: list[SourceSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc["sources"]):
        where = f"{path}:{lines[i] if i < len(lines) else '?'}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: a source entry must be a mapping")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ConfigError(
                f"{where}: unknown keys {sorted(unknown)}; valid: {sorted(_ENTRY_KEYS)}"
            )
        for req in ("name", "reader", "path"):
            if not entry.get(req):
                raise ConfigError(f"{where}: source entry without {req!r}")
        name = str(entry["name"])
        if name in seen:
            raise ConfigError(f"{where}: source name {name!r} appears twice")
        seen.add(name)
        reader = str(entry["reader"])
        _check_reader(reader, where, known)
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{where}: 'options' must be a mapping")
        src_path = os.path.expanduser(str(entry["path"]))
        if not os.path.isabs(src_path):
            src_path = os.path.join(cat_root, src_path)
        expected = entry.get("expected_count")
        spec = SourceSpec(
            name=name,
            reader=reader,
            path=src_path,
            modality=_modality_tag(entry.get("modality"), f"{where} ({name})"),
            anatomy=str(entry.get("anatomy") or "unknown"),
            expected_count=int(expected) if expected is not None else None,
            url=str(entry.get("url") or ""),
            options=options,
            where=where,
            optional=bool(entry.get("optional", False)),
        )
        if check_paths and missing == "fail" and not spec.optional and not spec.exists:
            raise ConfigError(f"{where}: source {name!r}: path {src_path!r} does not exist")
        sources.append(spec)
    return Catalog(path=path, root=cat_root, sources=sources, missing=missing)


def split_query(location: str) -> tuple[str, str]:
    """``PATH?a=1&b=2`` → ``("PATH", "a=1&b=2")``; a ``?`` not followed by ``key=value``
    pairs is part of the path."""
    head, sep, tail = location.rpartition("?")
    if sep and "=" in tail:
        return head, tail
    return location, ""


def parse_kind_path(spec: str, *, check_paths: bool = True) -> SourceSpec:
    """``KIND:PATH[?key=value&...]`` → one source (``check_paths=False``: a missing
    path is left for the scan to report, as ``--dry-run`` needs)."""
    where = f"--data {spec}"
    kind, sep, rest = spec.partition(":")
    if kind == "demo" and not sep:
        rest = ""
    elif not sep or not kind or (len(kind) == 1 and os.name == "nt"):
        raise ConfigError(f"{where}: expected a catalog YAML or KIND:PATH (e.g. folder:/data/cxr)")
    path, query = split_query(rest)
    params = dict(parse_qsl(query, keep_blank_values=True))
    _check_reader(kind, where, _known_readers())
    if path and not is_url(path):
        path = os.path.abspath(os.path.expanduser(path))
    if check_paths and kind != "demo" and not (is_url(path) or os.path.exists(path)):
        raise ConfigError(f"{where}: path {path!r} does not exist")
    options: dict[str, Any] = {k: v for k, v in params.items() if k not in _TAG_KEYS}
    name = params.get("name") or (
        kind if kind == "demo" else os.path.basename(path.rstrip("/")) or kind
    )
    expected = params.get("expected_count")
    return SourceSpec(
        name=name,
        reader=kind,
        path=path,
        modality=_modality_tag(params.get("modality"), where),
        anatomy=params.get("anatomy", "unknown"),
        expected_count=int(expected) if expected else None,
        options=options,
        where=where,
    )


def is_catalog_spec(spec: str) -> bool:
    return spec in SHIPPED_CATALOGS or spec.lower().endswith((".yaml", ".yml"))


def resolve_data(
    specs: Iterable[str],
    *,
    root: str | None = None,
    check_paths: bool = True,
    options: Mapping[str, Any] | None = None,
) -> tuple[list[SourceSpec], list[Catalog]]:
    """All sources named by ``--data`` values; none given means the demo dataset.

    ``options`` (``--opt dataset.KEY=VALUE``, ``options.dataset`` in a run config)
    go to every source's reader; a source's own ``?key=value`` or catalog
    ``options:`` win. A reader that lacks such an option is an error naming it when
    the reader is built (never silently ignored).
    """
    specs = list(specs)
    sources: list[SourceSpec] = []
    catalogs: list[Catalog] = []
    if not specs:
        specs = ["demo"]
    for spec in specs:
        if is_catalog_spec(spec):
            cat = load_catalog(spec, root=root, check_paths=check_paths)
            catalogs.append(cat)
            sources.extend(cat.sources)
        else:
            sources.append(parse_kind_path(spec, check_paths=check_paths))
    if options:
        from dataclasses import replace

        sources = [replace(s, options={**options, **s.options}) for s in sources]
    names: dict[str, str] = {}
    for s in sources:
        if s.name in names:
            raise ConfigError(f"{s.where}: source name {s.name!r} already used by {names[s.name]}")
        names[s.name] = s.where
    return sources, catalogs


__all__ = [
    "MODALITIES",
    "Catalog",
    "SourceSpec",
    "load_catalog",
    "parse_kind_path",
    "resolve_data",
    "shipped_catalog_path",
]
