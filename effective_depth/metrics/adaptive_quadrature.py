"""Adaptive quadrature on [0, 1] for integrated gradients: a coarse pass, then subdivision where
the local error estimates say the integrand is sharp.

Integrated gradients integrate, along each straight path (one per example and block), a vector
integrand ``g(α)`` (one entry per token) whose sum is ``dF/dα``; every evaluation at ``α`` also
gives the target ``F(α)`` itself (the forward pass computes it). On trained models ``dF/dα`` can
have peaks of width ≈ 0.01 in ``α`` (the answer probability switches in a narrow window), which
equally spaced or Gauss–Legendre nodes resolve only with hundreds of nodes everywhere. This rule
puts the nodes where the peaks are:

1. **Coarse pass.** The dyadic grid ``α = j / 16`` (17 nodes; fewer, ``2^k + 1``, when the budget
   is smaller), cut into *panels* of 5 equally spaced nodes ``a, a + h/4, …, b`` (``h = b − a``).
2. **Local error of a panel.** ``S₁`` = Simpson's rule on ``a, m, b``; ``S₂`` = composite Simpson on
   the two halves (all 5 nodes); the panel's value is Boole's rule ``B = S₂ + (S₂ − S₁)/15``
   (positive weights ``(7, 32, 12, 32, 7)·h/90``). Its error estimate is the larger of
   ``max_t |S₂ − S₁|_t / 15`` (per token) and the panel's *completeness gap*
   ``|F(b) − F(a) − Σ_t B_t|``, which is exact for the row sum and catches a peak that falls
   between all five nodes.
3. **Subdivision.** A panel whose estimate exceeds ``tol · h`` is split in two (its 5 nodes are
   the halves' end and mid points, so each half needs 2 new nodes, at its quarter points). All
   paths' new nodes form one batch — one engine sweep over every block of the example — per
   round. When the budget of ``max_evals`` nodes per path would be exceeded, the panels with the
   largest estimates are split first; panels narrower than ``2^-12`` are not split.
4. **Result.** The sum of the accepted panels' Boole values, i.e. fixed nodes and weights per
   path (:attr:`PathRule.nodes`, :attr:`PathRule.weights`), the number of evaluations, and the
   completeness gap ``F(1) − F(0) − Σ_t A_t`` of the whole path.

As the tolerance goes to 0 every panel is split down to width ``2^-12`` and the rule is composite
Boole on a uniform grid, which converges to the integral like every fixed rule
(:mod:`.quadrature`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["ADAPTIVE_TOL", "COARSE_NODES", "MIN_WIDTH", "PathRule", "adaptive_quadrature", "coarse_nodes"]

#: the absolute tolerance of a path's integral, in units of the target (summed answer probability)
ADAPTIVE_TOL = 1e-2
#: nodes of the coarse pass when the budget allows it
COARSE_NODES = 17
#: panels narrower than this are not split
MIN_WIDTH = 2.0 ** -12

#: evaluate([(path, α), ...]) -> [(F(α), g(α)), ...]
Evaluate = Callable[[list[tuple[int, float]]], list[tuple[float, Tensor]]]

_BOOLE = (7 / 90, 32 / 90, 12 / 90, 32 / 90, 7 / 90)


@dataclass
class PathRule:
    """The rule adaptive quadrature settled on for one path: its nodes and weights (sorted by
    node), the integral ``Σ_k w_k g(α_k)``, ``F`` at both ends, its own error estimate (the sum of
    the accepted panels' estimates), and whether the budget ran out first."""

    nodes: list[float]
    weights: list[float]
    integral: Tensor
    f0: float
    f1: float
    estimate: float
    budget_exhausted: bool = False

    @property
    def evals(self) -> int:
        return len(self.nodes)

    @property
    def gap(self) -> float:
        """``F(1) − F(0) − Σ_t integral_t``: the completeness gap (0 for the exact integral)."""
        return self.f1 - self.f0 - float(self.integral.double().sum())


@dataclass
class _Path:
    values: dict[float, tuple[float, Tensor]] = field(default_factory=dict)
    panels: dict[tuple[float, float], float] = field(default_factory=dict)  # (a, b) -> estimate
    exhausted: bool = False


def _panel_nodes(a: float, b: float) -> tuple[float, ...]:
    h = (b - a) / 4
    return a, a + h, a + 2 * h, a + 3 * h, b


def _estimate(p: _Path, a: float, b: float) -> float:
    """The error estimate of panel [a, b] (all 5 nodes evaluated)."""
    (fa, g0), (_, g1), (_, g2), (_, g3), (fb, g4) = (p.values[x] for x in _panel_nodes(a, b))
    h = b - a
    s1 = h / 6 * (g0 + 4 * g2 + g4)
    s2 = h / 12 * (g0 + 4 * g1 + 2 * g2 + 4 * g3 + g4)
    boole = s2 + (s2 - s1) / 15
    local = float((s2 - s1).abs().max()) / 15 if s1.numel() else 0.0
    return max(local, abs(fb - fa - float(boole.double().sum())))


def coarse_nodes(max_evals: int) -> list[float]:
    """The coarse pass: ``α = j / 2^k`` with the most nodes ``2^k + 1 ≤ min(max_evals, 17)``."""
    n = 2
    while 2 * n - 1 <= min(max_evals, COARSE_NODES):
        n = 2 * n - 1
    return [j / (n - 1) for j in range(n)]


def _split(p: _Path, max_evals: int, tol: float) -> list[float]:
    """Choose the panels to split (largest estimate first, until the rest sum to ``tol / 2``, as
    the budget allows); return the new nodes."""
    total = sum(p.panels.values())
    if total <= tol:
        return []
    left = max_evals - len(p.values)
    new: list[float] = []
    for (a, b), est in sorted(p.panels.items(), key=lambda kv: -kv[1]):
        if total <= tol / 2:
            break
        if (b - a) / 2 < MIN_WIDTH:
            continue
        if left < 4:
            p.exhausted = True
            break
        del p.panels[(a, b)]
        total -= est
        m = (a + b) / 2
        for lo, hi in ((a, m), (m, b)):
            p.panels[(lo, hi)] = math.nan  # judged once its nodes are in
            q = _panel_nodes(lo, hi)
            new += [q[1], q[3]]
        left -= 4
    return new


def adaptive_quadrature(evaluate: Evaluate, n_paths: int, *, max_evals: int = 256,
                        tol: float = ADAPTIVE_TOL) -> list[PathRule]:
    """Integrate ``n_paths`` vector integrands over [0, 1] adaptively (module docstring), with at
    most ``max_evals`` evaluations per path (at least 2) and absolute tolerance ``tol``.
    ``evaluate`` receives every pending (path, α) of a round at once."""
    if max_evals < 2:
        raise ValueError("adaptive quadrature needs a budget of at least 2 nodes")
    coarse = coarse_nodes(max_evals)
    paths = [_Path() for _ in range(n_paths)]
    requests = [(i, x) for i in range(n_paths) for x in coarse]
    if len(coarse) >= 5:
        for p in paths:
            p.panels = {(coarse[j], coarse[j + 4]): math.nan for j in range(0, len(coarse) - 1, 4)}
    while requests:
        for (i, x), value in zip(requests, evaluate(requests)):
            paths[i].values[x] = value
        requests = []
        for i, p in enumerate(paths):
            for (a, b), est in p.panels.items():
                if math.isnan(est):
                    p.panels[(a, b)] = _estimate(p, a, b)
            requests += [(i, x) for x in _split(p, max_evals, tol)]
    return [_finish(p, coarse) for p in paths]


def _finish(p: _Path, coarse: Sequence[float]) -> PathRule:
    weights: dict[float, float] = {}
    if p.panels:
        for a, b in p.panels:
            for x, w in zip(_panel_nodes(a, b), _BOOLE):
                weights[x] = weights.get(x, 0.0) + w * (b - a)
    elif len(coarse) == 3:  # a budget of 3 or 4: Simpson
        weights = dict(zip(coarse, (1 / 6, 4 / 6, 1 / 6)))
    else:  # a budget of 2: the trapezoid
        weights = dict(zip(coarse, (0.5, 0.5)))
    nodes = sorted(weights)
    ws = [weights[x] for x in nodes]
    integral = sum(w * p.values[x][1].double() for x, w in zip(nodes, ws))
    assert isinstance(integral, Tensor) and math.isclose(math.fsum(ws), 1.0, abs_tol=1e-12)
    return PathRule(nodes, ws, integral.to(p.values[0.0][1].dtype), p.values[0.0][0], p.values[1.0][0],
                    float(sum(p.panels.values())), p.exhausted)

