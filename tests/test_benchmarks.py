"""The benchmark harness runs, and the engine equals the naive baselines on its model family.
Speed itself is never asserted (benchmarks/ measures it); the harness's own bookkeeping is: the
reported ratio is the ratio of the reported times, the work counts are the hand-counted ones,
the peak memory is at least what the measurement must hold, and the equal-accuracy rule is the
first rung of its ladder that is as accurate as the baselines."""

from __future__ import annotations

import pytest

from benchmarks.run import (
    bench_erasure,
    bench_igrad,
    bench_igrad_equal_accuracy,
    bench_skip,
    build_model,
    make_batch,
)
from effective_depth import metrics
from effective_depth.engine import Batch

#: end to end on models (the fast tier, -m 'not slow', leaves these to the full run)
pytestmark = pytest.mark.slow

L, D, T = 2, 32, 20


def test_benchmark_harness_on_a_micro_model():
    model = build_model(n_layers=L, d_model=D, vocab=100, d_mlp=64, heads=4, kv_heads=2)
    batch = make_batch(100, n_prompts=1, length=T, answer=3)
    skip, erasure, igrad = (bench_skip(model, batch, 1), bench_erasure(model, batch, 1),
                            bench_igrad(model, batch, 8, 1))
    cuts = metrics.draw_cuts(T, 4, "0:0")
    # the work: every (cut, skipped block) for the skips, every (boundary, position) erased
    assert skip["variants"] == len(cuts) * L and len(cuts) >= 1
    assert erasure["variants"] == (L + 1) * T
    assert igrad["steps"] == 8
    # the clean residual stream of the prompt (L + 1 boundaries x T positions x d_model float32)
    # is held by every one of the three: a peak below it means the profiler saw nothing
    resid = (L + 1) * T * D * 4
    for result in (skip, erasure, igrad):
        assert result["max_abs_diff"] <= 1e-5
        assert result["speedup"] == pytest.approx(result["naive_s"] / result["engine_s"])
        assert result["peak_bytes_engine"] >= resid
    assert igrad["speedup_vs_frozen_naive"] == pytest.approx(igrad["naive_frozen_s"] / igrad["engine_s"])


def test_igrad_equal_accuracy_on_a_micro_model():
    model = build_model(n_layers=L, d_model=D, vocab=100, d_mlp=64, heads=4, kv_heads=2)
    batch = make_batch(100, n_prompts=1, length=12, answer=3)
    ladder = (4, 8, 16, 32, 64)
    r = bench_igrad_equal_accuracy(model, batch, ladder=ladder, ref_steps=32, naive_steps=64)
    # the chosen rule is at least as accurate as left Riemann, which agrees with the naive scheme
    assert r["max_abs_err"] <= r["max_abs_err_naive"]
    assert abs(r["max_abs_err_naive"] - r["max_abs_err_engine_riemann"]) <= 1e-6 * r["max_abs_attribution"]
    assert r["reference_self_diff"] <= 1e-5 * r["max_abs_attribution"]
    assert r["speedup"] == pytest.approx(r["naive_frozen_s"] / r["engine_s"])
    # recomputed here: the chosen node count is the first rung as close to the reference as
    # both Riemann schemes, and the rung below it (if any) is not
    one = Batch(batch.tokens[:1], batch.lengths[:1], batch.answer_start[:1], batch.str_tokens[:1])

    def error(n):
        ref = metrics.integrated_gradients(model, one, steps=32, rule="gauss_legendre").maps[0]
        got = metrics.integrated_gradients(model, one, steps=n, rule="gauss_legendre").maps[0]
        return (got - ref).abs().max().item()

    goal = min(r["max_abs_err_naive"], r["max_abs_err_engine_riemann"])
    assert r["steps"] in ladder and error(r["steps"]) == pytest.approx(r["max_abs_err"])
    assert r["max_abs_err"] <= goal
    rung = ladder.index(r["steps"])
    if rung:
        assert error(ladder[rung - 1]) > goal
