"""Helpers every reader shares: file walking, uri fragments, size limits."""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode

from biovfm_core.errors import ConfigError
from biovfm_core.protocols import MODALITIES, ScanProblem, SourceTags, normalise_modality

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


def walk_files(root: str) -> Iterator[str | ScanProblem]:
    """Every file under ``root`` once, in a stable order (so two scans index alike).

    Symlinked folders are followed, but each real folder is entered once: a link back
    up the tree (``sub/up -> ..``) would otherwise index the same images again and
    again, and two such links make the walk never end. A symlinked file whose target
    lies in a folder this walk entered is the same image and is left out; other
    symlinked files are yielded after the walk (hard links are not detected). Broken
    links and folders that cannot be listed come back as ``ScanProblem``.

    File names that are not valid UTF-8 come back as ``os.fsdecode`` gives them
    (undecodable bytes as surrogates); the index stores them losslessly.
    """
    if os.path.isfile(root):
        yield root
        return
    try:
        seen_dirs = {_file_key(os.stat(root))}
    except OSError as exc:
        yield ScanProblem(root, f"cannot open folder: {exc.strerror or exc}")
        return
    stack = [root]
    linked: list[str] = []
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(
                    (e for e in it if not e.name.startswith(".")), key=lambda e: e.name
                )
        except OSError as exc:
            yield ScanProblem(folder, f"cannot list folder: {exc.strerror or exc}")
            continue
        # Real sub-folders claim their identity before linked ones, so a folder and a
        # link to it side by side are indexed under the real name.
        entries.sort(key=lambda e: e.is_symlink())
        subdirs = []
        for entry in entries:
            try:
                if entry.is_dir():  # follows links
                    key = _file_key(entry.stat())
                    if key not in seen_dirs:
                        seen_dirs.add(key)
                        subdirs.append(entry.path)
                    continue
                if entry.is_symlink():
                    entry.stat()  # a broken link raises here
                    linked.append(entry.path)
                    continue
            except OSError as exc:
                reason = "broken symbolic link" if entry.is_symlink() else exc.strerror
                yield ScanProblem(entry.path, f"cannot open: {reason or exc}")
                continue
            yield entry.path
        stack.extend(sorted(subdirs, reverse=True))  # depth first, in name order
    done: set[tuple[int, int]] = set()
    for path in linked:
        try:
            target = os.path.realpath(path)
            key = _file_key(os.stat(target))
            parent = _file_key(os.stat(os.path.dirname(target)))
        except OSError as exc:
            yield ScanProblem(path, f"cannot open: {exc.strerror or exc}")
            continue
        walked = parent in seen_dirs and not os.path.basename(target).startswith(".")
        if not walked and key not in done:
            done.add(key)
            yield path


def _file_key(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


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
        if m in allowed and m != UNNAMED:  # a folder called "other" names nothing
            return m
    return None


UNNAMED = "other"


class ModalityGuess:
    """Per-file modality of a reader whose source may be tagged ``auto``.

    A file whose path names no allowed modality is an error when the user listed the
    modalities, and ``other`` (default augmentation recipe) under ``auto``: a plain
    folder of images trains, and ``notes`` says how to name the modality.
    """

    def __init__(self, kind: str, location: str, tags: SourceTags) -> None:
        self.kind, self.location = kind, location
        self.allowed = allowed_modalities(tags)
        self.unnamed = 0

    def __call__(self, path: str) -> str:
        if len(self.allowed) == 1:
            return self.allowed[0]
        modality = modality_from_path(os.path.relpath(path, self.location), self.allowed)
        if modality is None:
            if UNNAMED not in self.allowed:
                raise unknown_modality_error(self.kind, self.location)
            self.unnamed += 1
            modality = UNNAMED
        return modality

    @property
    def notes(self) -> list[str]:
        if not self.unnamed:
            return []
        return [
            f"{self.kind}:{self.location}: cannot tell the modality of {self.unnamed} images; "
            f"they train with the default augmentation recipe (name it, e.g. "
            f"'{self.kind}:{self.location}?modality=xray', or put images in folders named "
            f"after their modality: ct, mr, xray, ...)"
        ]


def unknown_modality_error(kind: str, location: str) -> ConfigError:
    return ConfigError(
        f"{kind}:{location}: cannot tell the modality of its images; give it, e.g. "
        f"'{kind}:{location}?modality=xray', or list the source in a catalog"
    )
