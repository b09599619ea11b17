"""The integrated-gradient quadrature rules against integrals with known values."""

from __future__ import annotations

import math

import pytest

from effective_depth.errors import ConfigError
from effective_depth.metrics.quadrature import RULES, quadrature


def integrate(rule: str, n: int, f) -> float:
    nodes, weights = quadrature(rule, n)
    return math.fsum(w * f(a) for a, w in zip(nodes, weights))


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("n", [2, 3, 7, 16, 64])
def test_nodes_in_unit_interval_weights_sum_to_one(rule, n):
    nodes, weights = quadrature(rule, n)
    assert len(nodes) == len(weights) == n
    assert all(0.0 <= a <= 1.0 for a in nodes)
    assert list(nodes) == sorted(nodes)
    assert all(w > 0 for w in weights)
    assert math.fsum(weights) == pytest.approx(1.0, abs=1e-14)


def test_riemann_left_is_the_reference_scheme():
    nodes, weights = quadrature("riemann_left", 256)
    assert nodes == tuple(k / 256 for k in range(256))  # exactly the reference's alpha_k = k/N
    assert set(weights) == {1 / 256}


def test_exactness_degrees():
    # a constant: every rule; a line: trapezoid and Gauss-Legendre; degree 2n-1: Gauss-Legendre
    for rule in RULES:
        assert integrate(rule, 5, lambda a: 3.0) == pytest.approx(3.0, abs=1e-14)
    assert integrate("trapezoid", 2, lambda a: 2 * a + 1) == pytest.approx(2.0, abs=1e-14)
    assert integrate("gauss_legendre", 1, lambda a: 2 * a + 1) == pytest.approx(2.0, abs=1e-14)
    for n in (1, 2, 4, 8):
        d = 2 * n - 1
        assert integrate("gauss_legendre", n, lambda a, d=d: a**d) == pytest.approx(1 / (d + 1), abs=1e-14)
    assert abs(integrate("gauss_legendre", 2, lambda a: a**4) - 0.2) > 1e-3  # not degree 2n
    # left Riemann of a line is off by exactly slope / (2N)
    assert integrate("riemann_left", 10, lambda a: a) == pytest.approx(0.5 - 1 / 20, abs=1e-14)


@pytest.mark.parametrize("f, exact", [
    (math.exp, math.e - 1),
    (lambda a: math.sin(3 * a), (1 - math.cos(3)) / 3),
    (lambda a: 1 / (1 + 25 * (a - 0.4) ** 2), (math.atan(3) + math.atan(2)) / 5),
])
def test_known_integrals_converge_at_each_rules_order(f, exact):
    err = {rule: [abs(integrate(rule, n, f) - exact) for n in (16, 32, 64, 128)] for rule in RULES}
    # left Riemann O(1/N): halving the step halves the error
    for a, b in zip(err["riemann_left"], err["riemann_left"][1:]):
        assert 1.6 < a / b < 2.6
    # trapezoid O(1/N^2): about a quarter (N counts nodes, so N-1 intervals)
    for a, b in zip(err["trapezoid"], err["trapezoid"][1:]):
        assert 3.0 < a / b < 5.0
    # Gauss-Legendre: exponential, at machine precision by 64 nodes
    assert err["gauss_legendre"][-1] < 1e-13
    assert err["gauss_legendre"][1] < err["trapezoid"][1] < err["riemann_left"][1]


@pytest.mark.parametrize("rule, n", [("simpson", 8), ("riemann_left", 0), ("trapezoid", 1),
                                     ("gauss_legendre", -3)])
def test_bad_rule_or_node_count_is_a_config_error(rule, n):
    with pytest.raises(ConfigError, match="ig_"):
        quadrature(rule, n)
