"""Per-prompt effective depth and the agreement between estimators (docs/methods.md:
"Per-prompt effective depth", "Estimator agreement").

The reference papers report one depth per (model, task): a rule applied to the *mean* curve over
prompts. Every estimator rule here is a function of a prompt sample (it recomputes its curve from
the stored per-prompt data), so the same rule applied to the one-prompt sample ``[i]`` gives prompt
``i``'s own depth. Which estimators may be read that way is declared by their
:class:`~effective_depth.metrics.registry.EstimatorSpec` (``per_prompt``), so a new measurement gets
per-prompt depths without any change here.

The depth of the mean curve is in general *not* the median of the per-prompt depths: a
first-crossing rule on an average of curves answers a different question from the typical
prompt's crossing (two prompts that settle at blocks 1 and 5 average to a curve that may cross
anywhere between).

**Agreement**: whether "effective depth" is one quantity on a model or several — Spearman's ρ
between two estimators' per-prompt depths over the prompts of one run (prompts where both are
defined), with a percentile bootstrap CI over prompts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..metrics.registry import estimator_specs
from ..stats import bootstrap_indices, percentile_ci
from .depth import spearman
from .estimation import PerPrompt, per_prompt_estimates

__all__ = ["run_per_prompt", "prompt_agreement", "rank_agreement"]


def run_per_prompt(run: Any) -> dict[str, PerPrompt]:
    """The per-prompt depths of a loaded run: those stored in ``results.json`` (``per_prompt``),
    completed by recomputation from the stored measurements for any estimator they lack (a run
    written before per-prompt depths existed, or a newly registered estimator)."""
    stored = {name: PerPrompt.from_dict(name, d.to_json())
              for name, d in run.record.per_prompt.items()}
    specs = estimator_specs()
    missing = [name for name, spec in specs.items()
               if name not in stored and spec.metric in run.completed and spec.per_prompt is not False]
    if missing:
        cfg = run.config_record.config
        metrics = {m: run.metric(m) for m in {specs[n].metric for n in missing}}
        stored.update(per_prompt_estimates(metrics, thresholds=cfg.thresholds, rules=cfg.rules,
                                           only=missing))
    order = [n for n in specs if n in stored] + [n for n in stored if n not in specs]
    return {n: stored[n] for n in order}


def rank_agreement(x: Any, y: Any) -> float:
    """Spearman's ρ over the points where both are defined (not NaN); NaN with fewer than three
    (two points always correlate perfectly, or not at all) or when either side is constant."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(xa) | np.isnan(ya))
    return spearman(xa[keep].tolist(), ya[keep].tolist()) if keep.sum() >= 3 else float("nan")


def _rho_ci(x: np.ndarray, y: np.ndarray, idx: np.ndarray, level: float) -> dict[str, Any]:
    keep = ~(np.isnan(x) | np.isnan(y))
    n = int(keep.sum())
    rho = rank_agreement(x, y)
    if math.isnan(rho):
        why = ("fewer than 3 prompts where both are defined" if n < 3 else
               "one of the two is the same on every prompt where both are defined")
        return {"rho": None, "ci": None, "n": n, "reason": why, "undefined_fraction": None}
    rhos = [rank_agreement(x[b], y[b]) for b in idx]
    ci = percentile_ci(rhos, level)
    return {"rho": rho, "ci": None if ci is None else list(ci), "n": n, "reason": None,
            "undefined_fraction": float(np.mean([math.isnan(r) for r in rhos])) if rhos else None}


def prompt_agreement(
    per_prompt: Mapping[str, PerPrompt],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Spearman's ρ between every pair of estimators' per-prompt depths over one run's prompts
    (prompts where both are defined), with a bootstrap CI (the same prompt resamples for every
    pair). A constant estimator, or fewer than 3 common prompts, gives ρ None with the reason."""
    names = [n for n, pp in per_prompt.items() if pp.n_prompts]
    if not names:
        return []
    n = per_prompt[names[0]].n_prompts
    if any(per_prompt[k].n_prompts != n for k in names):
        raise ConfigError("per-prompt depths of one run must cover the same prompts")
    vals = {k: np.asarray([np.nan if r is None else r for r in per_prompt[k].ratios], float)
            for k in names}
    idx = bootstrap_indices(n, n_boot, seed) if n_boot > 0 else np.zeros((0, n), dtype=int)
    return [{"a": a, "b": b, **_rho_ci(vals[a], vals[b], idx, level)}
            for a, b in itertools.combinations(names, 2)]
