"""The plugin manager: finds plugins, collects what they register, builds objects by name.

Plugins come from the ``biovfm`` entry-point group, the built-in ones included, so
an outside package is found exactly like ours. Loading is tolerant: a plugin that
fails to import, or whose hook raises, becomes one warning naming it and the error,
and the rest keep working. Registration is strict: a name claimed twice for the
same kind is an error naming both plugins.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from biovfm_core import hookspecs
from biovfm_core.errors import PluginError, UnknownNameError
from biovfm_core.options import OptionSpec, factory_options, validate_options

ENTRY_POINT_GROUP = "biovfm"
BUILTIN_DISTRIBUTION = "biovfm"
DISABLE_AUTOLOAD_ENV = "BIOVFM_DISABLE_PLUGIN_AUTOLOAD"

KINDS: tuple[str, ...] = ("backbones", "objectives", "augmentations", "datasets")
# The singular, as users meet it in `--opt objective.x=1` and in messages.
KIND_SINGULAR = {
    "backbones": "backbone",
    "objectives": "objective",
    "augmentations": "augmentation",
    "datasets": "dataset",
}

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*:?$")


class PluginLoadWarning(UserWarning):
    """A plugin could not be imported or its hook raised; the others still work."""


@dataclass
class Registration:
    kind: str
    name: str
    factory: Callable[..., Any] | str
    plugin: str
    description: str = ""
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def is_family(self) -> bool:
        return self.name.endswith(":")

    def resolve(self) -> Callable[..., Any]:
        """The factory itself, importing it if it was registered as ``"module:attr"``."""
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise PluginError(
                f"plugin {self.plugin!r} registered {KIND_SINGULAR[self.kind]} {self.name!r} "
                f"as {self.factory!r}, which cannot be imported: {exc}"
            ) from exc
        if not callable(target):
            raise PluginError(
                f"plugin {self.plugin!r}: {self.factory!r} for {self.name!r} is not callable"
            )
        self.factory = target
        return target

    def options(self) -> dict[str, OptionSpec]:
        return factory_options(self.resolve())


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as `biovfm plugins` shows it."""

    name: str
    distribution: str
    version: str
    registered: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    error: str | None = None

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION


class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    def __init__(self) -> None:
        self.plugin_manager = pluggy.PluginManager("biovfm")
        self.plugin_manager.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._entries: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}

    # ------------------------------------------------------------------ loading

    def load_entry_points(self, *, builtin_only: bool | None = None) -> None:
        """Import every ``biovfm`` entry point once and collect its registrations."""
        if builtin_only is None:
            builtin_only = os.environ.get(DISABLE_AUTOLOAD_ENV, "") not in ("", "0")
        for ep in _entry_points():
            dist_name = ep.dist.name if ep.dist is not None else "?"
            if builtin_only and _canonical(dist_name) != BUILTIN_DISTRIBUTION:
                continue
            version = ep.dist.version if ep.dist is not None else "?"
            if ep.name in self.plugins:
                other = self.plugins[ep.name]
                raise PluginError(
                    f"two plugins are named {ep.name!r}: one from distribution "
                    f"{other.distribution!r}, one from {dist_name!r}; rename one entry point"
                )
            info = PluginInfo(ep.name, dist_name, version)
            self.plugins[ep.name] = info
            try:
                module = ep.load()
            except Exception as exc:
                self._fail(info, f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}")
                continue
            self.add_plugin(module, name=ep.name, info=info)

    def add_plugin(self, plugin: object, *, name: str, info: PluginInfo | None = None) -> None:
        """Register a plugin object (module or instance with hookimpls) directly.

        Used for entry points and by tests or applications embedding biovfm.
        """
        if info is None:
            info = self.plugins.setdefault(name, PluginInfo(name, "(direct)", "-"))
        try:
            self.plugin_manager.register(plugin, name=name)
        except Exception as exc:  # pluggy validates hookimpl signatures here
            self._fail(info, f"rejected by the plugin manager: {exc}")
            return
        for kind in KINDS:
            caller = getattr(self.plugin_manager.hook, f"biovfm_register_{kind}")
            for impl in caller.get_hookimpls():
                if impl.plugin_name != name:
                    continue
                try:
                    impl.function(register=self._registrar(kind, info))
                except PluginError:
                    raise
                except Exception as exc:
                    self._fail(info, f"biovfm_register_{kind} raised {type(exc).__name__}: {exc}")

    def _registrar(self, kind: str, info: PluginInfo) -> Callable[..., None]:
        def register(
            name: str,
            factory: Callable[..., Any] | str,
            *,
            description: str = "",
            presets: Mapping[str, Mapping[str, Any]] | None = None,
        ) -> None:
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise PluginError(
                    f"plugin {info.name!r} registered an invalid {KIND_SINGULAR[kind]} name "
                    f"{name!r}: use lowercase letters, digits, '_', '-', '.' (a trailing ':' "
                    "for a family)"
                )
            if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
                raise PluginError(
                    f"plugin {info.name!r}: the factory for {name!r} must be a callable or "
                    f"a 'module:attr' string, got {factory!r}"
                )
            existing = self._entries[kind].get(name)
            if existing is not None:
                raise PluginError(
                    f"{KIND_SINGULAR[kind]} {name!r} is registered twice: by plugin "
                    f"{existing.plugin!r} ({self._dist_of(existing.plugin)}) and by plugin "
                    f"{info.name!r} ({info.distribution}); uninstall or rename one"
                )
            self._entries[kind][name] = Registration(
                kind,
                name,
                factory,
                info.name,
                description,
                {k: dict(v) for k, v in (presets or {}).items()},
            )
            info.registered[kind].append(name)

        return register

    def _dist_of(self, plugin: str) -> str:
        info = self.plugins.get(plugin)
        return info.distribution if info else "?"

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.error = message
        warnings.warn(
            f"biovfm plugin {info.name!r} (distribution {info.distribution!r}) {message}; "
            "continuing without it",
            PluginLoadWarning,
            stacklevel=3,
        )
        # A plugin that failed half-way must not leave half its names behind.
        for kind, names in info.registered.items():
            for n in names:
                self._entries[kind].pop(n, None)
            names.clear()
        if self.plugin_manager.has_plugin(info.name):
            self.plugin_manager.unregister(name=info.name)

    # ------------------------------------------------------------------- lookup

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[_check_kind(kind)])

    def get(self, kind: str, name: str) -> tuple[Registration, str | None]:
        """The registration for ``name`` and, for a family (``timm:resnet50``), its variant."""
        entries = self._entries[_check_kind(kind)]
        if name in entries:
            return entries[name], None
        family, sep, variant = name.partition(":")
        if sep and variant and f"{family}:" in entries:
            return entries[f"{family}:"], variant
        raise UnknownNameError(_unknown_message(KIND_SINGULAR[kind], name, entries))

    def preset(self, kind: str, name: str, preset: str) -> dict[str, Any]:
        """The option values ``name`` recommends for ``preset`` (e.g. ``"cpu"``), or {}."""
        return dict(self.get(kind, name)[0].presets.get(preset, {}))

    def options(self, kind: str, name: str) -> dict[str, OptionSpec]:
        return self.get(kind, name)[0].options()

    def validate(self, kind: str, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``options`` against the factory's keyword-only parameters; return them
        coerced to the declared types."""
        registration, _ = self.get(kind, name)
        return validate_options(
            registration.options(),
            options,
            where=f"{KIND_SINGULAR[kind]} {name!r} (plugin {registration.plugin!r})",
            prefix=f"{KIND_SINGULAR[kind]}.",
        )

    def build(self, kind: str, name: str, *args: Any, options: Mapping[str, Any] | None = None):
        """Validate options and call the factory: ``factory(*args, **options)``."""
        registration, variant = self.get(kind, name)
        checked = self.validate(kind, name, options or {})
        factory = registration.resolve()
        if variant is not None:
            checked["variant"] = variant
        return factory(*args, **checked)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
    return kind


def _unknown_message(kind: str, name: str, entries: Iterable[str]) -> str:
    available = sorted(entries)
    shown = [n + "<name>" if n.endswith(":") else n for n in available]
    message = f"unknown {kind} {name!r}"
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.6)
    if close:
        message += f"; did you mean {close[0]!r}?"
    message += f" Available: {', '.join(shown) if shown else '(none registered)'}"
    return message


def _canonical(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def _entry_points() -> list[metadata.EntryPoint]:
    # One distribution can appear twice on sys.path (editable install plus a copy);
    # keep the first, as Python's import would.
    seen: set[tuple[str, str]] = set()
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key not in seen:
            seen.add(key)
            found.append(ep)
    return found


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use (entry points load once)."""
    global _REGISTRY
    if _REGISTRY is None:
        registry = Registry()
        registry.load_entry_points()
        _REGISTRY = registry
    return _REGISTRY


def reset_registry() -> None:
    """Forget the loaded plugins (tests; a process that installed a plugin)."""
    global _REGISTRY
    _REGISTRY = None
