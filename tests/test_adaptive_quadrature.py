"""Adaptive quadrature against integrals with known values: a smooth integrand, a planted narrow
peak (where it beats left-Riemann-256 with a quarter of the evaluations), the limit of a vanishing
tolerance (uniform composite Boole, converging like the fixed rules), and the budget."""

from __future__ import annotations

import math

import pytest
import torch

from effective_depth.metrics.adaptive_quadrature import PathRule, adaptive_quadrature
from effective_depth.metrics.quadrature import quadrature


def sigmoid_path(c: float, w: float):
    """``F(α) = σ((α − c)/w) + 0.3 sin 2α`` and its derivative, split 1:3 over two "tokens"."""

    def F(a: float) -> float:
        return 1 / (1 + math.exp(-(a - c) / w)) + 0.3 * math.sin(2 * a)

    def dF(a: float) -> float:
        s = 1 / (1 + math.exp(-(a - c) / w))
        return s * (1 - s) / w + 0.6 * math.cos(2 * a)

    return F, dF


def evaluator(paths, calls=None):
    def evaluate(requests):
        if calls is not None:
            calls.append(len(requests))
        return [(paths[i][0](a), torch.tensor([0.25, 0.75], dtype=torch.float64) * paths[i][1](a))
                for i, a in requests]

    return evaluate


def exact(path) -> float:
    return path[0](1.0) - path[0](0.0)


def test_smooth_integrand_known_integral():
    paths = [(lambda a: math.exp(a) - math.cos(3 * a) / 3, lambda a: math.exp(a) + math.sin(3 * a))]
    r = adaptive_quadrature(evaluator(paths), 1, tol=1e-9)[0]
    assert float(r.integral.sum()) == pytest.approx(exact(paths[0]), abs=1e-9)
    # the per-token entries: 1/4 and 3/4 of the integral
    assert r.integral.tolist() == pytest.approx([0.25 * exact(paths[0]), 0.75 * exact(paths[0])], abs=1e-9)
    assert abs(r.gap) < 1e-9 and not r.budget_exhausted
    assert sum(r.weights) == pytest.approx(1.0, abs=1e-14) and all(w > 0 for w in r.weights)
    assert r.nodes[0] == 0.0 and r.nodes[-1] == 1.0 and r.evals == len(r.nodes) < 256
    # a loose tolerance on a smooth integrand: the coarse pass is enough
    assert adaptive_quadrature(evaluator(paths), 1, tol=1e-3)[0].evals == 17


@pytest.mark.parametrize("c, w", [(0.37, 0.003), (0.5123, 0.002), (0.81, 0.004)])
def test_planted_narrow_peak_beats_riemann_256_with_a_quarter_of_the_evaluations(c, w):
    path = sigmoid_path(c, w)
    alphas, weights = quadrature("riemann_left", 256)
    err_riemann = abs(math.fsum(wk * path[1](a) for a, wk in zip(alphas, weights)) - exact(path))
    r = adaptive_quadrature(evaluator([path]), 1, tol=1e-3)[0]
    err = abs(float(r.integral.sum()) - exact(path))
    assert r.evals <= 64
    assert err < err_riemann / 2, (err, err_riemann)
    # the coarse pass alone (17 equally spaced nodes) misses the peak: the refinement found it
    coarse = adaptive_quadrature(evaluator([path]), 1, max_evals=17)[0]
    assert abs(float(coarse.integral.sum()) - exact(path)) > 10 * err
    assert coarse.budget_exhausted
    # the reported gap is the error of the row sum (F is exact at the ends)
    assert r.gap == pytest.approx(exact(path) - float(r.integral.sum()), abs=1e-12)


def test_paths_are_refined_independently_in_shared_rounds():
    paths = [sigmoid_path(0.37, 0.003), (lambda a: a * a, lambda a: 2 * a)]
    calls: list[int] = []
    r = adaptive_quadrature(evaluator(paths, calls), 2, tol=1e-3)
    assert r[1].evals == 17 and r[0].evals > 17  # the quadratic: exact on the coarse pass
    assert float(r[1].integral.sum()) == pytest.approx(1.0, abs=1e-14)
    assert calls[0] == 2 * 17 and sum(calls) == r[0].evals + r[1].evals
    assert len(calls) > 2  # several rounds, each one batch over every path that needed nodes


def test_vanishing_tolerance_is_uniform_composite_boole():
    path = sigmoid_path(0.43, 0.02)
    r = adaptive_quadrature(evaluator([path]), 1, max_evals=129, tol=0.0)[0]
    assert r.nodes == [k / 128 for k in range(129)] and r.budget_exhausted
    boole = [7, 32, 12, 32, 7]
    want = [0.0] * 129
    for p in range(32):
        for j in range(5):
            want[4 * p + j] += boole[j] / 90 / 32
    assert r.weights == pytest.approx(want, abs=1e-15)
    # and it converges to the integral with the fixed rules
    errs = [abs(float(adaptive_quadrature(evaluator([path]), 1, max_evals=n, tol=0.0)[0].integral.sum())
                - exact(path)) for n in (33, 65, 129, 257)]
    assert errs[0] > errs[1] > errs[2] > errs[3] and errs[3] < 1e-8
    for rule in ("trapezoid", "gauss_legendre"):
        a, w = quadrature(rule, 257)
        assert abs(math.fsum(wk * path[1](x) for x, wk in zip(a, w)) - exact(path)) < 1e-5


@pytest.mark.parametrize("budget, nodes", [(2, [0.0, 1.0]), (4, [0.0, 0.5, 1.0]),
                                           (8, [k / 4 for k in range(5)])])
def test_small_budgets_use_the_largest_dyadic_grid(budget, nodes):
    r = adaptive_quadrature(evaluator([(lambda a: a**3, lambda a: 3 * a * a)]), 1, max_evals=budget)[0]
    assert r.nodes == nodes
    assert float(r.integral.sum()) == pytest.approx(1.0 if budget > 2 else 1.5, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        adaptive_quadrature(evaluator([]), 0, max_evals=1)


def test_path_rule_gap():
    r = PathRule([0.0, 1.0], [0.5, 0.5], torch.tensor([0.2, 0.3]), f0=0.1, f1=0.7, estimate=0.0)
    assert r.gap == pytest.approx(0.1) and r.evals == 2
