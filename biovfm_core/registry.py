"""The plugin manager: finds plugins, collects what they register, builds objects by name.

Plugins come from the ``biovfm`` entry-point group, the built-in ones included, so
an outside package is found exactly like ours. Problems degrade per name, never
for the whole tool: a plugin that fails to import, or whose hook raises, becomes a
warning naming it and its distribution; a name claimed twice, an invalid name or a
malformed preset is recorded as a ``Problem`` and is an error only when that very
name is used (the error names every plugin involved). ``biovfm plugins`` lists the
problems. Errors raised inside a plugin's factory are wrapped into a ``PluginError``
naming the plugin, its distribution and the factory (``BIOVFM_DEBUG=1`` makes the
CLI print the original traceback).
"""

from __future__ import annotations

import contextlib
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
from biovfm_core.errors import BiovfmError, ConfigError, PluginError, UnknownNameError
from biovfm_core.options import OptionSpec, factory_options, option_faults, validate_options

ENTRY_POINT_GROUP = "biovfm"
BUILTIN_DISTRIBUTION = "biovfm"
DISABLE_AUTOLOAD_ENV = "BIOVFM_DISABLE_PLUGIN_AUTOLOAD"
DEBUG_ENV = "BIOVFM_DEBUG"
# The user's half of a deliberate replacement of a built-in name: a comma list of
# names (``dinov2``, or ``objective:dinov2`` for one kind) whose third-party
# registration with ``override=True`` is used instead of biovfm's own.
ALLOW_OVERRIDE_ENV = "BIOVFM_ALLOW_OVERRIDE"

KINDS: tuple[str, ...] = ("backbones", "objectives", "augmentations", "datasets", "loggers")
# The singular, as users meet it in `--opt objective.x=1` and in messages.
KIND_SINGULAR = {
    "backbones": "backbone",
    "objectives": "objective",
    "augmentations": "augmentation",
    "datasets": "dataset",
    "loggers": "logger",
}

# What can go wrong with a plugin, as `biovfm plugins` names it.
PROBLEM_KINDS = (
    "clash",  # a name (or plugin name) claimed by two plugins
    "import",  # the plugin module does not import
    "hook",  # a registration hook raised, or pluggy rejected the plugin
    "invalid-name",
    "invalid-factory",
    "invalid-preset",
    "factory",  # found by `biovfm plugins --check`: the factory does not import
    "option",  # found by `biovfm plugins --check`: an option without default or type hint
)
# Problems that may have kept a plugin's names from being registered at all.
_LOAD_FAILURES = ("import", "hook")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*:?$")


class PluginLoadWarning(UserWarning):
    """A plugin has a problem (see ``Registry.problems``); the others still work."""


@dataclass
class Problem:
    """One thing wrong with a plugin, found while loading or using it."""

    kind: str
    plugin: str
    distribution: str
    message: str
    name: str | None = None
    """The registered name concerned (``None`` for a whole-plugin problem)."""
    registry_kind: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "name": self.name,
            "registers": KIND_SINGULAR.get(self.registry_kind or ""),
            "message": self.message,
        }


@dataclass
class Registration:
    kind: str
    name: str
    factory: Callable[..., Any] | str
    plugin: str
    description: str = ""
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    distribution: str = "?"
    override: bool = False
    """The plugin asked to replace a built-in of this name (``register(..., override=True)``)."""
    modalities: tuple[str, ...] = ()
    """An augmentation recipe's declared modalities (``register(..., modalities=[...])``):
    ``--augmentation auto`` uses it for those no recipe of that name claims."""

    @property
    def is_family(self) -> bool:
        return self.name.endswith(":")

    @property
    def owner(self) -> str:
        """``plugin 'x' (distribution 'y')``, for messages."""
        return f"plugin {self.plugin!r} (distribution {self.distribution!r})"

    @property
    def factory_ref(self) -> str:
        """The factory as ``module:attr``, however it was registered."""
        if isinstance(self.factory, str):
            return self.factory
        module = getattr(self.factory, "__module__", "?")
        return f"{module}:{getattr(self.factory, '__qualname__', repr(self.factory))}"

    def resolve(self) -> Callable[..., Any]:
        """The factory itself, importing it if it was registered as ``"module:attr"``."""
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except Exception as exc:  # any error of the plugin's module is the plugin's
            raise PluginError(
                f"{KIND_SINGULAR[self.kind]} {self.name!r} of {self.owner}: its factory "
                f"{self.factory!r} cannot be imported: {type(exc).__name__}: {exc}"
                f"{_debug_hint()}"
            ) from exc
        if not callable(target):
            raise PluginError(
                f"{KIND_SINGULAR[self.kind]} {self.name!r} of {self.owner}: its factory "
                f"{self.factory!r} is not callable"
            )
        self.factory = target
        return target

    def options(self) -> dict[str, OptionSpec]:
        factory = self.resolve()
        try:
            return factory_options(factory)
        except Exception as exc:  # e.g. a C callable without a signature
            raise PluginError(
                f"{KIND_SINGULAR[self.kind]} {self.name!r} of {self.owner}: cannot read the "
                f"options of {self.factory_ref}: {type(exc).__name__}: {exc}"
            ) from exc


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
        return _canonical(self.distribution) == BUILTIN_DISTRIBUTION


class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    def __init__(self) -> None:
        self.plugin_manager = pluggy.PluginManager("biovfm")
        self.plugin_manager.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._entries: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}
        # A name two plugins registered: kept with every claimant, usable by none.
        self._clashes: dict[str, dict[str, list[Registration]]] = {k: {} for k in KINDS}
        # Names refused at registration (bad name or factory): the problem, by name.
        self._refused: dict[str, dict[str, Problem]] = {k: {} for k in KINDS}
        self._problems: list[Problem] = []
        # Built-in registrations a third party replaced with both opt-ins, by kind and
        # name (``biovfm plugins`` shows them, so a replaced built-in is never silent).
        self.overridden: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}

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
                # pluggy keys plugins by name: the second one cannot be loaded, but it
                # is listed (under a distinct key) with the clash as its problem.
                other = self.plugins[ep.name]
                info = PluginInfo(ep.name, dist_name, version)
                self.plugins[f"{ep.name} ({dist_name})"] = info
                self._fail(
                    info,
                    "clash",
                    f"not loaded: plugin name {ep.name!r} is also used by distribution "
                    f"{other.distribution!r}; rename one entry point",
                )
                continue
            info = PluginInfo(ep.name, dist_name, version)
            self.plugins[ep.name] = info
            try:
                module = ep.load()
            except Exception as exc:
                self._fail(
                    info, "import", f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}"
                )
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
            self._fail(info, "hook", f"rejected by the plugin manager: {exc}")
            return
        for kind in KINDS:
            caller = getattr(self.plugin_manager.hook, f"biovfm_register_{kind}")
            for impl in caller.get_hookimpls():
                if impl.plugin_name != name:
                    continue
                try:
                    impl.function(register=self._registrar(kind, info))
                except Exception as exc:
                    self._fail(
                        info, "hook", f"biovfm_register_{kind} raised {type(exc).__name__}: {exc}"
                    )
                    return

    def _registrar(self, kind: str, info: PluginInfo) -> Callable[..., None]:
        def register(
            name: str,
            factory: Callable[..., Any] | str,
            *,
            description: str = "",
            presets: Mapping[str, Mapping[str, Any]] | None = None,
            override: bool = False,
            modalities: Iterable[str] = (),
        ) -> None:
            what = KIND_SINGULAR[kind]
            if not isinstance(name, str) or not _NAME_RE.match(name):
                self._refuse(
                    kind,
                    info,
                    "invalid-name",
                    str(name),
                    f"registered an invalid {what} name {name!r}: use lowercase letters, "
                    "digits, '_', '-', '.' (a trailing ':' for a family)",
                )
                return
            if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
                self._refuse(
                    kind,
                    info,
                    "invalid-factory",
                    name,
                    f"the factory for {what} {name!r} must be a callable or a "
                    f"'module:attr' string, got {factory!r}",
                )
                return
            preset_error = _preset_shape_error(presets)
            if preset_error:
                self._problem(
                    Problem(
                        "invalid-preset",
                        info.name,
                        info.distribution,
                        f"the presets of {what} {name!r} are ignored: {preset_error}",
                        name,
                        kind,
                    )
                )
                presets = None
            registration = Registration(
                kind,
                name,
                factory,
                info.name,
                description,
                {k: dict(v) for k, v in (presets or {}).items()},
                info.distribution,
                bool(override),
                tuple(str(m) for m in modalities),
            )
            if self._keeps_builtin(kind, registration, info):
                return
            info.registered[kind].append(name)
            if name in self._clashes[kind]:
                self._clashes[kind][name].append(registration)
            elif name in self._entries[kind]:
                self._clashes[kind][name] = [self._entries[kind].pop(name), registration]
            else:
                self._entries[kind][name] = registration
                return
            _warn(
                f"biovfm: {_clash_message(kind, name, self._clashes[kind][name])}; "
                "every other name still works"
            )

        return register

    def _keeps_builtin(self, kind: str, new: Registration, info: PluginInfo) -> bool:
        """Settle a name between biovfm's own plugins and a third party's; True when
        ``new`` was already settled here (refused, or an allowed override).

        A built-in name stays with the built-in whatever order the entry points load
        in, so installing a package never changes what a plain ``biovfm train`` runs:
        the outsider's registration is the one disabled, listed as its plugin's
        problem. Replacing a built-in needs both the plugin's ``override=True`` and
        the user naming it in ``BIOVFM_ALLOW_OVERRIDE``.
        """
        name = new.name
        held = self._entries[kind].get(name)
        if info.builtin:
            if held is not None and not _is_builtin(held):
                if self._may_override(kind, held):
                    self.overridden[kind][name] = new
                    return True
                del self._entries[kind][name]
                self._refuse_outsider(kind, held, new)
            elif name in self._clashes[kind]:
                # Outsiders clashed among themselves first: the built-in settles it.
                for other in self._clashes[kind].pop(name):
                    self._refuse_outsider(kind, other, new)
            return False
        if held is None or not _is_builtin(held):
            return False
        if self._may_override(kind, new):
            self.overridden[kind][name] = held
            info.registered[kind].append(name)
            self._entries[kind][name] = new
            return True
        self._refuse_outsider(kind, new, held)
        return True

    def _may_override(self, kind: str, registration: Registration) -> bool:
        allowed = {n.strip() for n in os.environ.get(ALLOW_OVERRIDE_ENV, "").split(",")}
        wanted = {registration.name, f"{KIND_SINGULAR[kind]}:{registration.name}"}
        return registration.override and bool(allowed & wanted)

    def _refuse_outsider(self, kind: str, outsider: Registration, builtin: Registration) -> None:
        what = KIND_SINGULAR[kind]
        info = self.plugins.get(outsider.plugin)
        if info is not None and outsider.name in info.registered[kind]:
            info.registered[kind].remove(outsider.name)
        if outsider.override:
            fix = (
                "it asks to replace the built-in (override=True): set "
                f"{ALLOW_OVERRIDE_ENV}={outsider.name} to use it instead"
            )
        else:
            fix = (
                "rename it (prefix it with your project's name), or register it with "
                f"override=True and set {ALLOW_OVERRIDE_ENV}={outsider.name} to replace the "
                "built-in on purpose"
            )
        message = (
            f"its {what} {outsider.name!r} is not used: the name belongs to biovfm's own "
            f"{builtin.owner}, which keeps it; {fix}"
        )
        self._problem(
            Problem("clash", outsider.plugin, outsider.distribution, message, outsider.name, kind)
        )

    def _refuse(self, kind: str, info: PluginInfo, problem: str, name: str, message: str) -> None:
        found = Problem(problem, info.name, info.distribution, message, name, kind)
        self._refused[kind][name] = found
        self._problem(found)

    def _problem(self, problem: Problem) -> None:
        self._problems.append(problem)
        _warn(
            f"biovfm plugin {problem.plugin!r} (distribution {problem.distribution!r}) "
            f"{problem.message}"
            + ("; continuing without it" if problem.kind in ("import", "hook", "clash") else "")
        )

    def _fail(self, info: PluginInfo, problem: str, message: str) -> None:
        info.error = message
        # A plugin that failed half-way must not leave half its names behind.
        for kind, names in info.registered.items():
            for n in names:
                self._drop(kind, n, info.name)
            names.clear()
        for kind in KINDS:
            for n, p in list(self._refused[kind].items()):
                if p.plugin == info.name:
                    del self._refused[kind][n]
        self._problems = [p for p in self._problems if p.plugin != info.name]
        if self.plugin_manager.has_plugin(info.name):
            self.plugin_manager.unregister(name=info.name)
        self._problem(Problem(problem, info.name, info.distribution, message))

    def _drop(self, kind: str, name: str, plugin: str) -> None:
        entry = self._entries[kind].get(name)
        if entry is not None and entry.plugin == plugin:
            del self._entries[kind][name]
            if name in self.overridden[kind]:  # the replaced built-in comes back
                self._entries[kind][name] = self.overridden[kind].pop(name)
        claimants = self._clashes[kind].get(name)
        if claimants is not None:
            claimants[:] = [r for r in claimants if r.plugin != plugin]
            if len(claimants) == 1:  # no clash any more: the remaining one owns it
                self._entries[kind][name] = claimants[0]
                del self._clashes[kind][name]

    # ----------------------------------------------------------------- problems

    @property
    def problems(self) -> list[Problem]:
        """Everything wrong with the installed plugins, clashes included."""
        clashes = []
        for kind in KINDS:
            for name, claimants in sorted(self._clashes[kind].items()):
                message = _clash_message(kind, name, claimants)
                for r in claimants:
                    clashes.append(Problem("clash", r.plugin, r.distribution, message, name, kind))
        return list(self._problems) + clashes

    def check(self) -> list[Problem]:
        """Import every factory and check every preset (``biovfm plugins --check``);
        what fails is recorded as a problem of its plugin. Returns all problems."""
        for kind in KINDS:
            for name, registration in sorted(self._entries[kind].items()):
                try:
                    specs = registration.options()
                except PluginError as exc:
                    self._record(
                        Problem(
                            "factory",
                            registration.plugin,
                            registration.distribution,
                            str(exc),
                            name,
                            kind,
                        )
                    )
                    continue
                # The conformance kit's own rule (testing.check_options), without a run.
                for fault in option_faults(specs):
                    self._record(
                        Problem(
                            "option",
                            registration.plugin,
                            registration.distribution,
                            f"{KIND_SINGULAR[kind]} {name!r}, option {fault.option!r} "
                            f"{fault.problem}. Fix: {fault.fix}",
                            name,
                            kind,
                        )
                    )
                for preset in registration.presets:
                    with contextlib.suppress(PluginError):  # preset() records it
                        self.preset(kind, name, preset)
        return self.problems

    def _record(self, problem: Problem) -> None:
        if problem not in self._problems:
            self._problems.append(problem)

    def problems_of(self, plugin: str) -> list[Problem]:
        return [p for p in self.problems if p.plugin == plugin]

    def load_failure_note(self) -> str:
        """For an unknown-name message: the plugins that failed to load, and why."""
        failed = [p for p in self._problems if p.kind in _LOAD_FAILURES or p.name is None]
        if not failed:
            return ""
        listed = "; ".join(
            f"plugin {p.plugin!r} (distribution {p.distribution!r}) {p.message}" for p in failed
        )
        return f". {len(failed)} plugin(s) failed to load and may have registered it: {listed}"

    # ------------------------------------------------------------------- lookup

    def names(self, kind: str) -> list[str]:
        """Registered names, clashing ones included (using one raises, naming both)."""
        return sorted(set(self._entries[_check_kind(kind)]) | set(self._clashes[kind]))

    def get(self, kind: str, name: str) -> tuple[Registration, str | None]:
        """The registration for ``name`` and, for a family (``timm:resnet50``), its variant."""
        entries = self._entries[_check_kind(kind)]
        family, sep, variant = name.partition(":")
        for candidate in (name, f"{family}:" if sep and variant else None):
            if candidate is None:
                continue
            if candidate in self._clashes[kind]:
                raise PluginError(_clash_message(kind, candidate, self._clashes[kind][candidate]))
            if candidate in entries:
                return entries[candidate], (variant if candidate != name else None)
        refused = self._refused[kind].get(name)
        if refused is not None:
            raise PluginError(
                f"{KIND_SINGULAR[kind]} {name!r} cannot be used: plugin {refused.plugin!r} "
                f"(distribution {refused.distribution!r}) {refused.message}"
            )
        raise UnknownNameError(
            _unknown_message(KIND_SINGULAR[kind], name, self.names(kind)) + self.load_failure_note()
        )

    def preset(self, kind: str, name: str, preset: str) -> dict[str, Any]:
        """The option values ``name`` recommends for ``preset`` (e.g. ``"cpu"``), or {}.

        The values are checked against the factory's own options: a typo in a
        plugin's preset is that plugin's problem (a ``PluginError`` naming it and its
        distribution), not the user's. An objective's ``"backbone"`` preset holds
        options of another plugin and is checked where it is applied.
        """
        registration, _ = self.get(kind, name)
        values = dict(registration.presets.get(preset, {}))
        if not values or preset == "backbone":
            return values
        try:
            return validate_options(
                registration.options(),
                values,
                where=f"{KIND_SINGULAR[kind]} {name!r}",
                prefix="",
                partial=True,
            )
        except ConfigError as exc:
            message = f"its {preset!r} preset for {KIND_SINGULAR[kind]} {name!r} is invalid: {exc}"
            problem = Problem(
                "invalid-preset",
                registration.plugin,
                registration.distribution,
                message,
                name,
                kind,
            )
            self._record(problem)
            raise PluginError(
                f"{registration.owner} {message}. This is a bug in the plugin, not in your "
                "settings: report it to its authors; setting the option yourself overrides "
                "the preset value"
            ) from None

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
            # A logger's options are per logger: --opt logger.mlflow.experiment=...
            prefix=f"{KIND_SINGULAR[kind]}." + (f"{name}." if kind == "loggers" else ""),
        )

    def build(self, kind: str, name: str, *args: Any, options: Mapping[str, Any] | None = None):
        """Validate options and call the factory: ``factory(*args, **options)``.

        biovfm's own errors raised by the factory (``ConfigError`` for a bad option
        value) pass through; anything else is wrapped into a one-line ``PluginError``
        naming the plugin, its distribution and the factory (the original exception
        is its ``__cause__``).
        """
        registration, variant = self.get(kind, name)
        checked = self.validate(kind, name, options or {})
        factory = registration.resolve()
        if variant is not None:
            checked["variant"] = variant
        try:
            return factory(*args, **checked)
        except BiovfmError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{KIND_SINGULAR[kind]} {name!r} of {registration.owner} failed in its factory "
                f"{registration.factory_ref}: {type(exc).__name__}: {exc}{_debug_hint()}"
            ) from exc


def _warn(message: str) -> None:
    warnings.warn(message, PluginLoadWarning, stacklevel=4)


def _debug_hint() -> str:
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return ""
    return f" ({DEBUG_ENV}=1 shows the traceback)"


def _clash_message(kind: str, name: str, claimants: list[Registration]) -> str:
    owners = " and by ".join(r.owner for r in claimants)
    return (
        f"{KIND_SINGULAR[kind]} {name!r} is registered twice: by {owners}; "
        "uninstall or rename one (biovfm plugins lists the problems; "
        f"{DISABLE_AUTOLOAD_ENV}=1 loads only biovfm's own plugins)"
    )


def _preset_shape_error(presets: Any) -> str | None:
    if presets is None:
        return None
    if not isinstance(presets, Mapping):
        return f"presets must be a mapping of preset name to options, got {presets!r}"
    for key, values in presets.items():
        if not isinstance(key, str) or not isinstance(values, Mapping):
            return f"preset {key!r} must map option names to values, got {values!r}"
        bad = [k for k in values if not isinstance(k, str)]
        if bad:
            return f"preset {key!r} has non-string option names {bad!r}"
    return None


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


def _is_builtin(registration: Registration) -> bool:
    return _canonical(registration.distribution) == BUILTIN_DISTRIBUTION


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
