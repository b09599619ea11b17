"""Pure statistics of effective depth: the estimator rules on one curve and the bootstrap
primitives. No measurement, no model, no files: every function here takes numbers and returns
numbers, so that measurements (which declare their estimators) and the analysis layer can both
use them.

Each rule turns a per-layer curve into a block index ``e`` (0-based) — or into *undefined*, with
the reason (never a crash, never an unmarked ``-1``); see ``docs/methods.md`` §6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError

__all__ = [
    "Rule",
    "RULE_SETS",
    "REFERENCE_NOTE",
    "ed_cos",
    "ed_kl",
    "ed_overlap",
    "ed_skip",
    "ed_task",
    "ed_prune",
    "first_hit_reference",
    "bootstrap_indices",
    "percentile_ci",
    "curve_band",
    "curve_bands",
    "depth_score_fraction",
]

#: ``toolkit``: the rules over every lens tap 0..L-1; ``reference``: as the seed notebook of Hu et
#: al. 2025 — ``ed_kl``/``ed_overlap`` search taps 0..L-2 only and return -1 (ratio 0) when no tap
#: meets the rule
RULE_SETS = ("toolkit", "reference")

REFERENCE_NOTE = ("reference rules (seed notebook): only lens taps 0..L-2 are searched; none met "
                  "the rule, so the block is -1 and the ratio 0, as the notebook reports")

#: a rule's answer: the block index, or None and the reason it is undefined
Rule = tuple[int | None, str | None]


def _as_curve(name: str, curve: Any) -> Tensor:
    t = torch.as_tensor(curve, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ConfigError(f"{name}: the curve is empty")
    bad = torch.isnan(t).nonzero().flatten().tolist()
    if bad:
        raise ConfigError(f"{name}: the curve has NaN at layers {bad}; cannot estimate a depth")
    return t


def ed_cos(cos_attn: Any, cos_mlp: Any, cos_block: Any) -> Rule:
    """The last ``l`` with ``c[l] < 0 ≤ c[l+1]``, ``c`` the mean of the three cosine curves."""
    a, m, b = (_as_curve("ed_cos", x) for x in (cos_attn, cos_mlp, cos_block))
    if not a.shape == m.shape == b.shape:
        raise ConfigError("ed_cos: the three cosine curves differ in length")
    c = (a + m + b) / 3
    hits = [layer for layer in range(len(c) - 1) if c[layer] < 0 <= c[layer + 1]]
    if not hits:
        if bool((c >= 0).all()):
            return None, "the mean cosine is never negative: no block erases the residual stream"
        return None, "the mean cosine never crosses from negative to non-negative"
    return hits[-1], None


def ed_kl(kl: Any, tau: float = 0.5) -> Rule:
    """The first ``l`` with ``kl[l] < τ · max(kl)``."""
    _check_tau("ed_kl", tau)
    k = _as_curve("ed_kl", kl)
    top = float(k.max())
    if top <= 0:
        return None, "the KL is 0 at every layer: the lens equals the output from the embedding on"
    hits = (k < tau * top).nonzero().flatten()
    if len(hits) == 0:
        return None, f"the KL never falls below {tau} x its maximum"
    return int(hits[0]), None


def ed_overlap(overlap: Any, tau: float = 0.3) -> Rule:
    """The first ``l`` with ``overlap[l] > τ``."""
    _check_tau("ed_overlap", tau)
    o = _as_curve("ed_overlap", overlap)
    hits = (o > tau).nonzero().flatten()
    if len(hits) == 0:
        return None, f"the top-k overlap never exceeds {tau}"
    return int(hits[0]), None


def ed_skip(output_effect: Any, tau: float = 0.1) -> Rule:
    """The last block whose output effect exceeds ``τ`` times the largest one."""
    _check_tau("ed_skip", tau)
    e = _as_curve("ed_skip", output_effect)
    top = float(e.max())
    if top <= 0:
        return None, "skipping any block leaves the output unchanged"
    hits = (e > tau * top).nonzero().flatten()
    return int(hits[-1]), None


def ed_task(accuracy_by_exit: Any, full_accuracy: float, eps: float = 0.01) -> Rule:
    """``accuracy_by_exit[n]`` is the accuracy after the first ``n`` blocks (n = 0..L); the
    answer is the smallest ``n`` within ``eps`` of the full model, as block index ``n − 1``
    (at least 0)."""
    acc = _as_curve("ed_task", accuracy_by_exit)
    if full_accuracy <= 0:
        return None, "the full model solves none of the examples"
    hits = (acc >= full_accuracy - eps - 1e-12).nonzero().flatten()
    if len(hits) == 0:  # cannot happen when acc[-1] is the full model; kept for hand-built curves
        return None, f"no exit depth reaches the full accuracy within {eps}"
    return max(int(hits[0]) - 1, 0), None


def ed_prune(accuracy_by_pruned: Any, full_accuracy: float, eps: float = 0.01) -> Rule:
    """``accuracy_by_pruned[k]`` is the accuracy with the first ``k`` blocks of the pruning order
    skipped together (k = 0..L); the answer is ``L − k* − 1`` for the largest admissible ``k*``."""
    acc = _as_curve("ed_prune", accuracy_by_pruned)
    L = len(acc) - 1
    if full_accuracy <= 0:
        return None, "the full model solves none of the examples"
    ok = (acc >= full_accuracy - eps - 1e-12).nonzero().flatten()
    k = int(ok.max()) if len(ok) else 0
    if k >= L:
        return None, "every block can be skipped without losing accuracy"
    return L - k - 1, None


def _check_tau(name: str, tau: float) -> None:
    if not (0 < tau < 1) or math.isnan(tau):
        raise ConfigError(f"{name}: threshold must be in (0, 1), got {tau}")


def first_hit_reference(curve: Tensor, tau: float, kind: str) -> Rule:
    """The seed notebook's form of ``ed_kl``/``ed_overlap``: taps 0..L-2 only, -1 when none."""
    c = _as_curve(kind, curve)
    searched = c[:-1]
    if kind == "ed_kl":
        hits = (searched < tau * float(c.max())).nonzero().flatten()
    else:
        hits = (searched > tau).nonzero().flatten()
    return (int(hits[0]), None) if len(hits) else (-1, None)


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


def depth_score_fraction(value: float | None, n_layers: int) -> float | None:
    """Csordás's depth score as a fraction of the depth: the score is a centre of mass over
    the skipped blocks ``0..L−2`` (the last block has no later block to affect), so the
    fraction is ``score / (L − 2)``; None when undefined or ``L < 3`` (a single candidate block).

    Kept for callers of earlier versions: renderers use the score's own declaration,
    ``effective_depth.metrics.skip_effects.DEPTH_SCORE.share``, which gives the same number."""
    if value is None or math.isnan(value) or n_layers < 3:
        return None
    return float(value) / (n_layers - 2)
