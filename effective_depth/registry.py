"""The measurement registry: one :class:`MetricSpec` per measurement, declared in its own module.

A measurement says, in one place, everything the rest of the toolkit needs: its name and result
type, how a study runs it, what it adds to ``inputs.json``, which effective-depth estimators read
it (with their default thresholds and reliability checks), and the summaries it adds to
``results.json``. ``study``, ``results``, ``depth``, ``compare`` and the CLI read this registry
and name no measurement themselves. Adding a measurement is one module that calls
:func:`register_metric` (and, for a figure, one function in ``effective_depth.viz``); see
``docs/extending.md``.

This module imports nothing heavy: the built-in measurements register themselves when
``effective_depth.metrics`` is imported, which :func:`metric_specs` does on first use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, close_matches

__all__ = [
    "MetricSpec",
    "EstimatorSpec",
    "FitSpec",
    "StudyContext",
    "register_metric",
    "unregister_metric",
    "registered",
    "metric_specs",
    "metric_names",
    "dependency_order",
    "get_metric",
    "estimator_specs",
    "default_thresholds",
    "score_specs",
]

#: a rule's answer: the block index, or None and the reason it is undefined
Rule = tuple[int | None, str | None]


@dataclass(frozen=True)
class StudyContext:
    """What a study hands a measurement's ``run``: the loaded model, the encoded examples, the
    study's config, the measurement's own options (``options``), the per-example inputs the
    measurements asked for (``inputs``), the reference prompts when the spec draws them, and the
    results finished so far (``done``: at least those of ``requires`` that are in the study). A
    measurement with a :class:`FitSpec` also gets its training examples (``train``, encoded, with
    ``train_info`` saying where they came from) and the fitted object (``fitted``)."""

    model: Any
    batch: Any
    config: Any
    inputs: Mapping[str, list[Any]] = field(default_factory=dict)
    reference: Any = None
    reference_info: Mapping[str, Any] | None = None
    done: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = False
    train: Any = None
    train_info: Mapping[str, Any] | None = None
    fitted: Any = None
    options: Any = None

    def map_batch(self, n: int | None = None) -> Any:
        """The first ``n`` examples (default: the options' ``map_examples``): the ones that get
        a per-token map."""
        if n is None:
            n = self.options.map_examples
        return self.batch.select(list(range(min(n, self.batch.size))))


@dataclass(frozen=True)
class EstimatorSpec:
    """An effective-depth estimator read from one measurement's result.

    ``rule(result, threshold, rules)`` returns a function of a prompt sample (a list of prompt
    indices, or None for all prompts) that gives a :data:`Rule`. ``checks(result, threshold,
    d_vocab)`` returns the warnings (strings) under which the estimate is decided by chance.

    ``per_prompt`` says how the estimator reads *one* prompt (docs/methods.md, per-prompt depth):
    ``True`` (the default) — its rule applied to the one-prompt sample ``[i]`` is that prompt's
    depth, which holds whenever the rule recomputes its curve from the sample (a lens curve, an
    output-effect curve, per-prompt correctness); ``False`` — one prompt's data carry no depth;
    or a callable ``(result, threshold, rules) -> (i -> Rule)`` for a rule of its own.

    ``notes(result)`` returns what a reader must know to read the estimate (stored in its
    ``notes``), e.g. a range it cannot leave by construction.
    """

    name: str
    metric: str
    rule: Callable[[Any, float | None, str], Callable[[Sequence[int] | None], Rule]]
    threshold: float | None = None
    description: str = ""
    checks: Callable[[Any, float | None, int | None], list[tuple[str, str]]] | None = None
    per_prompt: bool | Callable[[Any, float | None, str], Callable[[int], Rule]] = True
    notes: Callable[[Any], list[str]] | None = None


@dataclass(frozen=True)
class FitSpec:
    """Something a measurement must train before it measures (the tuned lens's translators),
    cached in the run directory as ``fitted/<name>.safetensors`` + ``fitted/<name>.json``.

    - ``examples(task, analysed_examples, config)``: the training examples and a JSON-able
      description of where they came from (never the analysed ones: the study warns on overlap).
    - ``settings(config)``: every option the fit depends on; with the model's and the training
      token ids' fingerprints it decides whether a cached fit is reused or retrained.
    - ``fit(ctx)``: the fitted object, with ``tensors()`` and a JSON-able ``info`` dict (the study
      adds ``reused`` and ``fingerprint`` to it); ``load(tensors, info)`` rebuilds it.
    """

    name: str
    examples: Callable[[Any, Sequence[Any], Any], tuple[list[Any], Mapping[str, Any]]]
    settings: Callable[[Any], Mapping[str, Any]]
    fit: Callable[[StudyContext], Any]
    load: Callable[[dict[str, Any], dict[str, Any]], Any]


@dataclass(frozen=True)
class MetricSpec:
    """Everything the toolkit needs to know of one measurement.

    - ``run(ctx)``: the measurement on a :class:`StudyContext`, returning a result object with
      ``meta``, ``curves()``, ``tensors()``, ``entry()`` and a ``from_entry`` classmethod.
    - ``options``: its options, a frozen :class:`effective_depth.options.MetricOptions`
      subclass (defaults, help and validation); the study's ``config.options[name]`` holds one,
      handed to ``run`` as ``ctx.options``; ``--set NAME.FIELD=VALUE`` sets a field.
    - ``requires``: measurements whose results it reads from ``ctx.done`` when they are in the
      study: a study runs them first (dependency order; otherwise the order of registration).
    - ``needs_answers``: it reads the examples' answers (skipped, with a warning, when a study's
      examples have none).
    - ``reference(task, examples, config)``: further prompts it needs (erasure's reference
      prompts): ``(examples, info, warnings)``, encoded and handed back as ``ctx.reference``.
    - ``inputs(batch, config)``: per-example inputs to draw before measuring and record in
      ``inputs.json`` (e.g. cut positions), handed back as ``ctx.inputs``.
    Both are drawn by :func:`effective_depth.prepare.prepare_study` and
    :func:`effective_depth.prepare.draw_inputs`, which the study and the planner share.
    - ``summaries(result, config)``: top-level additions to ``results.json`` (e.g. the depth
      score under ``depth``, the accuracy).
    - ``scores``: scalar scores of a prompt sample, ``fn(result, idx) -> float`` (stored under
      ``depth.<name>`` by ``summaries``), which ``compare`` gives the same difficulty trend test
      as the estimators.
    - ``cost(workload)``: its cost model, a :class:`effective_depth.costs.MeasurementCost` of the
      block-tokens, backward block-tokens and lens rows it will compute (``effective-depth
      plan``); without one the planner reports the measurement as not modelled.
    - ``fit``: a :class:`FitSpec` when the measurement trains something first (``ctx.fitted``).
    """

    name: str
    result_type: type
    run: Callable[[StudyContext], Any]
    description: str = ""
    options: type | None = None
    requires: tuple[str, ...] = ()
    needs_answers: bool = False
    reference: Callable[[Any, Sequence[Any], Any],
                        tuple[list[Any], Mapping[str, Any], list[str]]] | None = None
    estimators: tuple[EstimatorSpec, ...] = ()
    inputs: Callable[[Any, Any], Mapping[str, list[Any]]] | None = None
    summaries: Callable[[Any, Any], Mapping[str, Any]] | None = None
    scores: Mapping[str, Callable[[Any, Sequence[int] | None], float | None]] = field(
        default_factory=dict)
    cost: Callable[[Any], Any] | None = None
    fit: FitSpec | None = None
    #: deprecated and ignored: declare ``requires`` instead
    order: int | None = None

    @property
    def needs_reference(self) -> bool:
        return self.reference is not None

    def options_of(self, config: Any) -> Any:
        """This measurement's options in ``config`` (None when it declares none; the defaults
        when ``config`` was made before the measurement was registered)."""
        if self.options is None:
            return None
        value = config.options.get(self.name)
        return self.options() if value is None else value


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add a measurement; a name (or an estimator name) registered twice is an error."""
    if spec.name in _REGISTRY:
        raise ConfigError(f"a measurement named {spec.name!r} is already registered")
    if spec.options is not None:
        from .options import MetricOptions

        if not (isinstance(spec.options, type) and issubclass(spec.options, MetricOptions)):
            raise ConfigError(f"{spec.name}: options must be a MetricOptions dataclass, got "
                              f"{spec.options!r}")
        if not spec.options.__dict__.get("measurement"):
            spec.options.measurement = spec.name  # how its errors and --set name its fields
        try:
            spec.options()
        except (TypeError, ConfigError) as exc:
            raise ConfigError(f"{spec.name}: its options need valid defaults ({exc})") from None
    taken = {e.name for s in _REGISTRY.values() for e in s.estimators}
    for est in spec.estimators:
        if est.metric != spec.name:
            raise ConfigError(f"estimator {est.name} reads {est.metric!r}, not {spec.name!r}")
        if est.name in taken:
            raise ConfigError(f"an estimator named {est.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_metric(name: str) -> None:
    _REGISTRY.pop(name, None)


@contextlib.contextmanager
def registered(spec: MetricSpec) -> Iterator[MetricSpec]:
    """``register_metric`` for the duration of a ``with`` block (tests, notebooks)."""
    register_metric(spec)
    try:
        yield spec
    finally:
        unregister_metric(spec.name)


def _load_builtin() -> None:
    from . import metrics  # noqa: F401 - the built-in measurements register on import


def metric_specs() -> list[MetricSpec]:
    """Every registered measurement, in study order: each after those it ``requires``,
    otherwise in the order they were registered."""
    _load_builtin()
    return dependency_order(list(_REGISTRY.values()))


def dependency_order(specs: Sequence[MetricSpec]) -> list[MetricSpec]:
    """``specs`` with every measurement after the ones it ``requires`` (stable: otherwise in the
    given order); a cycle is an error naming it. Requirements outside ``specs`` are ignored."""
    by_name = {s.name: s for s in specs}
    out: list[MetricSpec] = []
    state: dict[str, int] = {}  # 1: being visited, 2: placed

    def visit(spec: MetricSpec, path: tuple[str, ...]) -> None:
        if state.get(spec.name) == 2:
            return
        if state.get(spec.name) == 1:
            raise ConfigError(f"measurements require each other in a cycle: "
                              f"{' -> '.join((*path, spec.name))}")
        state[spec.name] = 1
        for name in spec.requires:
            if name in by_name:
                visit(by_name[name], (*path, spec.name))
        state[spec.name] = 2
        out.append(spec)

    for spec in specs:
        visit(spec, ())
    return out


def metric_names() -> tuple[str, ...]:
    return tuple(s.name for s in metric_specs())


def get_metric(name: str) -> MetricSpec:
    _load_builtin()
    spec = _REGISTRY.get(name)
    if spec is None:
        names = metric_names()
        raise ConfigError(f"unknown metric {name!r}{close_matches(name, names)} "
                          f"Metrics: {', '.join(names)}")
    return spec


def estimator_specs() -> dict[str, EstimatorSpec]:
    """Every registered estimator by name, in study order of their measurements."""
    return {e.name: e for s in metric_specs() for e in s.estimators}


def score_specs() -> dict[str, tuple[str, Callable[[Any, Sequence[int] | None], float | None]]]:
    """Every registered scalar score: name -> (measurement, function of result and sample)."""
    return {name: (s.name, fn) for s in metric_specs() for name, fn in s.scores.items()}


def default_thresholds() -> dict[str, float]:
    """The default threshold of every estimator that has one."""
    return {n: e.threshold for n, e in estimator_specs().items() if e.threshold is not None}
