"""A measurement's own options: a frozen dataclass per measurement, and how they are read.

Each measurement that has options declares them as a frozen subclass of :class:`MetricOptions`
(``MetricSpec.options``), with defaults, a help line per field (``field(metadata={"help": …})``)
and its own validation. ``StudyConfig.options`` maps measurement names to these objects;
``config.json`` nests them under ``options``; the command line sets one with
``--set MEASUREMENT.FIELD=VALUE``, converted to the field's type (a ``Literal`` field lists its
valid values).

``config.json`` of runs written before options were nested holds them flat (``skip_mode``,
``ig_steps``, …): :func:`nest_flat_options` reads such a file's config as today's (for
``load_run`` and a study resumed into such a directory); those names are no option's names.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from ..errors import ConfigError, close_matches
from ..frozen import check_field_types, from_dict

__all__ = ["MetricOptions", "option_fields", "describe_type", "parse_option", "flatten_options",
           "FLAT_OPTIONS", "nest_flat_options"]


@dataclasses.dataclass(frozen=True)
class MetricOptions:
    """Base of a measurement's options: frozen, type-checked field by field, then
    :meth:`validate` (the measurement's own rules) and, once the study is known,
    :meth:`check` (rules that involve the study's core options, e.g. ``skip_front``)."""

    #: the measurement these options belong to (set when the spec is registered)
    measurement: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_field_types(self, f"{self.measurement or 'measurement'} option")
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the option and its valid values."""

    def qualified(self, name: str) -> str:
        """``skip_effects.n_cuts``: how errors and ``--set`` name a field."""
        return f"{self.measurement}.{name}" if self.measurement else name

    def require_positive(self, *names: str) -> None:
        """Each named field is None or an integer >= 1."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{self.qualified(name)} must be >= 1, got {value}")

    def check(self, config: Any) -> None:
        """Rules against the study's core options (``config`` is the ``StudyConfig``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], what: str = "options") -> MetricOptions:
        return from_dict(cls, data, what)


def option_fields(cls: type) -> list[tuple[str, Any, Any, str]]:
    """``(name, type hint, default, help)`` of every field of an options class."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append((f.name, hints.get(f.name, Any), default, str(f.metadata.get("help", ""))))
    return out


def describe_type(hint: Any) -> str:
    """``block|attn|mlp|local``, ``int``, ``int|none``: what a ``--set`` value may be."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return "|".join(describe_type(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "none"
    return getattr(hint, "__name__", str(hint))


def _convert(text: str, hint: Any) -> Any:
    """``text`` as a value of ``hint`` (the first type of a union that accepts it)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        for h in args:
            if h is type(None):
                continue
            try:
                return _convert(text, h)
            except ValueError:
                continue
        raise ValueError(text)
    if origin is Literal:
        for a in typing.get_args(hint):
            if str(a) == text:
                return a
        raise ValueError(text)
    if hint is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(text)
    if hint is int:
        return int(text)
    if hint is float:
        return float(text)
    return text


def parse_option(measurement: str, cls: type, name: str, text: str) -> Any:
    """The value of ``--set MEASUREMENT.NAME=TEXT``, converted to the field's type; an unknown
    field or a value of the wrong type is an error naming the valid ones."""
    fields = {n: hint for n, hint, _, _ in option_fields(cls)}
    if name not in fields:
        raise ConfigError(f"{measurement} has no option {name!r}{close_matches(name, fields)} "
                          f"Options of {measurement}: {', '.join(fields)}")
    try:
        return _convert(text, fields[name])
    except ValueError:
        raise ConfigError(f"{measurement}.{name} must be {describe_type(fields[name])}, got "
                          f"{text!r}") from None


def flatten_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``{"skip_effects.mode": "current", …}`` from nested options (tables, diffs)."""
    out = {}
    for measurement, values in options.items():
        if isinstance(values, MetricOptions):
            values = values.to_dict()
        if isinstance(values, Mapping):
            for name, value in values.items():
                out[f"{measurement}.{name}"] = value
        else:
            out[measurement] = values
    return out


#: the measurement options as ``config.json`` of runs written before options were nested held
#: them, at the top of ``config``: ``name -> the (measurement, field) pairs it set``
#: (``map_examples`` set how many examples both map measurements draw)
FLAT_OPTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "lens_k": (("logit_lens", "k"),),
    "tuned_lens_steps": (("tuned_lens", "steps"),),
    "tuned_lens_ridge": (("tuned_lens", "ridge"),),
    "tuned_lens_examples": (("tuned_lens", "examples"),),
    "tuned_lens_data": (("tuned_lens", "data"),),
    "skip_mode": (("skip_effects", "mode"),),
    "skip_component": (("skip_effects", "component"),),
    "aggregate": (("skip_effects", "aggregate"),),
    "n_cuts": (("skip_effects", "n_cuts"),),
    "cut_start": (("skip_effects", "cut_start"),),
    "cut_stride": (("skip_effects", "cut_stride"),),
    "cut_margin": (("skip_effects", "cut_margin"),),
    "map_examples": (("erasure", "map_examples"), ("integrated_gradients", "map_examples")),
    "n_reference": (("erasure", "n_reference"),),
    "ig_steps": (("integrated_gradients", "steps"),),
    "ig_rule": (("integrated_gradients", "rule"),),
}


def nest_flat_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored ``config`` (``config.json``'s ``config``) with the flat measurement options of
    a run of an earlier version moved under ``options`` (:data:`FLAT_OPTIONS`); a config of
    today comes back as it is."""
    out = dict(config)
    flat = [k for k in out if k in FLAT_OPTIONS]
    if not flat:
        return out
    options = {m: dict(v) for m, v in dict(out.pop("options", None) or {}).items()}
    for key in flat:
        value = out.pop(key)
        for measurement, name in FLAT_OPTIONS[key]:
            options.setdefault(measurement, {})[name] = value
    out["options"] = options
    return out
