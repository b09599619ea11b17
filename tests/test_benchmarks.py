"""The benchmark harness runs, and the engine equals the naive baselines on its model family."""

from __future__ import annotations

from benchmarks.run import bench_erasure, bench_igrad, bench_skip, build_model, make_batch


def test_benchmark_harness_on_a_micro_model():
    model = build_model(n_layers=2, d_model=32, vocab=100, d_mlp=64, heads=4, kv_heads=2)
    batch = make_batch(100, n_prompts=1, length=20, answer=3)
    for result in (bench_skip(model, batch, 1), bench_erasure(model, batch, 1),
                   bench_igrad(model, batch, 8, 1)):
        assert result["max_abs_diff"] <= 1e-5
        assert result["speedup"] > 0 and result["peak_bytes_engine"] > 0
