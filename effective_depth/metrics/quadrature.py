"""Quadrature rules on [0, 1] for the integrated-gradients path integral.

Integrated gradients integrate ``g(α) = ∂F/∂x |_{x̄ + α (x − x̄)}`` over ``α ∈ [0, 1]``. A rule
approximates ``∫₀¹ g(α) dα ≈ Σ_k w_k g(α_k)`` with ``n`` nodes ``α_k`` and weights ``w_k``
(``Σ_k w_k = 1``); its cost is ``n`` gradient evaluations, whatever the rule.

* ``riemann_left`` — ``α_k = k/n``, ``w_k = 1/n`` (k = 0..n−1): the scheme of the reference
  implementation. Error ``O(1/n)``; exact for constants only.
* ``trapezoid`` — ``α_k = k/(n−1)`` (k = 0..n−1, both ends), ``w = (½, 1, …, 1, ½)/(n−1)``.
  Error ``O(1/n²)``; exact for linear integrands; needs ``n ≥ 2``.
* ``gauss_legendre`` — the ``n`` Gauss–Legendre nodes mapped from [−1, 1] to [0, 1]. Exact for
  polynomials of degree ``≤ 2n − 1``; error decays exponentially for analytic integrands (the
  integrand here is analytic: softmax and smooth activations along a straight line).

Each rule is a pure function ``n -> (nodes, weights)`` returning Python floats, registered in
:data:`RULES`; :func:`quadrature` validates the name and the node count.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError, close_matches

__all__ = ["ADAPTIVE", "RULES", "MIN_NODES", "check_rule", "quadrature", "riemann_left", "trapezoid", "gauss_legendre"]

Nodes = tuple[tuple[float, ...], tuple[float, ...]]


def riemann_left(n: int) -> Nodes:
    """``α_k = k/n``, equal weights ``1/n``: the left Riemann sum."""
    return tuple(k / n for k in range(n)), (1.0 / n,) * n


def trapezoid(n: int) -> Nodes:
    """``n`` equally spaced nodes including both ends, weights ``(½, 1, …, 1, ½)/(n−1)``."""
    m = n - 1
    nodes = tuple(k / m for k in range(n))
    weights = tuple((0.5 if k in (0, m) else 1.0) / m for k in range(n))
    return nodes, weights


def gauss_legendre(n: int) -> Nodes:
    """The ``n``-point Gauss–Legendre rule on [0, 1] (float64 nodes from numpy)."""
    from numpy.polynomial.legendre import leggauss

    x, w = leggauss(n)
    return tuple(float(v) for v in (x + 1) / 2), tuple(float(v) for v in w / 2)


#: rule name -> function of the node count
RULES: dict[str, Callable[[int], Nodes]] = {
    "riemann_left": riemann_left,
    "trapezoid": trapezoid,
    "gauss_legendre": gauss_legendre,
}

#: the adaptive rule (:mod:`.adaptive_quadrature`): its nodes depend on the integrand, so it is
#: not a function of ``n`` (which is its budget, the most nodes per path)
ADAPTIVE = "adaptive"

#: the fewest nodes each rule accepts
MIN_NODES = {"riemann_left": 1, "trapezoid": 2, "gauss_legendre": 1, ADAPTIVE: 2}


def check_rule(rule: str, n: int) -> None:
    """Raise :class:`ConfigError` unless ``rule`` is known and accepts ``n`` nodes."""
    names = [*RULES, ADAPTIVE]
    if rule not in names:
        raise ConfigError(f"unknown ig_rule {rule!r}{close_matches(rule, names)} "
                          f"Rules: {', '.join(sorted(names))}")
    if isinstance(n, bool) or not isinstance(n, int) or n < MIN_NODES[rule]:
        raise ConfigError(f"ig_steps (the number of nodes) must be an integer >= {MIN_NODES[rule]} "
                          f"for ig_rule {rule}, got {n!r}")


def quadrature(rule: str, n: int) -> Nodes:
    """Nodes and weights of the fixed ``rule`` with ``n`` nodes on [0, 1]."""
    check_rule(rule, n)
    if rule == ADAPTIVE:
        raise ConfigError("ig_rule 'adaptive' has no fixed nodes: its nodes depend on the "
                          "integrand (metrics.adaptive_quadrature)")
    return RULES[rule](n)
