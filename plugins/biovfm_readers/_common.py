"""Helpers every reader shares: file walking, uri fragments, size limits."""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import MODALITIES, SourceTags, normalise_modality

# Sidecar files that dataset downloads carry next to their images; they are not
# images, and listing them as problems would drown the real ones.
SIDECAR_EXTENSIONS = frozenset(
    {
        ".txt",
        ".csv",
        ".tsv",
        ".json",
        ".md",
        ".xml",
        ".yaml",
        ".yml",
        ".pdf",
        ".html",
        ".xlsx",
        ".xls",
        ".py",
        ".ipynb",
        ".log",
        ".db",
        ".ds_store",
        ".sh",
        ".rst",
        ".mat",
    }
)


def join_uri(path: str, **fragment: object) -> str:
    return f"{path}#{urlencode({k: str(v) for k, v in fragment.items()})}" if fragment else path


def split_uri(uri: str) -> tuple[str, dict[str, str]]:
    path, sep, frag = uri.partition("#")
    return path, (dict(parse_qsl(frag)) if sep else {})


def walk_files(root: str, follow_links: bool = True) -> Iterator[str]:
    """Every file under ``root`` in a stable order (so two scans index alike)."""
    if os.path.isfile(root):
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield os.path.join(dirpath, name)


def require_location(location: str, kind: str) -> str:
    if not location or not os.path.exists(location):
        raise ConfigError(f"{kind} reader: path {location!r} does not exist")
    return location


def allowed_modalities(tags: SourceTags) -> tuple[str, ...]:
    """The modality ids a source may hold.

    A catalog writes one id (``ct``), a comma list for mixed sources (``ct,mr,us``),
    or ``auto`` when a reader must infer it (from DICOM headers, a MedMNIST flag or
    folder names)."""
    tag = tags.modality.strip().lower()
    if tag in ("", "auto"):
        return MODALITIES
    return tuple(normalise_modality(t) for t in tag.split(",") if t.strip())


def modality_from_path(path: str, allowed: tuple[str, ...]) -> str | None:
    """The first path component (from the leaf up) that names an allowed modality."""
    for part in reversed(path.replace("\\", "/").split("/")):
        try:
            m = normalise_modality(part)
        except ValueError:
            continue
        if m in allowed:
            return m
    return None


def unknown_modality_error(kind: str, location: str) -> ConfigError:
    return ConfigError(
        f"{kind}:{location}: cannot tell the modality of its images; give it, e.g. "
        f"'{kind}:{location}?modality=xray', or list the source in a catalog"
    )
