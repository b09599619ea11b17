"""Estimation: one module for every effective-depth estimate made from stored measurements
(docs/methods.md §6–7, "Per-prompt effective depth").

* the **run-level** estimate: a registered estimator's rule on all prompts, with a percentile
  bootstrap CI over prompts (:func:`estimate_all`, :func:`bootstrap_estimate`);
* the **per-prompt** depth: the same rule read on one prompt (:func:`per_prompt_estimates`);
* the registered **scores** (Csordás's depth score) on all prompts with a percentile bootstrap
  CI (:func:`score_estimates`);
* the **comparisons**' use of both: the rules and scores of a loaded run as functions of a prompt
  sample, so that trend tests and agreement resample prompts (:class:`RunRules`).

Each estimator is bound once (:func:`bound_estimators`): its measurement's result, its
threshold, and the parameters an estimate records, among them whether the reference rule set
(``rules="reference"``) changes it, a property its :class:`~effective_depth.metrics.registry.EstimatorSpec`
declares (``reference_rules``). Curve bands are computed by
:func:`effective_depth.stats.curve_bands` alone.

Nothing here names a measurement or an estimator: everything is read from the registry.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..display import render_html
from ..errors import ConfigError
from ..metrics.registry import EstimatorSpec, default_thresholds, estimator_specs, score_specs
from ..stats import REFERENCE_NOTE, RULE_SETS, Rule, bootstrap_indices, percentile_ci

__all__ = [
    "Estimate",
    "PerPrompt",
    "BoundEstimator",
    "bound_estimators",
    "bootstrap_estimate",
    "estimator_rules",
    "estimate_all",
    "per_prompt_estimates",
    "score_estimate",
    "score_estimates",
    "RunRules",
]


@dataclass
class Estimate:
    """One effective-depth estimate: ``layer`` and ``ratio = (layer + 1) / n_layers`` with a
    bootstrap CI of the ratio, or ``layer = None`` and the ``reason``."""

    name: str
    n_layers: int
    layer: int | None
    reason: str | None = None
    ci: tuple[float, float] | None = None
    layer_ci: tuple[float, float] | None = None
    undefined_fraction: float | None = None
    n_boot: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return None if self.layer is None else (self.layer + 1) / self.n_layers

    @property
    def defined(self) -> bool:
        return self.layer is not None

    def _repr_html_(self) -> str:
        return render_html("estimate", self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        for key in ("ci", "layer_ci"):
            if d[key] is not None:
                d[key] = [float(v) for v in d[key]]
        if self.layer is None:
            d = {"layer": None, "reason": self.reason, **{k: v for k, v in d.items()
                                                           if k not in ("layer", "reason")}}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Estimate:
        keys = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in keys}
        for key in ("ci", "layer_ci"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)


@dataclass(frozen=True)
class BoundEstimator:
    """A registered estimator bound to one measurement's result: its threshold and the
    parameters its estimates record (``threshold``; ``rules: "reference"`` when the estimator
    declares a reference-rule variant and the reference rule set is in use)."""

    name: str
    spec: EstimatorSpec
    result: Any
    threshold: float | None
    rules: str
    params: dict[str, Any]

    @property
    def n_layers(self) -> int:
        return int(self.result.meta["n_layers"])

    def sample_rule(self) -> Callable[[Sequence[int] | None], Rule]:
        """The rule as a function of a prompt sample (indices, or None for all prompts)."""
        return self.spec.rule(self.result, self.threshold, self.rules)

    def prompt_rule(self) -> Callable[[int], Rule] | None:
        """The rule read on one prompt (None: one prompt's data carry no depth)."""
        spec = self.spec
        if spec.per_prompt is False:
            return None
        if callable(spec.per_prompt):
            return spec.per_prompt(self.result, self.threshold, self.rules)
        sample_rule = self.sample_rule()
        return lambda i: sample_rule([i])


def _check_rules(rules: str) -> None:
    if rules not in RULE_SETS:
        raise ConfigError(f"rules must be one of {', '.join(RULE_SETS)}, got {rules!r}")


def bound_estimators(metrics: Mapping[str, Any], thresholds: Mapping[str, float] | None = None,
                     rules: str = "toolkit", only: Sequence[str] | None = None
                     ) -> list[BoundEstimator]:
    """Every registered estimator whose measurement is in ``metrics`` (name -> result), in
    registry order (``only``: those named), bound to its result and threshold."""
    _check_rules(rules)
    th = {**default_thresholds(), **(thresholds or {})}
    out = []
    for name, spec in estimator_specs().items():
        if spec.metric not in metrics or (only is not None and name not in only):
            continue
        params: dict[str, Any] = {"threshold": th[name]} if name in th else {}
        if rules == "reference" and spec.reference_rules:
            params["rules"] = "reference"
        out.append(BoundEstimator(name, spec, metrics[spec.metric], th.get(name), rules, params))
    return out


def bootstrap_estimate(
    name: str,
    rule: Callable[[Sequence[int] | None], Rule],
    n_prompts: int,
    n_layers: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    params: dict[str, Any] | None = None,
) -> Estimate:
    """Point estimate on all prompts plus a percentile CI over ``n_boot`` prompt resamples.

    ``rule(idx)`` recomputes the curve from the prompts ``idx`` (None: all) and applies the rule.
    """
    layer, reason = rule(None)
    est = Estimate(name, n_layers, layer, reason, params=dict(params or {}), n_boot=n_boot)
    if n_boot <= 0 or n_prompts == 0:
        return est
    layers: list[float] = []
    undefined = 0
    for idx in bootstrap_indices(n_prompts, n_boot, seed):
        lay, _ = rule(idx.tolist())
        if lay is None:
            undefined += 1
        else:
            layers.append(float(lay))
    est.undefined_fraction = undefined / n_boot
    if layer is not None and layers:
        lo, hi = percentile_ci(layers, level, discrete=True)  # type: ignore[misc]
        est.layer_ci = (lo, hi)
        est.ci = ((lo + 1) / n_layers, (hi + 1) / n_layers)
    return est


def estimator_rules(metrics: Mapping[str, Any], thresholds: Mapping[str, float] | None = None,
                    rules: str = "toolkit") -> dict[str, Callable[[Sequence[int] | None], Rule]]:
    """The rule of every registered estimator whose measurement is in ``metrics`` (name ->
    result object), as a function of a prompt sample (indices, or None for all prompts)."""
    return {b.name: b.sample_rule() for b in bound_estimators(metrics, thresholds, rules)}


def estimate_all(
    metrics: Mapping[str, Any],
    *,
    thresholds: Mapping[str, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    rules: str = "toolkit",
) -> dict[str, Estimate]:
    """Every estimator whose measurement is present in ``metrics`` (name -> result object).

    ``rules="reference"`` applies the estimators that declare a reference variant
    (``EstimatorSpec.reference_rules``: ``ed_kl``, ``ed_overlap``) as the seed notebook of Hu et
    al. 2025 does (see :data:`~effective_depth.stats.RULE_SETS`); such an estimate says so in
    its ``params`` and, when it is -1, in its ``notes``.
    """
    out: dict[str, Estimate] = {}
    for b in bound_estimators(metrics, thresholds, rules):
        est = bootstrap_estimate(b.name, b.sample_rule(), b.result.n_prompts, b.n_layers,
                                 n_boot=n_boot, seed=seed, level=level, params=b.params)
        if est.layer == -1:
            est.notes.append(REFERENCE_NOTE)
        if b.spec.notes is not None:
            est.notes.extend(b.spec.notes(b.result))
        out[b.name] = est
    return out


def _finite(value: Any) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def score_estimate(spec: Any, result: Any, *, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict[str, Any]:
    """One registered score (a :class:`~effective_depth.metrics.registry.ScoreSpec`) of ``result`` on
    all prompts, with a percentile bootstrap CI over prompts (the same resamples as every
    estimator's): ``{"value", "ci", "n_boot", "n_layers"}`` (``value`` None where undefined)."""
    point = spec.fn(result, None)
    values = [spec.fn(result, idx.tolist())
              for idx in bootstrap_indices(result.n_prompts, n_boot, seed)] if n_boot else []
    ci = percentile_ci(values, level)
    return {"value": _finite(point), "ci": None if ci is None else list(ci), "n_boot": n_boot,
            "n_layers": int(result.meta["n_layers"])}


def score_estimates(metrics: Mapping[str, Any], *, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> dict[str, dict[str, Any]]:
    """Every registered score whose measurement is in ``metrics`` (name -> result object), as
    :func:`score_estimate` gives it; stored by the study under ``depth.<score>``."""
    return {name: score_estimate(spec, metrics[spec.metric], n_boot=n_boot, seed=seed,
                                 level=level)
            for name, spec in score_specs().items() if spec.metric in metrics}


@dataclass
class PerPrompt:
    """One estimator applied to every prompt on its own: ``layers[i]`` is prompt ``i``'s block
    (0-based), or None with ``reasons[i]``."""

    name: str
    n_layers: int
    layers: list[int | None]
    reasons: list[str | None]
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.reasons):
            raise ValueError(f"{self.name}: {len(self.layers)} layers for {len(self.reasons)} reasons")

    @property
    def n_prompts(self) -> int:
        return len(self.layers)

    @property
    def ratios(self) -> list[float | None]:
        return [None if x is None else (x + 1) / self.n_layers for x in self.layers]

    @property
    def defined(self) -> list[float]:
        """The ratios of the prompts where the estimator is defined."""
        return [r for r in self.ratios if r is not None]

    def summary(self) -> dict[str, Any]:
        """Count, median and quartiles of the per-prompt ratios; undefined prompts by reason."""
        d = np.asarray(self.defined, dtype=float)
        q = (np.quantile(d, [0.25, 0.5, 0.75]).tolist() if len(d) else [None] * 3)
        return {"n_prompts": self.n_prompts, "n_defined": int(len(d)),
                "median": q[1], "q1": q[0], "q3": q[2],
                "mean": float(d.mean()) if len(d) else None,
                "min": float(d.min()) if len(d) else None,
                "max": float(d.max()) if len(d) else None,
                "undefined": dict(Counter(r for r in self.reasons if r is not None))}

    def to_dict(self) -> dict[str, Any]:
        undefined: dict[str, list[int]] = {}
        for i, why in enumerate(self.reasons):
            if why is not None:
                undefined.setdefault(why, []).append(i)
        return {"n_layers": self.n_layers, "layers": list(self.layers), "ratios": self.ratios,
                "undefined": undefined, "params": dict(self.params), "summary": self.summary()}

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> PerPrompt:
        layers = list(d["layers"])
        reasons: list[str | None] = [None] * len(layers)
        for why, idx in (d.get("undefined") or {}).items():
            for i in idx:
                reasons[i] = why
        return cls(name, int(d["n_layers"]), layers, reasons, dict(d.get("params") or {}))


def per_prompt_estimates(
    metrics: Mapping[str, Any],
    *,
    thresholds: Mapping[str, float] | None = None,
    rules: str = "toolkit",
    only: Sequence[str] | None = None,
) -> dict[str, PerPrompt]:
    """Every registered estimator that reads one prompt (``EstimatorSpec.per_prompt``) and whose
    measurement is in ``metrics``, applied to each prompt alone.

    A prompt whose own curve cannot be read (e.g. NaN, or no cut position for ``ed_skip``) is
    undefined with the reason; it never stops the others.
    """
    out: dict[str, PerPrompt] = {}
    for b in bound_estimators(metrics, thresholds, rules, only):
        fn = b.prompt_rule()
        if fn is None:
            continue
        layers: list[int | None] = []
        reasons: list[str | None] = []
        for i in range(b.result.n_prompts):
            try:
                layer, why = fn(i)
            except ConfigError as exc:  # this prompt's curve is unreadable; the others are not
                layer, why = None, str(exc)
            layers.append(layer)
            reasons.append(None if layer is not None else (why or "undefined"))
        out[b.name] = PerPrompt(b.name, b.n_layers, layers, reasons, b.params)
    return out


class RunRules:
    """The estimators and scores of one loaded run as functions of a prompt sample, rebuilt
    (lazily) from its stored per-prompt data: what the comparisons resample."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self._rules: dict[str, Callable[[Any], Any]] | None = None
        self._results: dict[str, Any] = {}

    @property
    def rules(self) -> dict[str, Callable[[Any], Any]]:
        if self._rules is None:
            needed = {spec.metric for spec in estimator_specs().values()}
            metrics = {m: self._result(m) for m in self.run.completed if m in needed}
            cfg = self.run.config_record.config  # a Run (duck-typed: the store is above)
            self._rules = estimator_rules(metrics, cfg.thresholds, cfg.rules)
        return self._rules

    def _result(self, metric: str) -> Any:
        if metric not in self._results:
            self._results[metric] = self.run.metric(metric)
        return self._results[metric]

    def n_prompts(self) -> int:
        return int(self.run.record.task.n_examples or 0)

    def score(self, name: str, idx: Any) -> float | None:
        """The registered scalar score ``name`` on prompts ``idx`` (None: not measured, or
        undefined on the sample)."""
        spec = score_specs()[name]
        if spec.metric not in self.run.completed:
            return None
        return _finite(spec.fn(self._result(spec.metric), idx))

    def ratio(self, estimator: str, idx: Any) -> float | None:
        """The estimator's ratio ``(e + 1) / L`` on prompts ``idx`` (None: undefined)."""
        rule = self.rules.get(estimator)
        if rule is None:
            return None
        layer, _ = rule(idx)
        L = int(self.run.record.model.n_layers)
        return None if layer is None else (layer + 1) / L
