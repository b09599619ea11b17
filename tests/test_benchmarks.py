"""The benchmark harness runs, and the engine equals the naive baselines on its model family."""

from __future__ import annotations

from benchmarks.run import (
    bench_erasure,
    bench_igrad,
    bench_igrad_equal_accuracy,
    bench_skip,
    build_model,
    make_batch,
)


def test_benchmark_harness_on_a_micro_model():
    model = build_model(n_layers=2, d_model=32, vocab=100, d_mlp=64, heads=4, kv_heads=2)
    batch = make_batch(100, n_prompts=1, length=20, answer=3)
    for result in (bench_skip(model, batch, 1), bench_erasure(model, batch, 1),
                   bench_igrad(model, batch, 8, 1)):
        assert result["max_abs_diff"] <= 1e-5
        assert result["speedup"] > 0 and result["peak_bytes_engine"] > 0


def test_igrad_equal_accuracy_on_a_micro_model():
    model = build_model(n_layers=2, d_model=32, vocab=100, d_mlp=64, heads=4, kv_heads=2)
    batch = make_batch(100, n_prompts=1, length=12, answer=3)
    r = bench_igrad_equal_accuracy(model, batch, ref_steps=32, naive_steps=64)
    # the chosen rule is at least as accurate as left Riemann, which agrees with the naive scheme
    assert r["max_abs_err"] <= r["max_abs_err_naive"]
    assert abs(r["max_abs_err_naive"] - r["max_abs_err_engine_riemann"]) <= 1e-6 * r["max_abs_attribution"]
    assert r["reference_self_diff"] <= 1e-5 * r["max_abs_attribution"]
    assert r["steps"] < 64 and r["speedup"] > 0
