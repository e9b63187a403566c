"""``check_options``: every option has a default and a type hint, and survives ``--opt``
and a saved config unchanged."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any

from biovfm_core.errors import ConfigError
from biovfm_core.options import OptionSpec, option_faults, validate_options
from biovfm_core.testing._plugin import _Plugin
from biovfm_core.testing.errors import _fail


def check_options(plugin: _Plugin) -> None:
    """Every option has a default and a type hint, and its default survives
    ``--opt kind.name=VALUE`` and a saved-and-reloaded config unchanged."""
    from biovfm_core.config import RunConfig

    specs = plugin.specs()
    for fault in option_faults(specs):
        raise _fail(f"{plugin.what}, option {fault.option!r}", fault.problem, fault.fix)
    for name, spec in specs.items():
        where = f"{plugin.what}, option {name!r}"
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


# Where a plugin lists the options the kit must not vary, each with its reason: a
# class attribute of the factory class, or an attribute set on the factory function.
EXEMPT_ATTRIBUTE = "kit_exempt_options"


def exempt_options(plugin: _Plugin) -> dict[str, str]:
    """The plugin's ``kit_exempt_options``: option name -> why changing it shows no
    effect at the kit's size (checked: known names, a reason for each)."""
    declared = getattr(plugin.factory, EXEMPT_ATTRIBUTE, None) or {}
    specs = plugin.specs()
    if not isinstance(declared, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in declared.items()
    ):
        raise _fail(
            plugin.what,
            f"its {EXEMPT_ATTRIBUTE} is {declared!r}",
            f'make {EXEMPT_ATTRIBUTE} a dict of option name -> reason, e.g. {{"center_momentum": '
            "\"used only with centering='centering'\"}",
        )
    unknown = sorted(set(declared) - set(specs))
    if unknown:
        raise _fail(
            plugin.what,
            f"its {EXEMPT_ATTRIBUTE} names {', '.join(unknown)}, which it does not have",
            "list only the factory's own keyword-only options",
        )
    return dict(declared)


def alternatives(spec: OptionSpec, value: Any) -> list[Any]:
    """Sensible other values of an option, in the order the kit tries them: the other
    choice of a bool or ``Literal``, a halved or doubled number, a tuple with one
    item changed. Free strings have none (the kit cannot invent a valid one)."""
    annotation = spec.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union) and len(args) == 1:
        if value is None:
            return _from_nothing(args[0])
        # None often means "the backbone's", which may equal the value: try it last.
        return [*alternatives(OptionSpec(spec.name, args[0], value), value), None]
    if origin is typing.Literal:
        return [a for a in typing.get_args(annotation) if a != value]
    if annotation is bool:
        return [not value]
    if annotation is int and isinstance(value, int):
        return [value * 2, value + 1] if value else [1, 2]
    if annotation is float and isinstance(value, int | float):
        return [value / 2, value * 2, value + 0.1] if value else [0.5, 0.1]
    if origin is tuple and isinstance(value, tuple | list) and value:
        out = []
        for i in (0, len(value) - 1):
            inner = typing.get_args(annotation)[min(i, len(typing.get_args(annotation)) - 1)]
            for other in alternatives(OptionSpec(spec.name, inner, value[i]), value[i])[:2]:
                out.append(tuple(other if j == i else v for j, v in enumerate(value)))
        return out
    return []


def _from_nothing(annotation: Any) -> list[Any]:
    if annotation is bool:
        return [True, False]
    if annotation is int:
        return [1, 2, 8]
    if annotation is float:
        return [0.5, 0.1]
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return []


def check_options_matter(
    plugin: _Plugin,
    observe: Callable[[dict[str, Any]], tuple[Any, Callable[[], Any] | None]],
    *,
    shown: str,
) -> None:
    """Each option, changed to a sensible other value, must change what ``observe``
    (a build with those options, then what the kit can see of it) returns.

    ``observe`` returns what is cheap to see (declarations, shapes) and a function
    computing the rest (a few training steps), called only when the cheap part is equal.
    ``shown`` says in messages what the kit compared (the loss, outputs, views ...).
    An option that legitimately shows nothing at the kit's size is listed with its
    reason in the factory's ``kit_exempt_options``.
    """
    exempt = exempt_options(plugin)
    base_quick, base_deep = observe(dict(plugin.options))
    deep_cache: list[Any] = []

    def base_trace() -> Any:
        if not deep_cache:
            deep_cache.append(base_deep() if base_deep else None)
        return deep_cache[0]

    for name, spec in plugin.specs().items():
        if name in exempt:
            continue
        value = plugin.options.get(name, spec.default)
        tried = []
        for other in alternatives(spec, value):
            try:
                options = plugin.checked({**plugin.options, name: other}, origin="changed option")
                quick, deep = observe(options)
                changed = _differs(base_quick, quick) or (
                    deep is not None and _differs(base_trace(), deep())
                )
            except ConfigError:
                tried.append(other)
                continue  # the plugin refuses this value: try the next one
            except Exception as exc:
                raise _fail(
                    f"{plugin.what}, option {name!r}",
                    f"with {name}={other!r} it fails: {type(exc).__name__}: {exc}",
                    "raise biovfm_core.errors.ConfigError naming the option for a value it "
                    "cannot take, so the user gets one line instead of a traceback",
                ) from None
            if changed:
                break
            raise _fail(
                f"{plugin.what}, option {name!r}",
                f"changing it from {value!r} to {other!r} changes nothing the kit sees "
                f"({shown}): the option is declared but ignored",
                f"pass `{name}` on to where it takes effect; if it legitimately shows no effect "
                f"at the kit's size, list it with the reason in the factory's "
                f"{EXEMPT_ATTRIBUTE} = {{{name!r}: 'why'}}",
            )
        else:
            if tried:
                raise _fail(
                    f"{plugin.what}, option {name!r}",
                    f"every other value the kit tried ({', '.join(map(repr, tried))}) is "
                    "refused, so it cannot see whether the option is used",
                    f"list it with the reason in the factory's {EXEMPT_ATTRIBUTE}",
                )
            # A free string: no valid other value can be guessed; nothing to compare.


def _differs(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return True
        return a.shape != b.shape or not torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() != b.keys() or any(_differs(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b, strict=True))
    return a != b
