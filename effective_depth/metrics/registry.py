"""The measurement registry: one :class:`MetricSpec` per measurement, declared in its own module.

A measurement says, in one place, everything the rest of the toolkit needs: its name and result
type, how a study runs it, what it adds to ``inputs.json``, which effective-depth estimators read
it (with their default thresholds and reliability checks), and the summaries it adds to
``results.json``. ``study``, ``store``, ``analysis`` and the CLI read this registry
and name no measurement themselves. Adding a measurement is one module that calls
:func:`register_metric` (and, for a figure, one function in ``effective_depth.viz``); see
``docs/extending.md``.

This module imports nothing heavy: the built-in measurements register themselves when
``effective_depth.metrics`` is imported, which :func:`metric_specs` does on first use.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ConfigError, close_matches
from .options import MetricOptions, parse_option

__all__ = [
    "MetricSpec",
    "EstimatorSpec",
    "ScoreSpec",
    "FitSpec",
    "StudyContext",
    "register_metric",
    "unregister_metric",
    "registered",
    "metric_specs",
    "correctness_specs",
    "metric_names",
    "dependency_order",
    "get_metric",
    "parse_setting",
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

    ``reference_rules``: the rule has a second form under the reference rule set
    (``rules="reference"``, the seed notebook of Hu et al. 2025: ``ed_kl``, ``ed_overlap``); its
    estimates then record ``params["rules"] = "reference"``.
    """

    name: str
    metric: str
    rule: Callable[[Any, float | None, str], Callable[[Sequence[int] | None], Rule]]
    threshold: float | None = None
    description: str = ""
    checks: Callable[[Any, float | None, int | None], list[tuple[str, str]]] | None = None
    per_prompt: bool | Callable[[Any, float | None, str], Callable[[int], Rule]] = True
    notes: Callable[[Any], list[str]] | None = None
    reference_rules: bool = False


@dataclass(frozen=True)
class ScoreSpec:
    """A scalar score of a prompt sample (Csordás's depth score) and how it is shown.

    ``fn(result, idx)`` computes it from a measurement's result on the prompts ``idx`` (None:
    all); the study estimates it with a bootstrap CI over prompts
    (:func:`effective_depth.analysis.estimation.score_estimates`) and stores ``{"value", "ci", "n_boot",
    "n_layers"}`` under ``depth.<name>``.
    Every place that shows a score (the CLI summary, notebook views, the dashboard's run table,
    the comparison's scale figure) renders it through the methods below, so a newly registered
    score is shown everywhere without a change there.

    - ``title``: its short name in tables ("depth score"); ``source``: whose definition it is
      (shown in parentheses in ``label``).
    - ``unit``: what one step of its value is ("block").
    - ``span(n_layers)``: the range ``(lo, hi)`` its value can take on a model of ``n_layers``
      blocks; when given (and ``hi > lo``), the score is also shown as a share of that range,
      ``(value − lo) / (hi − lo)``, "of the depth". None: the value alone.
    """

    name: str
    fn: Callable[[Any, Sequence[int] | None], float | None]
    title: str = ""
    source: str = ""
    unit: str = "value"
    span: Callable[[int], tuple[float, float]] | None = None
    description: str = ""
    #: the measurement it reads (set by :func:`register_metric`)
    metric: str = ""

    @property
    def label(self) -> str:
        """"depth score (Csordás)": the title with its source."""
        title = self.title or self.name
        return f"{title} ({self.source})" if self.source else title

    @property
    def short(self) -> str:
        return self.title or self.name

    @property
    def has_share(self) -> bool:
        return self.span is not None

    def range_of(self, n_layers: int) -> tuple[float, float] | None:
        if self.span is None:
            return None
        lo, hi = self.span(int(n_layers))
        return float(lo), float(hi)

    def share(self, value: float | None, n_layers: int) -> float | None:
        """``value`` as a share of its range on ``n_layers`` blocks; None when the score is
        undefined, has no range, or the range is a single point (nothing to be a share of)."""
        span = self.range_of(n_layers)
        if value is None or span is None or math.isnan(float(value)) or span[1] <= span[0]:
            return None
        return (float(value) - span[0]) / (span[1] - span[0])

    def shares(self, entry: Mapping[str, Any], n_layers: int | None = None
               ) -> tuple[float, list[float] | None] | None:
        """The stored ``entry``'s value and CI as shares (CI None when it has none)."""
        L = _n_layers(entry, n_layers)
        value = self.share(entry.get("value"), L)
        if value is None:
            return None
        ci = [self.share(float(c), L) for c in entry.get("ci") or []]
        return value, (ci if len(ci) == 2 and None not in ci else None)  # type: ignore[return-value]

    def _range_text(self, n_layers: int) -> str:
        span = self.range_of(n_layers)
        return "" if span is None else f" of {self.unit}s {span[0]:g}..{span[1]:g}"

    def share_text(self, entry: Mapping[str, Any], n_layers: int | None = None) -> str:
        """"25.0% [20.0%, 30.0%] of blocks 0..10" (the dashboard's and notebook's cell); "—"
        when the score has no share."""
        L = _n_layers(entry, n_layers)
        shares = self.shares(entry, L)
        if shares is None:
            return "—"
        value, ci = shares
        bounds = "" if ci is None else f" [{ci[0]:.1%}, {ci[1]:.1%}]"
        return f"{value:.1%}{bounds}{self._range_text(L)}"

    def text(self, entry: Mapping[str, Any], n_layers: int | None = None) -> str | None:
        """One line for the CLI: "depth score (Csordás): 25.0% of the depth [20.0%, 30.0%]
        (block 2.500 [2.000, 3.000] of blocks 0..10)"; None when nothing is stored."""
        if not entry or entry.get("value") is None:
            return None
        L = _n_layers(entry, n_layers)
        ci = list(entry.get("ci") or [float("nan")] * 2)
        value = (f"{self.unit} {entry['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
                 f"{self._range_text(L)}")
        shares = self.shares(entry, L)
        if shares is None:
            return f"{self.label}: {value}"
        share, sci = shares
        bounds = "" if sci is None else f" [{sci[0]:.1%}, {sci[1]:.1%}]"
        return f"{self.label}: {share:.1%} of the depth{bounds} ({value})"

    def table_rows(self, entry: Mapping[str, Any] | None, n_layers: int | None = None
                   ) -> list[tuple[str, Any]]:
        """(label, value) rows for a run's summary table: the share (when it has a range), the
        value, and its CI."""
        entry = entry or {}
        rows: list[tuple[str, Any]] = []
        if self.has_share:
            rows.append((f"{self.short} (% of depth)", self.share_text(entry, n_layers)))
        ci = entry.get("ci")
        rows += [(f"{self.short} ({self.unit})", entry.get("value")),
                 (f"{self.short} CI", "—" if not ci else f"[{float(ci[0]):.3f}, {float(ci[1]):.3f}]")]
        return rows


def _n_layers(entry: Mapping[str, Any], n_layers: int | None) -> int:
    """The model's number of blocks: the one stored with the score, else ``n_layers``."""
    return int(entry.get("n_layers") or n_layers or 0)


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
    - ``text(model, info, config, progress)`` (optional): the training batch when ``examples``
      gave none — text made with the loaded model (the tuned lens's ``fit_on=sampled``: its own
      samples; ``file:PATH``: a file cut into its tokens) — and ``info`` completed. The study
      calls it before anything is written; its token ids are fingerprinted like examples'.
    """

    name: str
    examples: Callable[[Any, Sequence[Any], Any], tuple[list[Any], Mapping[str, Any]]]
    settings: Callable[[Any], Mapping[str, Any]]
    fit: Callable[[StudyContext], Any]
    load: Callable[[dict[str, Any], dict[str, Any]], Any]
    text: Callable[[Any, dict[str, Any], Any, bool], tuple[Any, dict[str, Any]]] | None = None


@dataclass(frozen=True)
class MetricSpec:
    """Everything the toolkit needs to know of one measurement.

    - ``run(ctx)``: the measurement on a :class:`StudyContext`, returning a result object with
      ``meta``, ``curves()``, ``tensors()``, ``entry()`` and a ``from_entry`` classmethod.
    - ``options``: its options, a frozen :class:`effective_depth.metrics.options.MetricOptions`
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
    Both are drawn by :func:`effective_depth.study.prepare.prepare_study` and
    :func:`effective_depth.study.prepare.draw_inputs`, which the study and the planner share.
    - ``summaries(result, config)``: top-level additions to ``results.json`` (e.g. the
      accuracy).
    - ``correctness(result)``: whether the full model answers each prompt correctly (one bool
      per prompt), when the measurement knows it: ``compare`` splits the difficulty comparison
      into the prompts the model answers and those it fails (:func:`correctness_specs`).
    - ``scores``: :class:`ScoreSpec` s, scalar scores of a prompt sample with how they are shown
      (estimated with a bootstrap CI by :func:`effective_depth.analysis.estimation.score_estimates` and
      stored under ``depth.<name>``), which ``compare`` gives the same
      difficulty trend test as the estimators. A mapping ``{name: fn}`` still works (shown by
      its name alone).
    - ``cost(workload)``: its cost model, a :class:`effective_depth.metrics.costs.MeasurementCost` of the
      block-tokens, backward block-tokens and lens rows it will compute (``effective-depth
      plan``); without one the planner reports the measurement as not modelled.
    - ``fit``: a :class:`FitSpec` when the measurement trains something first (``ctx.fitted``).
    - ``observe(result)``: what a run measured that the cost model cannot count in advance
      (integrated gradients' evaluations per path), ``{name: number}``: recorded per model and
      options (:mod:`effective_depth.store.observed`) and handed to the next plan's cost model as
      ``Workload.observed``.
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
    scores: Sequence[ScoreSpec] | Mapping[str, Callable[[Any, Sequence[int] | None],
                                                        float | None]] = ()
    cost: Callable[[Any], Any] | None = None
    fit: FitSpec | None = None
    correctness: Callable[[Any], Sequence[bool]] | None = None
    observe: Callable[[Any], Mapping[str, float]] | None = None

    @property
    def score_specs(self) -> tuple[ScoreSpec, ...]:
        """Its scores as :class:`ScoreSpec` s (a ``{name: fn}`` mapping wrapped), each naming
        this measurement."""
        items = (tuple(ScoreSpec(n, fn) for n, fn in self.scores.items())
                 if isinstance(self.scores, Mapping) else tuple(self.scores))
        return tuple(s if s.metric == self.name else replace(s, metric=self.name) for s in items)

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

    def options_dict(self, config: Any) -> dict[str, Any]:
        """:meth:`options_of` as a plain dict ({} when it declares none)."""
        options = self.options_of(config)
        return {} if options is None else options.to_dict()


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add a measurement; a name (or an estimator name) registered twice is an error."""
    if spec.name in _REGISTRY:
        raise ConfigError(f"a measurement named {spec.name!r} is already registered")
    if spec.options is not None:
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
    taken |= {sc.name for s in _REGISTRY.values() for sc in s.score_specs}
    for score in spec.score_specs:
        if score.name in taken or score.name in {e.name for e in spec.estimators}:
            raise ConfigError(f"a score or estimator named {score.name!r} is already registered")
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
    from .. import metrics  # noqa: F401 - the built-in measurements register on import


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


def parse_setting(key: str, text: str) -> tuple[str, str, Any]:
    """``("skip_effects", "mode", "current")`` from ``--set skip_effects.mode=current``: a
    registered measurement's option, converted to its field's type; an unknown measurement or
    option is an error with the closest names. A key without a dot is no measurement's option:
    :class:`KeyError` (the caller reads it as a core study option)."""
    if "." not in key:
        raise KeyError(key)
    measurement, name = key.split(".", 1)
    with_options = {s.name: s.options for s in metric_specs() if s.options is not None}
    if measurement not in with_options:
        names = sorted(with_options)
        raise ConfigError(f"no measurement with options named {measurement!r}"
                          f"{close_matches(measurement, names)} Measurements with options: "
                          f"{', '.join(names)}")
    return measurement, name, parse_option(measurement, with_options[measurement], name, text)


def estimator_specs() -> dict[str, EstimatorSpec]:
    """Every registered estimator by name, in study order of their measurements."""
    return {e.name: e for s in metric_specs() for e in s.estimators}


def score_specs() -> dict[str, ScoreSpec]:
    """Every registered scalar score by name (its ``metric``, ``fn`` and how it is shown), in
    study order of their measurements."""
    return {sc.name: sc for s in metric_specs() for sc in s.score_specs}


def correctness_specs() -> list[MetricSpec]:
    """The registered measurements that record each prompt's correctness (``correctness``), in
    study order."""
    return [s for s in metric_specs() if s.correctness is not None]


def default_thresholds() -> dict[str, float]:
    """The default threshold of every estimator that has one."""
    return {n: e.threshold for n, e in estimator_specs().items() if e.threshold is not None}
