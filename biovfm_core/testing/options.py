"""``check_options``: every option has a default and a type hint, and survives ``--opt``
and a saved config unchanged."""

from __future__ import annotations

import inspect
from typing import Any

from biovfm_core.errors import ConfigError
from biovfm_core.options import validate_options
from biovfm_core.testing._plugin import _Plugin
from biovfm_core.testing.errors import _fail


def check_options(plugin: _Plugin) -> None:
    """Every option has a default and a type hint, and its default survives
    ``--opt kind.name=VALUE`` and a saved-and-reloaded config unchanged."""
    from biovfm_core.config import RunConfig

    for name, spec in plugin.specs().items():
        where = f"{plugin.what}, option {name!r}"
        if spec.required:
            raise _fail(
                where,
                "has no default, so a run that does not set it cannot build the plugin",
                f"give `{name}` a default value in the factory's signature",
            )
        if spec.annotation is Any or spec.annotation is inspect.Parameter.empty:
            raise _fail(
                where,
                "has no type hint, so biovfm cannot check or convert `--opt` strings",
                f"annotate `{name}` (int, float, bool, str, Literal[...], tuple[...], X | None)",
            )
        text = _render(spec.default)
        config = RunConfig()
        config.apply_opts([f"{plugin.kind}.{name}={text}"])
        try:
            via_opt = validate_options(
                {name: spec}, config.options[plugin.kind], where=plugin.what
            )[name]
            via_yaml = validate_options(
                {name: spec},
                RunConfig.from_dict(
                    {"options": {plugin.kind: {name: _plain(spec.default)}}}
                ).options[plugin.kind],
                where=plugin.what,
            )[name]
        except ConfigError as exc:
            raise _fail(
                where,
                f"its default {spec.default!r}, written as --opt {plugin.kind}.{name}={text}, "
                f"is rejected: {exc}",
                "make the default a value of the declared type (or widen the type hint)",
            ) from None
        for route, value in (("--opt", via_opt), ("a YAML config", via_yaml)):
            if not _same(value, spec.default):
                raise _fail(
                    where,
                    f"its default {spec.default!r} comes back from {route} as {value!r}",
                    "use a type hint biovfm converts exactly (int, float, bool, str, "
                    "Literal[...], tuple[...], X | None) and a default of that type",
                )


def _render(value: Any) -> str:
    """The text a user types after ``--opt kind.name=`` for ``value``."""
    import yaml

    if isinstance(value, str):
        return value
    return yaml.safe_dump(_plain(value), default_flow_style=True).strip().removesuffix("\n...")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and float(a) == float(b)
    return a == b and type(a) is type(b)
