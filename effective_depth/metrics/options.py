"""A measurement's own options: a frozen dataclass per measurement, and how they are read.

Each measurement that has options declares them as a frozen subclass of :class:`MetricOptions`
(``MetricSpec.options``), with defaults, a help line per field (``field(metadata={"help": …})``)
and its own validation. ``StudyConfig.options`` maps measurement names to these objects;
``config.json`` nests them under ``options``; the command line sets one with
``--set MEASUREMENT.FIELD=VALUE``, converted to the field's type (a ``Literal`` field lists its
valid values).

Before options were nested, they were flat study options (``skip_mode``, ``ig_steps``, …). Those
names are still read — in config files, ``config.json`` of older run directories, ``--set``, and
as ``StudyConfig`` keywords — through the one table :data:`FLAT_OPTIONS`.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from ..errors import ConfigError, close_matches
from ..frozen import check_field_types, from_dict

__all__ = ["MetricOptions", "FLAT_OPTIONS", "nest_flat", "option_fields", "parse_option",
           "parse_setting", "flatten_options"]

log = logging.getLogger(__name__)

#: every flat option name of the past and where it lives now: ``name -> (measurement, field)``.
#: The one place that maps old names; add a row when an option moves into a measurement.
FLAT_OPTIONS: dict[str, tuple[str, str]] = {
    "lens_k": ("logit_lens", "k"),
    "tuned_lens_steps": ("tuned_lens", "steps"),
    "tuned_lens_ridge": ("tuned_lens", "ridge"),
    "tuned_lens_examples": ("tuned_lens", "examples"),
    "tuned_lens_data": ("tuned_lens", "data"),
    "skip_mode": ("skip_effects", "mode"),
    "skip_component": ("skip_effects", "component"),
    "aggregate": ("skip_effects", "aggregate"),
    "n_cuts": ("skip_effects", "n_cuts"),
    "cut_start": ("skip_effects", "cut_start"),
    "cut_stride": ("skip_effects", "cut_stride"),
    "cut_margin": ("skip_effects", "cut_margin"),
    "map_examples": ("erasure", "map_examples"),
    "n_reference": ("erasure", "n_reference"),
    "ig_steps": ("integrated_gradients", "steps"),
    "ig_rule": ("integrated_gradients", "rule"),
}

#: flat names whose value went to more than one measurement: ``name -> extra (measurement, field)``
#: (``map_examples`` set how many examples both map measurements draw)
FLAT_ALSO: dict[str, tuple[tuple[str, str], ...]] = {
    "map_examples": (("integrated_gradients", "map_examples"),),
}


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


def parse_option(measurement: str, cls: type, name: str, text: str, label: str = "") -> Any:
    """The value of ``--set MEASUREMENT.NAME=TEXT``, converted to the field's type; an unknown
    field or a value of the wrong type is an error naming the valid ones (and ``label``, the
    name the user wrote, when it was a flat one)."""
    fields = {n: hint for n, hint, _, _ in option_fields(cls)}
    if name not in fields:
        raise ConfigError(f"{measurement} has no option {name!r}{close_matches(name, fields)} "
                          f"Options of {measurement}: {', '.join(fields)}")
    try:
        return _convert(text, fields[name])
    except ValueError:
        what = f"{label} ({measurement}.{name})" if label else f"{measurement}.{name}"
        raise ConfigError(f"{what} must be {describe_type(fields[name])}, got {text!r}") from None


def parse_setting(key: str, text: str) -> tuple[str, str, Any]:
    """``("skip_effects", "mode", "current")`` from ``--set skip_effects.mode=current`` (or the
    flat ``--set skip_mode=current``); unknown names are errors with the closest ones."""
    from .registry import metric_specs

    with_options = {s.name: s.options for s in metric_specs() if s.options is not None}
    label = ""
    if "." not in key:
        if key not in FLAT_OPTIONS:
            raise KeyError(key)  # not a measurement's option: the caller tries the core options
        measurement, name = FLAT_OPTIONS[key]
        label = key
    else:
        measurement, name = key.split(".", 1)
    if measurement not in with_options:
        names = sorted(with_options)
        raise ConfigError(f"no measurement with options named {measurement!r}"
                          f"{close_matches(measurement, names)} Measurements with options: "
                          f"{', '.join(names)}")
    return measurement, name, parse_option(measurement, with_options[measurement], name, text,
                                           label)


def nest_flat(data: Mapping[str, Any], where: str = "config", note: bool = True) -> dict[str, Any]:
    """``data`` with its flat measurement options (``skip_mode: current``) moved to
    ``options: {skip_effects: {mode: current}}`` and its dotted keys (``skip_effects.mode``)
    likewise; a note is logged for the flat names. A flat or dotted key wins over the same
    option in ``options`` (command-line values are merged in as such keys)."""
    out = {k: v for k, v in data.items()}
    options = {m: dict(v) if isinstance(v, Mapping) else v
               for m, v in dict(out.pop("options", None) or {}).items()}
    moved = []
    for key in list(out):
        if key in FLAT_OPTIONS:
            targets = (FLAT_OPTIONS[key], *FLAT_ALSO.get(key, ()))
            moved.append(key)
        elif "." in key and not key.startswith("."):
            targets = (tuple(key.split(".", 1)),)  # type: ignore[assignment]
        else:
            continue
        value = out.pop(key)
        for measurement, name in targets:
            entry = options.setdefault(measurement, {})
            if isinstance(entry, Mapping):
                entry = dict(entry)
            else:  # an options object: its fields, so that the flat name can be merged in
                entry = entry.to_dict()
            entry[name] = value
            options[measurement] = entry
    if moved and note:
        log.info("%s: the flat options %s are read as %s", where, ", ".join(moved),
                 ", ".join(".".join(FLAT_OPTIONS[k]) for k in moved))
    if options or "options" in data:
        out["options"] = options
    return out


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
