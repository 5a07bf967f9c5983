"""Typed values from loose YAML, and the error that says where a value came from.

YAML 1.1 leaves ``1e-3`` a string and knows no tuples; the schema's type hints decide what a value becomes.
``sources`` maps each dotted key to where it was given (a file, a preset, "command line"), so every error names
the place, the key, the value and what is allowed.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from typing import Any, Literal, Mapping


class SpecError(ValueError):
    """A spec that cannot be used; the message says where, what was given and what is allowed."""


def where(sources: dict, key: str) -> str:
    """Where the value at ``key`` (or the nearest block above it) was given."""
    while key:
        if key in sources:
            return sources[key]
        key = key.rpartition(".")[0]
    return "defaults"


def error(sources, key, value, allowed) -> SpecError:
    return SpecError(f"{where(sources, key)}: {key}: got {value!r}; allowed: {allowed}")


def coerce(value: Any, hint: Any, key: str, sources: dict) -> Any:
    """Convert ``value`` to ``hint`` where YAML leaves it loose (``1e-3`` is a string in YAML 1.1), else fail."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise error(sources, key, value, f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(hint))}")
        return hint(**fill(hint, dict(value), key, sources))
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        nested = [a for a in args if dataclasses.is_dataclass(a)]
        if nested:   # Optional[a block]: its own errors name the inner key
            return coerce(value, nested[0], key, sources)
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key, sources)
            except SpecError:
                pass
        raise error(sources, key, value, " or ".join([describe(a) for a in args]))
    if origin is Literal:
        if value in args:
            return value
        raise error(sources, key, value, "one of " + ", ".join(map(str, args)))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):   # inf, .inf, 1e400 and nan are never a setting
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            item = args[0] if args else Any
            return tuple(coerce(v, item, f"{key}[{i}]", sources) for i, v in enumerate(value))
        raise error(sources, key, value, f"a list of {describe(args[0] if args else Any)}")
    elif origin is collections.abc.Mapping:
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return {k: coerce(v, args[1], f"{key}.{k}", sources) for k, v in value.items()}
        raise error(sources, key, value, "a mapping of names to values")
    else:
        return value
    raise error(sources, key, value, describe(hint))


def describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (tuple, list):
        return f"a list of {describe(args[0]) if args else 'values'}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(hint, str(hint))


def fill(cls, values: dict, block: str, sources: dict, extra_options: dict | None = None):
    hints = typing.get_type_hints(cls)
    kwargs, options = {}, {}
    for key, value in values.items():
        dotted = f"{block}.{key}"
        if key in hints and key != "options":
            kwargs[key] = coerce(value, hints[key], dotted, sources)
            check = next(f for f in dataclasses.fields(cls) if f.name == key).metadata.get("check")
            if check and not check[0](kwargs[key]):
                raise error(sources, dotted, value, check[1])
        elif extra_options is not None and key in extra_options:
            hint, _ = extra_options[key]
            options[key] = coerce(value, hint, dotted, sources)
        else:
            allowed = sorted(k for k in hints if k not in ("options", "name")) + sorted(extra_options or {})
            raise SpecError(f"{where(sources, dotted)}: {dotted}: unknown key; allowed: {', '.join(allowed)}")
    if extra_options is not None:
        # The resolved spec names every option, the builder's defaults included, so a run records all of them.
        kwargs["options"] = {k: options.get(k, default) for k, (_, default) in extra_options.items()}
    return kwargs
