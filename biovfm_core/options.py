"""Plugin options: read from a factory's keyword-only parameters, checked and coerced.

A factory's keyword-only parameters are its options; their type hints are the
schema. Values arrive typed from YAML or as strings from ``--opt k=v``; both go
through the same coercion so ``--opt objective.teacher_temp=0.07`` and
``teacher_temp: 0.07`` in a config are the same thing.
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from biovfm_core.errors import ConfigError

_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class OptionSpec:
    name: str
    annotation: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def type_name(self) -> str:
        return _type_name(self.annotation)


def factory_options(factory: Callable[..., Any]) -> dict[str, OptionSpec]:
    """The keyword-only parameters of ``factory`` (a class or function) as options.

    ``variant`` is not an option: biovfm passes it for family names (``timm:x``).
    A class whose ``__init__`` ends in ``**kwargs`` passes them to its base class:
    the base's keyword-only parameters are options too, so a subclass lists only
    what it adds.
    """
    targets = [factory.__init__] if inspect.isclass(factory) else [factory]
    if inspect.isclass(factory):
        targets += [
            base.__dict__["__init__"] for base in factory.__mro__[1:] if "__init__" in base.__dict__
        ]
    specs: dict[str, OptionSpec] = {}
    for target in targets:
        signature = inspect.signature(target)
        try:
            hints = typing.get_type_hints(target)
        except Exception:  # unresolvable forward references: check names, not types
            hints = {}
        for param in signature.parameters.values():
            if param.kind is not inspect.Parameter.KEYWORD_ONLY or param.name == "variant":
                continue
            specs.setdefault(
                param.name, OptionSpec(param.name, hints.get(param.name, Any), param.default)
            )
        passes_on = any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
        )
        if not passes_on:
            break
    return specs


@dataclass(frozen=True)
class OptionFault:
    """An option a run cannot set or check: the kit and ``biovfm plugins --check``
    both report these, with one wording."""

    option: str
    problem: str
    fix: str


def option_faults(specs: Mapping[str, OptionSpec]) -> list[OptionFault]:
    """What is wrong with the declared options themselves, before any value is tried:
    no default (a run that does not set it cannot build the plugin) or no type hint
    (``--opt`` strings cannot be checked or converted)."""
    faults = []
    for name, spec in specs.items():
        if spec.required:
            faults.append(
                OptionFault(
                    name,
                    "has no default, so a run that does not set it cannot build the plugin",
                    f"give `{name}` a default value in the factory's signature",
                )
            )
        elif spec.annotation is Any or spec.annotation is _MISSING:
            faults.append(
                OptionFault(
                    name,
                    "has no type hint, so biovfm cannot check or convert `--opt` strings",
                    f"annotate `{name}` (int, float, bool, str, Literal[...], tuple[...], "
                    "X | None)",
                )
            )
    return faults


def parse_assignment(text: str) -> tuple[str, str]:
    """Split ``"objective.teacher_temp=0.07"`` into key and raw value."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def validate_options(
    specs: Mapping[str, OptionSpec],
    given: Mapping[str, Any],
    *,
    where: str,
    prefix: str = "",
    partial: bool = False,
) -> dict[str, Any]:
    """Return ``given`` coerced to the option types; reject unknown or ill-typed ones.

    ``partial``: required options may be absent (a preset sets only some)."""
    checked: dict[str, Any] = {}
    for key, value in given.items():
        spec = specs.get(key)
        if spec is None:
            raise ConfigError(_unknown_option(key, specs, where, prefix))
        try:
            checked[key] = coerce(value, spec.annotation)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"option {prefix}{key} of {where}: {exc} (expected {spec.type_name()})"
            ) from None
    missing = [s.name for s in specs.values() if s.required and s.name not in checked]
    if missing and not partial:
        raise ConfigError(f"{where} needs option(s): {', '.join(prefix + m for m in missing)}")
    return checked


def _unknown_option(key: str, specs: Mapping[str, OptionSpec], where: str, prefix: str) -> str:
    valid = sorted(specs)
    message = f"unknown option {prefix}{key} for {where}"
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        message += f"; did you mean {prefix}{close[0]}?"
    listing = ", ".join(f"{prefix}{n} ({specs[n].type_name()})" for n in valid)
    return message + f" Valid options: {listing or '(none)'}"


def coerce(value: Any, annotation: Any) -> Any:
    """Coerce a YAML or command-line value to ``annotation``; raise ValueError if it can't."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return _parse_if_str(value)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (
            isinstance(value, str) and value.lower() in ("none", "null", "~")
        )
        if is_null and type(None) in args:
            return None
        errors = []
        # Try str last so "0.5" becomes a float when float is allowed too.
        for arg in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return coerce(value, arg)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors) or f"{value!r} is not allowed")
    if origin is typing.Literal:
        parsed = value if not isinstance(value, str) else _parse_if_str(value)
        for choice in args:
            if value == choice or parsed == choice:
                return choice
        raise ValueError(f"{value!r} is not one of {', '.join(map(repr, args))}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{value!r} is not a string")
    if annotation is bool:
        value = _parse_if_str(value)
        if isinstance(value, bool):
            return value
        raise ValueError(f"{value!r} is not true/false")
    if annotation is int:
        value = _parse_if_str(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{value!r} is not an integer")
    if annotation is float:
        value = _parse_if_str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{value!r} is not a number")
    if origin in (tuple, list):
        value = _parse_if_str(value)
        if isinstance(value, (int, float, str)):
            value = [value]  # a single value where a list is expected
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{value!r} is not a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{value!r} must have {len(args)} items")
            items = [coerce(v, a) for v, a in zip(value, args, strict=True)]
        else:
            item_type = args[0] if args else Any
            items = [coerce(v, item_type) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or annotation is dict:
        value = _parse_if_str(value)
        if isinstance(value, dict):
            return value
        raise ValueError(f"{value!r} is not a mapping")
    return value


def _parse_if_str(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    # YAML 1.1 reads "1e-3" as a string; users mean a number.
    if isinstance(parsed, str):
        try:
            return float(parsed) if any(c in parsed for c in ".eE") else int(parsed)
        except ValueError:
            return parsed
    return parsed


def _type_name(annotation: Any) -> str:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return "any"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_SECTION_RE = re.compile(
    r"^(Args|Arguments|Options|Parameters|Keyword Args|Keyword Arguments|Other Parameters):\s*$"
)
_GOOGLE_ITEM_RE = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_ITEM_RE = re.compile(r"^(\w+)\s*(:.*)?$")
_SPHINX_RE = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+):\s*(.*)$")


@dataclass(frozen=True)
class FactoryDoc:
    """A factory's docstring, split for ``biovfm plugins --options``."""

    text: str
    """The docstring without its per-option section, paragraphs kept whole."""
    options: dict[str, str]
    """Option name -> its description (from ``Args:``, numpy ``Parameters``,
    ``:param x:`` or, failing those, the sentence of the prose that names ``x``)."""


def factory_doc(factory: Callable[..., Any], names: list[str] | None = None) -> FactoryDoc:
    """Parse the docstring of ``factory`` (a class's own, else its ``__init__``'s)."""
    doc = inspect.getdoc(factory) or ""
    if inspect.isclass(factory) and not doc.strip():
        doc = inspect.getdoc(factory.__init__) or ""
    lines = doc.splitlines()
    kept: list[str] = []
    described: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        numpy_section = (
            line.strip() in ("Parameters", "Other Parameters", "Options")
            and i + 1 < len(lines)
            and set(lines[i + 1].strip()) == {"-"}
        )
        if _SECTION_RE.match(line.strip()) or numpy_section:
            i += 2 if numpy_section else 1
            current = None
            base = None
            while i < len(lines) and (
                not lines[i].strip() or lines[i][:1].isspace() or numpy_section
            ):
                text = lines[i]
                if numpy_section and text.strip() and not text[:1].isspace():
                    if i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}:
                        break  # the next numpy section
                    match = _NUMPY_ITEM_RE.match(text.strip())
                    current = match.group(1) if match else None
                    if current:
                        # "name : type" (numpy) or "name: what it does" (biovfm's own)
                        rest = (match.group(2) or ":")[1:].strip()
                        described[current] = rest if len(rest.split()) > 2 else ""
                    i += 1
                    continue
                if not text.strip():
                    i += 1
                    continue
                indent = len(text) - len(text.lstrip())
                match = _GOOGLE_ITEM_RE.match(text.strip()) if not numpy_section else None
                if match and (base is None or indent <= base):
                    base = indent
                    current = match.group(1).lstrip("*")
                    described[current] = match.group(3).strip()
                elif current:
                    described[current] = (described[current] + " " + text.strip()).strip()
                i += 1
            continue
        match = _SPHINX_RE.match(line.strip())
        if match:
            current = match.group(1)
            described[current] = match.group(2).strip()
            i += 1
            while i < len(lines) and lines[i][:1].isspace() and lines[i].strip():
                described[current] += " " + lines[i].strip()
                i += 1
            continue
        kept.append(line)
        i += 1
    text = "\n".join(kept).strip()
    for name in names or []:
        if name not in described:
            sentence = _prose_mention(text, name)
            if sentence:
                described[name] = sentence
    return FactoryDoc(text, described)


def _prose_mention(text: str, name: str) -> str | None:
    """The clause of a prose docstring that names ``name`` in double backquotes."""
    flat = " ".join(text.split())
    for clause in re.split(r";\s+|(?<=[a-z0-9)])\.\s+", flat):
        if f"``{name}``" in clause:
            return clause.strip().rstrip(".").replace("``", "")
    return None
