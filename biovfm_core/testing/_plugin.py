"""The plugin a check is about: a registered name (with its presets) or a bare factory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from biovfm_core.errors import ConfigError
from biovfm_core.options import OptionSpec, factory_options, validate_options
from biovfm_core.testing.errors import ConformanceError, _fail


class _Plugin:
    """A factory to check: a registered name (with its presets) or a bare callable."""

    def __init__(
        self,
        kind: str,
        name_or_factory: str | Callable[..., Any],
        *,
        preset: Mapping[str, Any] | None,
        options: Mapping[str, Any] | None,
        registry: Any,
    ) -> None:
        self.kind = kind  # singular: "objective", ...
        self.presets: dict[str, dict[str, Any]] = {}
        if isinstance(name_or_factory, str):
            from biovfm_core.registry import get_registry

            self.registry = registry or get_registry()
            try:
                registration, variant = self.registry.get(kind + "s", name_or_factory)
            except ConfigError as exc:
                raise ConformanceError(
                    f"{exc}. Fix: install the plugin's distribution (pip install -e .) so its "
                    "`biovfm` entry point registers the name, or pass the factory itself"
                ) from None
            self.name = name_or_factory
            self.what = f"{kind} {name_or_factory!r} (plugin {registration.plugin!r})"
            self.factory = registration.resolve()
            self.variant = variant
            self.presets = {k: dict(v) for k, v in registration.presets.items()}
        elif callable(name_or_factory):
            self.registry = registry
            self.name = getattr(name_or_factory, "__qualname__", repr(name_or_factory))
            self.what = f"{kind} factory {self.name}"
            self.factory = name_or_factory
            self.variant = None
        else:
            raise TypeError(f"expected a registered name or a factory, got {name_or_factory!r}")
        cpu = dict(self.presets.get("cpu", {}))
        if preset is not None:
            cpu = dict(preset)
        self.options = self.checked({**cpu, **(options or {})}, origin="'cpu' preset / options")

    def specs(self) -> dict[str, OptionSpec]:
        return factory_options(self.factory)

    def checked(self, given: Mapping[str, Any], *, origin: str) -> dict[str, Any]:
        try:
            return validate_options(self.specs(), given, where=self.what, prefix=f"{self.kind}.")
        except ConfigError as exc:
            raise _fail(
                self.what,
                f"its {origin} does not match the factory's options ({exc})",
                "make every preset key a keyword-only parameter of the factory, with a "
                "value of its type hint",
            ) from None

    def build(self, *args: Any, **extra: Any) -> Any:
        kwargs = {**self.options, **extra}
        if self.variant is not None:
            kwargs["variant"] = self.variant
        return self.factory(*args, **kwargs)
