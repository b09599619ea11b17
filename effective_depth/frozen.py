"""Strict construction of the frozen dataclasses that hold configs and recipes.

Configs come from JSON, YAML and the command line, where lists stand for tuples, typos are common
and ``--set n_boot=1.5`` or ``--set batch_size=true`` parse to the wrong type: unknown keys are
refused with the valid ones and the closest match, list fields are turned back into tuples, and
every value is checked against its field's type hint before anything runs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ConfigError, close_matches

__all__ = ["from_dict", "check_field_types"]

T = TypeVar("T")

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
          dict: "a mapping", tuple: "a list", list: "a list", type(None): "null"}


def from_dict(cls: type[T], data: Mapping[str, Any], what: str, tuples: tuple[str, ...] = ()) -> T:
    """``cls(**data)``, refusing keys ``cls`` does not have; ``tuples`` name list-valued fields."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} must be a mapping of option names to values, got "
                          f"{type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}{close_matches(unknown[0], known)} "
                          f"Valid: {', '.join(sorted(known))}")
    values = dict(data)
    for name in tuples:
        if name in values and isinstance(values[name], (list, tuple)):
            values[name] = tuple(values[name])
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        _check_value(name, hints.get(name, Any), value, what.removesuffix("s"))
    return cls(**values)


def _check_value(name: str, hint: Any, value: Any, what: str) -> None:
    if not _accepts(hint, value):
        raise ConfigError(f"{what} {name} must be {_describe(hint)}, got {value!r} "
                          f"({type(value).__name__})")


def _accepts(hint: Any, value: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if hint is type(None) or hint is None:
        return value is None
    base = origin or hint
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return not args or all(_accepts(args[0], v) for v in value)
    if base is dict:
        if not isinstance(value, Mapping):
            return False
        args = typing.get_args(hint)
        return not args or all(_accepts(args[1], v) for v in value.values())
    return isinstance(value, base)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(hint))
    base = origin or hint
    if base in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return "a list" + (f" of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
                           if args else "")
    return _NAMES.get(base, getattr(base, "__name__", str(base)))


def check_field_types(obj: Any, what: str) -> None:
    """Raise :class:`ConfigError` naming the first field whose value does not fit its type hint
    (``True`` is not an integer; an integer is a number)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        _check_value(f.name, hints.get(f.name, Any), getattr(obj, f.name), what)
