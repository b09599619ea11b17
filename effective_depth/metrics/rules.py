"""The effective-depth rules: each turns a per-layer curve into a block index ``e`` (0-based),
or into *undefined* with the reason (never a crash, never an unmarked ``-1``); see
``docs/methods.md`` §6. The measurement that produces a curve declares the rule that reads it
(``EstimatorSpec``); these are the formulas, on plain numbers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..stats import Rule

__all__ = ["ed_cos", "ed_kl", "ed_overlap", "ed_skip", "ed_task", "ed_prune",
           "first_hit_reference"]


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
