"""Effective-depth estimators, bootstrap confidence intervals and trend tests (docs/methods.md §6–7).

An estimator turns a per-layer curve into a block index ``e`` (0-based) and the ratio
``(e + 1) / L`` — or into *undefined*, with the reason (never a crash, never a silent ``-1``):

=============  ==============================================================================
``ed_cos``     ``c[l]`` = mean of ``cos_attn``, ``cos_mlp``, ``cos_block``; the **last** ``l`` with
               ``c[l] < 0`` and ``c[l+1] ≥ 0`` (Hu et al. 2025)
``ed_kl``      the **first** ``l`` with ``kl[l] < τ · max(kl)``, τ = 0.5 (Hu et al. 2025)
``ed_overlap`` the **first** ``l`` with ``overlap[l] > τ``, τ = 0.3 (Hu et al. 2025)
``ed_skip``    the **last** block whose skip changes the output by more than ``τ`` times the
               largest output effect (τ = 0.1; from §2's output effects); in future mode at
               most ``L − 2``, the last block's future effect being zero by construction
``ed_task``    early exit: the fewest leading blocks whose logit-lens answer reaches the full
               model's exact-match accuracy within ``ε`` (ε = 0.01); ``e`` = that number − 1
``ed_prune``   blocks sorted by increasing current-mode output effect (each skipped alone at
               every position); the most of them (a prefix of that order) that can be skipped
               together with accuracy within ``ε``; ``e = L − k − 1``
=============  ==============================================================================

The estimates are made by :mod:`effective_depth.analysis.estimation` (the rules themselves are the
measurements': :mod:`effective_depth.metrics.rules`); this module adds the trend tests (Spearman's ρ
with a bootstrap CI) and the reliability warnings.

Every estimate comes with a percentile bootstrap CI over prompts: resample prompts with
replacement, recompute the curve from the per-prompt data, re-apply the rule. Resamples in which
the rule is undefined are counted (``undefined_fraction``) and left out of the interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..metrics.registry import default_thresholds, estimator_specs
from ..stats import bootstrap_indices, percentile_ci

if TYPE_CHECKING:
    from .estimation import Estimate

__all__ = [
    "spearman",
    "spearman_bootstrap",
    "prompt_spearman_bootstrap",
    "reliability_warnings",
    "depth_score_estimate",
    "MIN_PROMPTS",
]


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: Sequence[Any], y: Sequence[Any]) -> float:
    """Spearman's rank correlation; NaN when either side is constant or has < 2 points."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(xa) | np.isnan(ya))
    xa, ya = xa[keep], ya[keep]
    if len(xa) < 2:
        return float("nan")
    rx, ry = _rank(xa), _rank(ya)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_bootstrap(
    levels: Sequence[Any],
    ratio_fns: Sequence[Callable[[Sequence[int] | None], float | None]],
    n_prompts: Sequence[int],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Spearman's ρ between difficulty ``levels`` and the ratio at each level, with a CI from
    resampling prompts *within* every level (``ratio_fns[i](idx)`` recomputes level ``i``).

    A ``ratio_fns[i]`` may also return a sequence — one value per prompt of the sample — each
    paired with ``levels[i]``: the prompt-level test (:func:`prompt_spearman_bootstrap`)."""
    point = [fn(None) for fn in ratio_fns]
    rho = spearman(*_paired(levels, point))
    rhos = []
    rngs = [bootstrap_indices(n, n_boot, seed + 7919 * i) if n else None for i, n in enumerate(n_prompts)]
    for b in range(n_boot):
        ratios = [fn(rngs[i][b].tolist()) if rngs[i] is not None else None
                  for i, fn in enumerate(ratio_fns)]
        rhos.append(spearman(*_paired(levels, ratios)))
    # no interval around an undefined rho (a constant ratio): resamples that happen to vary would
    # suggest a trend the data do not show
    ci = None if math.isnan(rho) else percentile_ci(rhos, level)
    return {
        "rho": None if math.isnan(rho) else rho,
        "ci": None if ci is None else list(ci),
        "n_boot": n_boot,
        "levels": list(levels),
        "ratios": point,
        "undefined_fraction": float(np.mean([math.isnan(r) for r in rhos])) if rhos else None,
    }


def _paired(levels: Sequence[Any], values: Sequence[Any]) -> tuple[list[Any], list[float]]:
    """(level, value) pairs: a scalar value is one pair, a sequence one pair per element."""
    xs: list[Any] = []
    ys: list[float] = []
    for lv, v in zip(levels, values):
        vs = list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]
        xs += [lv] * len(vs)
        ys += [np.nan if x is None else float(x) for x in vs]
    return xs, ys


def prompt_spearman_bootstrap(
    levels: Sequence[Any],
    values: Sequence[Sequence[float | None]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Spearman's ρ between each prompt's difficulty and its own depth, pooled over levels.

    ``values[i]`` holds the per-prompt ratios of the prompts at difficulty ``levels[i]`` (None:
    undefined for that prompt, left out). The CI resamples prompts within every level, as
    :func:`spearman_bootstrap` does for level means. The result adds, per level, the number of
    prompts, of defined ones, and the median ratio.
    """
    fns = [lambda idx, v=list(v): v if idx is None else [v[j] for j in idx] for v in values]
    out = spearman_bootstrap(levels, fns, [len(v) for v in values], n_boot=n_boot, seed=seed,
                             level=level)
    defined = [[x for x in v if x is not None] for v in values]
    out["ratios"] = [float(np.median(d)) if d else None for d in defined]
    out["n_prompts"] = [len(v) for v in values]
    out["n_defined"] = [len(d) for d in defined]
    return out


def depth_score_estimate(skips: Any, *, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> dict[str, Any]:
    """Csordás's depth score (centre of mass of future effects) with a bootstrap CI: the
    registered score :data:`~effective_depth.metrics.skip_effects.DEPTH_SCORE` estimated as every
    score is (:func:`effective_depth.analysis.estimation.score_estimate`)."""
    from ..metrics.skip_effects import DEPTH_SCORE
    from .estimation import score_estimate

    return score_estimate(DEPTH_SCORE, skips, n_boot=n_boot, seed=seed, level=level)


#: fewer prompts than this make a bootstrap CI a statement about a handful of examples
MIN_PROMPTS = 5


def reliability_warnings(
    metrics: Mapping[str, Any],
    estimates: Mapping[str, Estimate],
    *,
    thresholds: Mapping[str, float] | None = None,
    n_boot: int = 1000,
    d_vocab: int | None = None,
) -> list[dict[str, Any]]:
    """Conditions under which an estimate is decided by chance or by too few prompts.

    Each warning is also added to the estimate's ``notes``. Each estimator's own checks (e.g.
    ``ed_overlap``: a threshold below twice the chance overlap of unrelated top-k sets;
    ``ed_skip``: fewer than half of the prompts with a cut position), then for every estimate:
    fewer than :data:`MIN_PROMPTS` prompts, and ``n_boot = 0`` (no interval at all).
    """
    th = {**default_thresholds(), **(thresholds or {})}
    specs = estimator_specs()
    out: list[dict[str, Any]] = []

    def warn(code: str, message: str, names: Sequence[str]) -> None:
        names = [n for n in names if n in estimates]
        out.append({"code": code, "estimators": names, "message": message})
        for n in names:
            estimates[n].notes.append(message)

    for name in estimates:
        spec = specs.get(name)
        if spec is None or spec.checks is None or spec.metric not in metrics:
            continue
        for code, message in spec.checks(metrics[spec.metric], th.get(name), d_vocab):
            warn(code, message, [name])
    for name in estimates:
        spec = specs.get(name)
        n = getattr(metrics.get(spec.metric) if spec else None, "n_prompts", None)
        if n is not None and n < MIN_PROMPTS:
            warn("few_prompts", f"{name}: estimated from {n} prompts (fewer than {MIN_PROMPTS}); "
                 "its CI describes those prompts, not the task", [name])
    if n_boot <= 0 and estimates:
        warn("no_bootstrap", "n_boot = 0: no confidence intervals were computed",
             list(estimates))
    return out
