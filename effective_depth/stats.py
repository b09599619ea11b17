"""Pure statistics: the bootstrap primitives, percentile intervals and curve bands, and the
form of an estimator rule's answer (:data:`Rule`). No measurement, no model, no files: every
function here takes numbers and returns numbers. The estimator rules themselves (``ed_cos`` ...
``ed_prune``) belong to the measurements: :mod:`effective_depth.metrics.rules`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "Rule",
    "RULE_SETS",
    "REFERENCE_NOTE",
    "bootstrap_indices",
    "percentile_ci",
    "curve_band",
    "curve_bands",
]

#: ``toolkit``: the rules over every lens tap 0..L-1; ``reference``: as the seed notebook of Hu et
#: al. 2025 — ``ed_kl``/``ed_overlap`` search taps 0..L-2 only and return -1 (ratio 0) when no tap
#: meets the rule
RULE_SETS = ("toolkit", "reference")

REFERENCE_NOTE = ("reference rules (seed notebook): only lens taps 0..L-2 are searched; none met "
                  "the rule, so the block is -1 and the ratio 0, as the notebook reports")

#: a rule's answer: the block index, or None and the reason it is undefined
Rule = tuple[int | None, str | None]


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` prompt indices drawn with replacement from a private generator."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def percentile_ci(
    values: Sequence[Any], level: float = 0.95, discrete: bool = False
) -> tuple[float, float] | None:
    """Percentile interval of ``values`` (None and NaN ignored). ``discrete`` keeps the bounds
    on observed values (block indices), instead of interpolating between them."""
    vals = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(vals) == 0:
        return None
    alpha = (1 - level) / 2
    method = "inverted_cdf" if discrete else "linear"
    return (float(np.quantile(vals, alpha, method=method)),
            float(np.quantile(vals, 1 - alpha, method=method)))




def curve_bands(
    curves_of: Any, n_prompts: int, *, n_boot: int = 200, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Pointwise percentile bootstrap bands of several per-layer curves over prompts, from one
    set of prompt resamples: the one place a curve's band is computed (the figures' shaded bands
    and the ``curves`` tables' ``ci_lo`` / ``ci_hi`` both come from here).

    ``curves_of(idx)`` recomputes the curves (``{name: curve}``) from the prompts ``idx`` (a list
    of indices, with repeats), exactly as the estimators' CIs do; the band of a curve at each
    layer is the ``(1 − level) / 2`` and ``(1 + level) / 2`` quantiles of ``n_boot`` resampled
    curves (NaN where every resample is NaN). None with fewer than two prompts, ``n_boot = 0``,
    or when a resample has no curves (the result cannot resample prompts).
    """
    if n_prompts < 2 or n_boot <= 0:
        return None
    samples = [curves_of(idx.tolist()) for idx in bootstrap_indices(n_prompts, n_boot, seed)]
    if any(s is None for s in samples):
        return None
    return {name: _band(np.stack([_as_row(s[name]) for s in samples]), level)
            for name in samples[0]}


def curve_band(
    curve_of: Any, n_prompts: int, *, n_boot: int = 200, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray] | None:
    """The band of one curve (:func:`curve_bands` of ``{"curve": curve_of(idx)}``)."""
    bands = curve_bands(lambda idx: {"curve": curve_of(idx)}, n_prompts, n_boot=n_boot,
                        seed=seed, level=level)
    return None if bands is None else bands["curve"]


def _as_row(curve: Any) -> np.ndarray:
    return torch.as_tensor(curve).detach().double().cpu().numpy().reshape(-1)


def _band(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = (1 - level) / 2
    lo = np.full(samples.shape[1], np.nan)
    hi = np.full(samples.shape[1], np.nan)
    finite = ~np.isnan(samples).all(0)
    if finite.any():
        lo[finite] = np.nanquantile(samples[:, finite], alpha, axis=0)
        hi[finite] = np.nanquantile(samples[:, finite], 1 - alpha, axis=0)
    return lo, hi
