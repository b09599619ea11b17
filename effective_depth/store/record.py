"""The typed run record: what a run directory's JSON files hold, as frozen dataclasses.

``results.json`` is read back as a :class:`RunRecord`, ``config.json`` as a :class:`RunConfig`
and ``inputs.json`` as a :class:`RunInputs`; every consumer reads them by attribute, so a
misspelt key is an ``AttributeError``, never a silent ``None``. The files keep their format
(``FORMAT_VERSION`` 1): ``to_json(from_json(d)) == d`` for every mapping a study writes (key
order included, so the written bytes are the same), and for the older run directories
``load_run`` reads (no ``resources``, no ``per_prompt``, no ``status``, an interrupted run).

- A key the record does not know is **kept**, not rejected: it is in the record's ``extra``
  mapping and written back unchanged (a measurement's ``summaries`` may add top-level keys; a
  newer version may add fields). Forward compatible: an older reader loses nothing.
- A key that is absent reads as the field's default (``None``, an empty mapping or tuple, or a
  study default for a config field) and stays absent when written back.
- A value of the wrong JSON type (``"depth": [..]``, ``"completed": "x"``, an estimate without
  ``layer``) is a :class:`~effective_depth.errors.ResultsError` naming the file and the key.

Sub-values whose shape belongs to a measurement (``curves``, ``meta``, ``params``, the model's
``source``, ...) stay plain JSON (dicts and lists): treat them as read-only.
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

from ..errors import ResultsError

__all__ = [
    "RunRecord", "ModelInfo", "TaskInfo", "Settings", "MetricEntry", "ResourceEntry",
    "EstimateEntry", "ScoreEntry", "PerPromptEntry", "WarningEntry",
    "RunConfig", "StudyFields", "RunInputs", "ExampleEntry", "depth_entry", "FORMAT_VERSION",
]

#: the version of the run directory's format (``results.json``'s ``format``); a run of another
#: version is refused (a run without one is of version 1)
FORMAT_VERSION = 1

R = TypeVar("R", bound="_Record")
_NUMBER = (int, float)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value),
                                                                         type(value).__name__)


def _malformed(where: str, path: str, value: Any, expected: str) -> ResultsError:
    return ResultsError(f"{where} is malformed: {path} holds {_type_name(value)}, expected "
                        f"{expected}; rerun the study with --force to rewrite it")


# --- codecs: how one JSON value becomes a field and back --------------------------------------
class _Codec:
    def read(self, value: Any, where: str, path: str) -> Any:
        raise NotImplementedError

    def write(self, value: Any) -> Any:
        raise NotImplementedError


class _Scalar(_Codec):
    """A JSON scalar of the given types (an integer is never a boolean)."""

    def __init__(self, types: tuple[type, ...], expected: str, nullable: bool = True) -> None:
        self.types, self.expected, self.nullable = types, expected, nullable

    def read(self, value: Any, where: str, path: str) -> Any:
        if value is None and self.nullable:
            return None
        if isinstance(value, bool) and bool not in self.types:
            raise _malformed(where, path, value, self.expected)
        if not isinstance(value, self.types):
            raise _malformed(where, path, value, self.expected)
        return value

    def write(self, value: Any) -> Any:
        return value


class _Raw(_Codec):
    """A JSON value whose inner shape the record does not own (checked at the top only)."""

    def __init__(self, types: tuple[type, ...] | None, expected: str, nullable: bool = True
                 ) -> None:
        self.types, self.expected, self.nullable = types, expected, nullable

    def read(self, value: Any, where: str, path: str) -> Any:
        if value is None and self.nullable:
            return None
        if self.types is not None and not isinstance(value, self.types):
            raise _malformed(where, path, value, self.expected)
        return value

    def write(self, value: Any) -> Any:
        return copy.deepcopy(value)


class _Tuple(_Codec):
    """A JSON list read as a tuple of ``item`` values (a list again when written)."""

    def __init__(self, item: _Codec, nullable: bool = False) -> None:
        self.item, self.nullable = item, nullable

    def read(self, value: Any, where: str, path: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, list):
            raise _malformed(where, path, value, "a list")
        return tuple(self.item.read(v, where, _join(path, i)) for i, v in enumerate(value))

    def write(self, value: Any) -> Any:
        return None if value is None else [self.item.write(v) for v in value]


class _Map(_Codec):
    """A JSON mapping of names to ``item`` values."""

    def __init__(self, item: _Codec) -> None:
        self.item = item

    def read(self, value: Any, where: str, path: str) -> Any:
        if not isinstance(value, dict):
            raise _malformed(where, path, value, "a mapping")
        return {k: self.item.read(v, where, _join(path, k)) for k, v in value.items()}

    def write(self, value: Any) -> Any:
        return {k: self.item.write(v) for k, v in value.items()}


class _Nested(_Codec):
    def __init__(self, cls: type[_Record], nullable: bool = False) -> None:
        self.cls, self.nullable = cls, nullable

    def read(self, value: Any, where: str, path: str) -> Any:
        if value is None and self.nullable:
            return None
        return self.cls.from_json(value, where, path)

    def write(self, value: Any) -> Any:
        return None if value is None else value.to_json()


class _DepthCodec(_Codec):
    """An entry of ``depth``: an estimate (it has ``layer``) or a score (it has ``value``)."""

    def read(self, value: Any, where: str, path: str) -> Any:
        if isinstance(value, dict) and "layer" not in value and "value" in value:
            return ScoreEntry.from_json(value, where, path)
        return EstimateEntry.from_json(value, where, path)

    def write(self, value: Any) -> Any:
        return value.to_json()


_INT = _Scalar((int,), "an integer")
_NUM = _Scalar(_NUMBER, "a number")
_STR = _Scalar((str,), "a string")
_BOOL = _Scalar((bool,), "a boolean")
_ANY_SCALAR = _Scalar((int, float, str, bool), "a number or a string")
_DICT = _Raw((dict,), "a mapping", nullable=False)
_DICT_OR_NULL = _Raw((dict,), "a mapping or null")
_LIST = _Raw((list,), "a list", nullable=False)
_ANY = _Raw(None, "any JSON value")
_PAIR = _Tuple(_NUM, nullable=True)


def _f(codec: _Codec, default: Any = None, *, key: str | None = None, required: bool = False,
       factory: Any = None) -> Any:
    """A record field: its codec, JSON key (the attribute's name unless given), default."""
    meta = {"codec": codec, "key": key, "required": required}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class _Record:
    """The machinery every record shares: ``from_json``, ``to_json``, unknown keys in
    ``extra``, the source's key order (so a record written back is the same JSON text)."""

    #: keys of the JSON mapping that the record does not know, kept and written back as read
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False)
    #: the key order of the mapping read (None when built in code)
    _keys: tuple[str, ...] | None = field(default=None, kw_only=True, repr=False,
                                          compare=False)

    _what: ClassVar[str] = "a mapping"

    @classmethod
    def _known(cls) -> dict[str, Any]:
        return {(f.metadata.get("key") or f.name): f for f in fields(cls) if "codec" in f.metadata}

    @classmethod
    def from_json(cls: type[R], data: Any, where: str = "results.json", path: str = "") -> R:
        """The record of ``data`` (a mapping read from ``where``; ``path`` is its key there)."""
        if not isinstance(data, dict):
            if not path:
                raise ResultsError(f"{where} holds a JSON {type(data).__name__}, not the mapping "
                                   "a run writes; rerun the study with --force")
            raise _malformed(where, path, data, cls._what)
        known = cls._known()
        kw: dict[str, Any] = {}
        for key, f in known.items():
            if key in data:
                kw[f.name] = f.metadata["codec"].read(data[key], where, _join(path, key))
            elif f.metadata["required"]:
                raise ResultsError(f"{where} is malformed: {_join(path, key)} is missing ("
                                   f"{path or 'the file'} must have {key!r}); rerun the study "
                                   "with --force to rewrite it")
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**kw, extra=extra, _keys=tuple(data))

    def to_json(self) -> dict[str, Any]:
        """The JSON mapping of this record: the keys read, in their order, then fields set in
        code (a field absent when read and still at its default stays absent)."""
        known = self._known()
        out: dict[str, Any] = {}

        def put(key: str) -> None:
            if key in known:
                out[key] = known[key].metadata["codec"].write(getattr(self, known[key].name))
            elif key in self.extra:
                out[key] = copy.deepcopy(self.extra[key])

        for key in self._keys or ():
            put(key)
        for key, f in known.items():
            if key in out:
                continue
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if f.metadata["required"] or getattr(self, f.name) != default:
                put(key)
        for key in self.extra:
            if key not in out:
                put(key)
        return out

    def replace(self: R, **changes: Any) -> R:
        """A copy with ``changes`` (``dataclasses.replace``; the key order is kept)."""
        return replace(self, **changes)


# --- results.json --------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo(_Record):
    """``results.json``'s ``model``: the model as the study loaded it."""

    name: str | None = _f(_STR)
    n_layers: int | None = _f(_INT)
    d_model: int | None = _f(_INT)
    d_vocab: int | None = _f(_INT)
    n_ctx: int | None = _f(_INT)
    architecture: str | None = _f(_STR)
    n_params: int | None = _f(_INT)
    n_params_embedding: int | None = _f(_INT)
    n_params_non_embedding: int | None = _f(_INT)
    n_params_method: str | None = _f(_STR)
    #: how it was loaded: kind, path, backend, device, dtype, weight processing
    source: dict[str, Any] = _f(_DICT, factory=dict)


@dataclass(frozen=True)
class TaskInfo(_Record):
    """``results.json``'s ``task``: its name, validated parameters, level and size."""

    name: str | None = _f(_STR)
    params: dict[str, Any] = _f(_DICT, factory=dict)
    difficulty: Any = _f(_ANY_SCALAR)
    difficulty_source: str | None = _f(_STR)
    n_examples: int | None = _f(_INT)

    def params_text(self, drop: tuple[str, ...] = ()) -> str:
        """``k=v,k=v`` of the parameters but ``drop``."""
        return ",".join(f"{k}={v}" for k, v in self.params.items() if k not in drop)


@dataclass(frozen=True)
class Settings(_Record):
    """``results.json``'s ``settings``: what the study derived."""

    rules: str | None = _f(_STR)
    skipped_metrics: tuple[str, ...] = _f(_Tuple(_STR), factory=tuple)


@dataclass(frozen=True)
class MetricEntry(_Record):
    """``metrics.<name>``: a measurement's ``curves`` and ``meta`` (their keys are the
    measurement's own; further keys such as ``cuts`` are in ``extra``)."""

    meta: dict[str, Any] = _f(_DICT, factory=dict)
    curves: dict[str, Any] = _f(_DICT, factory=dict)


@dataclass(frozen=True)
class ResourceEntry(_Record):
    """``resources.<name>``: wall time and peak memory of one measurement."""

    seconds: float | None = _f(_NUM)
    peak_rss_gib: float | None = _f(_NUM)
    peak_cuda_gib: float | None = _f(_NUM)
    rss_kind: str | None = _f(_STR)


@dataclass(frozen=True)
class EstimateEntry(_Record):
    """``depth.<estimator>``: an effective depth with its CI, or ``layer`` None and the
    ``reason`` (also the stand-in :meth:`Run.estimate_entry` gives for an absent one)."""

    _what: ClassVar[str] = "an estimate mapping"
    kind: ClassVar[str] = "estimator"

    layer: int | None = _f(_INT, required=True)
    reason: str | None = _f(_STR)
    name: str | None = _f(_STR)
    n_layers: int | None = _f(_INT)
    ci: tuple[float, float] | None = _f(_PAIR)
    layer_ci: tuple[float, float] | None = _f(_PAIR)
    undefined_fraction: float | None = _f(_NUM)
    n_boot: int | None = _f(_INT)
    params: dict[str, Any] = _f(_DICT, factory=dict)
    notes: tuple[str, ...] = _f(_Tuple(_STR), factory=tuple)
    ratio: float | None = _f(_NUM)

    @property
    def defined(self) -> bool:
        return self.layer is not None

    @property
    def threshold(self) -> float | None:
        value = self.params.get("threshold")
        return None if value is None else float(value)

    @property
    def shown(self) -> float | None:
        """The number a table shows for it: the ratio."""
        return self.ratio


@dataclass(frozen=True)
class ScoreEntry(_Record):
    """``depth.<score>``: a scalar score (the depth score) with its bootstrap CI."""

    _what: ClassVar[str] = "a score mapping"
    kind: ClassVar[str] = "score"

    value: float | None = _f(_NUM, required=True)
    ci: tuple[float, float] | None = _f(_PAIR)
    n_boot: int | None = _f(_INT)
    n_layers: int | None = _f(_INT)

    @property
    def shown(self) -> float | None:
        return self.value


@dataclass(frozen=True)
class PerPromptEntry(_Record):
    """``per_prompt.<estimator>``: the estimator on each prompt alone."""

    n_layers: int = _f(_INT, 0, required=True)
    layers: tuple[int | None, ...] = _f(_Tuple(_INT), factory=tuple, required=True)
    ratios: tuple[float | None, ...] = _f(_Tuple(_NUM), factory=tuple)
    #: reason -> indices of the prompts it left undefined
    undefined: dict[str, Any] = _f(_DICT, factory=dict)
    params: dict[str, Any] = _f(_DICT, factory=dict)
    summary: dict[str, Any] = _f(_DICT, factory=dict)


@dataclass(frozen=True)
class WarningEntry(_Record):
    """One of ``warnings``: a condition of ``docs/methods.md`` §8 that held (``code``,
    ``message``; ``estimators`` when it concerns some)."""

    code: str | None = _f(_STR)
    message: str = _f(_STR, "", required=True)
    estimators: tuple[str, ...] = _f(_Tuple(_STR), factory=tuple)


@dataclass(frozen=True)
class RunRecord(_Record):
    """``results.json``, typed. Every key is optional (an interrupted run holds only the
    measurements it finished; older runs lack ``resources``, ``per_prompt``, ``status``)."""

    format: int | None = _f(_INT)
    completed: tuple[str, ...] = _f(_Tuple(_STR), factory=tuple)
    model: ModelInfo = _f(_Nested(ModelInfo), factory=ModelInfo)
    task: TaskInfo = _f(_Nested(TaskInfo), factory=TaskInfo)
    settings: Settings = _f(_Nested(Settings), factory=Settings)
    metrics: dict[str, MetricEntry] = _f(_Map(_Nested(MetricEntry)), factory=dict)
    #: seconds per measurement
    timing: dict[str, float] = _f(_Map(_NUM), factory=dict)
    resources: dict[str, ResourceEntry] = _f(_Map(_Nested(ResourceEntry)), factory=dict)
    #: estimates (``ed_*``) and scores (``depth_score``), by name
    depth: dict[str, EstimateEntry | ScoreEntry] = _f(_Map(_DepthCodec()), factory=dict)
    per_prompt: dict[str, PerPromptEntry] = _f(_Map(_Nested(PerPromptEntry)), factory=dict)
    accuracy: float | None = _f(_NUM)
    warnings: tuple[WarningEntry, ...] = _f(_Tuple(_Nested(WarningEntry)), factory=tuple)
    status: str | None = _f(_STR)

    @classmethod
    def from_json(cls, data: Any, where: str = "results.json", path: str = "") -> RunRecord:
        """The record of a ``results.json`` mapping; one of another format version is refused
        before anything else is read."""
        if isinstance(data, dict) and "format" in data and data["format"] != FORMAT_VERSION:
            raise ResultsError(f"{where} was written in format version {data['format']!r}; this "
                               f"version of effective_depth reads version {FORMAT_VERSION}: "
                               "rerun the study with --force, or use the version that wrote it")
        return super().from_json(data, where, path)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def estimates(self) -> dict[str, EstimateEntry]:
        """The estimator entries of ``depth`` (scores left out)."""
        return {k: v for k, v in self.depth.items() if isinstance(v, EstimateEntry)}

    def scores(self) -> dict[str, ScoreEntry]:
        """The score entries of ``depth``."""
        return {k: v for k, v in self.depth.items() if isinstance(v, ScoreEntry)}


def depth_entry(data: Any, where: str = "results.json", path: str = "depth"
                ) -> EstimateEntry | ScoreEntry:
    """An entry of ``depth`` (a mapping, e.g. ``Estimate.to_dict()``) as its record: an
    :class:`EstimateEntry` when it has ``layer``, else a :class:`ScoreEntry`."""
    return _DepthCodec().read(data, where, path)


# --- config.json ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyFields(_Record):
    """``config.json``'s ``config``: the study's options as stored. An absent field reads as
    :class:`~effective_depth.study.StudyConfig`'s default (a test keeps the two equal), but
    ``metrics``: None when the file does not say which measurements were asked for."""

    model: str | None = _f(_STR)
    task: str | None = _f(_STR)
    task_params: dict[str, Any] = _f(_DICT, factory=dict)
    metrics: tuple[str, ...] | None = _f(_Tuple(_STR, nullable=True))
    n_examples: int = _f(_INT, 20)
    seed: int = _f(_INT, 0)
    thresholds: dict[str, Any] = _f(_DICT, factory=dict)
    rules: str = _f(_STR, "toolkit")
    skip_front: int = _f(_INT, 1)
    include_front: bool = _f(_BOOL, True)
    positions: str = _f(_STR, "all")
    n_boot: int = _f(_INT, 1000)
    ci_level: float = _f(_NUM, 0.95)
    device: str | None = _f(_STR)
    dtype: str | None = _f(_STR)
    precision: str = _f(_STR, "auto")
    backend: str = _f(_STR, "hooked")
    process_weights: bool = _f(_BOOL, False)
    batch_size: int = _f(_INT, 8)
    allow_lossy_tokenization: bool = _f(_BOOL, False)
    chat_template: bool | str = _f(_Scalar((bool, str), "a boolean or a string"), False)
    system_prompt: str | None = _f(_STR)
    #: every measurement's own options, by measurement
    options: dict[str, Any] = _f(_DICT, factory=dict)

    def options_of(self, measurement: str) -> dict[str, Any]:
        """The stored options of ``measurement`` ({} when the run did not record them)."""
        return dict(self.options.get(measurement) or {})


@dataclass(frozen=True)
class RunConfig(_Record):
    """``config.json``, typed: the hash, the study's options, fingerprints, environment."""

    _what: ClassVar[str] = "a config mapping"

    hash: str | None = _f(_STR)
    config: StudyFields = _f(_Nested(StudyFields), factory=StudyFields)
    fingerprint: dict[str, Any] = _f(_DICT, factory=dict)
    environment: dict[str, Any] = _f(_DICT, factory=dict)
    #: how the text became tokens: the BOS, whether the model reads it, the chat template
    tokens: dict[str, Any] = _f(_DICT, factory=dict)


# --- inputs.json ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ExampleEntry(_Record):
    """One analysed example of ``inputs.json``: the text, its meta, the token ids the model
    read; what a measurement drew for it (``cuts``) is in ``extra``."""

    prompt: str = _f(_STR, "")
    answer: str | None = _f(_STR)
    meta: dict[str, Any] = _f(_DICT_OR_NULL, factory=dict)
    tokens: tuple[int, ...] = _f(_Tuple(_INT), factory=tuple)
    str_tokens: tuple[str, ...] = _f(_Tuple(_STR), factory=tuple)
    answer_start: int | None = _f(_INT)

    @property
    def difficulty(self) -> Any:
        return (self.meta or {}).get("difficulty")


@dataclass(frozen=True)
class RunInputs(_Record):
    """``inputs.json``, typed: the analysed examples and the erasure's reference prompts."""

    examples: tuple[ExampleEntry, ...] = _f(_Tuple(_Nested(ExampleEntry)), factory=tuple)
    reference: dict[str, Any] | None = _f(_DICT_OR_NULL)
