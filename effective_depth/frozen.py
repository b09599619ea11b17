"""Strict construction of the frozen dataclasses that hold configs and recipes.

Configs come from JSON, YAML and the command line, where lists stand for tuples and typos are
common: unknown keys are refused with the valid ones and the closest match, list fields are turned
back into tuples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ConfigError, close_matches

__all__ = ["from_dict"]

T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any], what: str, tuples: tuple[str, ...] = ()) -> T:
    """``cls(**data)``, refusing keys ``cls`` does not have; ``tuples`` name list-valued fields."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}{close_matches(unknown[0], known)} "
                          f"Valid: {', '.join(sorted(known))}")
    values = dict(data)
    for name in tuples:
        if name in values and values[name] is not None:
            values[name] = tuple(values[name])
    return cls(**values)
