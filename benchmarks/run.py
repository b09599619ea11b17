"""Speed and memory of the engine's sweeps against naive implementations, in the same run.

    python benchmarks/run.py [--quick] [--json FILE] [--limit-model real/smollm2-135m-instruct]

The model is a randomly initialised 12-block Qwen2-style decoder (d_model 256, vocabulary 4096;
integrated gradients are also timed with GPT-2's 50,257-token vocabulary);
weights do not matter for speed, and both sides must produce the same numbers. "Naive" is the way
the reference research scripts work: one full ``run_with_hooks`` forward per (cut, skipped block)
for the skip sweep, per (boundary, position) for residual erasure, and per block of 16 steps for
integrated gradients (the interpolations injected at block ``l`` by a hook, the model's weights
left requiring grad as a freshly loaded model has them; a second naive IG with frozen weights is
reported too, so the two sources of the speed-up can be told apart). ``igrad_equal_accuracy``
compares IG at equal accuracy: the fewest Gauss-Legendre nodes at least as close to a very fine
reference as left-Riemann-256, against the naive left-Riemann-256 scheme with frozen weights. Peak memory is the high-water
mark of CPU tensor allocations during the call, from the PyTorch profiler's memory events.

The logit-lens check uses a second model with a 150k vocabulary and reports the peak memory of
``metrics.logit_lens`` against the bound the code keeps: the clean output distributions of the
prompt (``T · V`` floats) and at most four live ``[rows, V]`` blocks of the unembedding (logits,
log-probabilities, probabilities and one temporary), ``rows = lens_rows(V)``:
``(T + 4 · lens_rows(V)) · V`` floats.

``--limit-model MODEL`` adds the hardware's limit: MODEL's default study (``--limit-n`` prompts,
every measurement) under ``fp32`` and under ``auto``, each measurement's time, the planner's
projection under that policy and peak memory, and the work the planner counts priced at Hugging
Face's own forward of the same checkpoint on the same tokens (the faster of float32 and
bfloat16), with the ratio priced / measured per measurement and the CPU flags
(``benchmarks/precision_agreement.py`` holds the pricing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.naive import naive_erasure, naive_future_effects, naive_integrated_gradients  # noqa: E402
from effective_depth import metrics  # noqa: E402
from effective_depth.engine import Batch  # noqa: E402


def peak_bytes(fn) -> tuple[object, int]:
    """Run ``fn`` under the profiler; the high-water mark of live CPU tensor bytes it allocated."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = peak = 0
    for _, n in events:
        current += n
        peak = max(peak, current)
    return out, peak


def timed(fn, repeat: int = 1) -> tuple[object, float]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def build_model(n_layers: int, d_model: int, vocab: int, d_mlp: int, heads: int, kv_heads: int, seed: int = 0):
    from transformer_lens import HookedTransformer
    from transformer_lens.config import HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, d_head=d_model // heads, n_heads=heads,
        n_key_value_heads=kv_heads, d_mlp=d_mlp, d_vocab=vocab, n_ctx=1024, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=d_model // heads,
        gated_mlp=True, final_rms=True, original_architecture="Qwen2ForCausalLM", eps=1e-6,
        device="cpu", seed=seed, init_weights=True,
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


def make_batch(vocab: int, n_prompts: int, length: int, answer: int, seed: int = 1) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, vocab, (n_prompts, length), generator=gen)
    tokens[:, 0] = 1
    return Batch(tokens, torch.full((n_prompts,), length), torch.full((n_prompts,), length - answer),
                 [[str(t) for t in row.tolist()] for row in tokens])


def bench_skip(model, batch, repeat):
    cuts = [metrics.draw_cuts(batch.width, 4, f"0:{b}") for b in range(batch.size)]
    ours, t_ours = timed(lambda: metrics.skip_effects(model, batch, cuts=cuts, batch_size=batch.size), repeat)
    naive, t_naive = timed(lambda: naive_future_effects(model, batch, cuts), repeat)
    diff = max((ours.layer_effect - naive[0]).abs().max().item(),
               (ours.output_effect - naive[1]).abs().max().item())
    _, p_ours = peak_bytes(lambda: metrics.skip_effects(model, batch, cuts=cuts, batch_size=batch.size))
    _, p_naive = peak_bytes(lambda: naive_future_effects(model, batch, cuts[:1] + [[]] * (batch.size - 1)))
    return {"speedup": t_naive / t_ours, "max_abs_diff": diff, "naive_s": t_naive, "engine_s": t_ours,
            "peak_bytes_engine": p_ours, "peak_bytes_naive_one_prompt": p_naive,
            "variants": sum(len(c) for c in cuts) * model.cfg.n_layers}


def bench_erasure(model, batch, repeat):
    mu = metrics.mean_residuals(model, batch)
    ours, t_ours = timed(lambda: metrics.erasure(model, batch, mean_resid=mu), repeat)
    naive, t_naive = timed(lambda: naive_erasure(model, batch, mu), repeat)
    diff = max((a[:, 1:] - b[:, 1:]).abs().max().item() for a, b in zip(ours.maps, naive))
    _, p_ours = peak_bytes(lambda: metrics.erasure(model, batch, mean_resid=mu))
    return {"speedup": t_naive / t_ours, "max_abs_diff": diff, "naive_s": t_naive, "engine_s": t_ours,
            "peak_bytes_engine": p_ours,
            "variants": (model.cfg.n_layers + 1) * int(batch.lengths.sum())}


def bench_igrad(model, batch, n_steps, repeat):
    one = Batch(batch.tokens[:1], batch.lengths[:1], batch.answer_start[:1], batch.str_tokens[:1])
    ours, t_ours = timed(lambda: metrics.integrated_gradients(model, one, steps=n_steps, rule="riemann_left"), repeat)
    naive, t_naive = timed(lambda: naive_integrated_gradients(model, one, n_steps, weight_grads=True), repeat)
    frozen, t_frozen = timed(lambda: naive_integrated_gradients(model, one, n_steps, weight_grads=False), repeat)
    scale = max(naive.abs().max().item(), 1e-12)
    diff = (ours.maps[0] - naive).abs().max().item()
    _, p_ours = peak_bytes(lambda: metrics.integrated_gradients(model, one, steps=n_steps, rule="riemann_left"))
    return {"speedup": t_naive / t_ours, "speedup_vs_frozen_naive": t_frozen / t_ours,
            "max_abs_diff": diff, "max_abs_attribution": scale,
            "max_abs_diff_frozen": (ours.maps[0] - frozen).abs().max().item(),
            "naive_s": t_naive, "naive_frozen_s": t_frozen, "engine_s": t_ours,
            "peak_bytes_engine": p_ours, "steps": n_steps}


def bench_igrad_equal_accuracy(model, batch, ladder=(4, 8, 16, 32, 64), ref_steps=128, naive_steps=256):
    """Integrated gradients at equal accuracy: the fewest Gauss-Legendre nodes whose map is at least
    as close to a Gauss-Legendre-``ref_steps`` reference as left-Riemann-``naive_steps`` is, timed
    against the naive left-Riemann scheme (frozen weights: the stricter baseline) and against the
    engine's own left-Riemann run."""
    one = Batch(batch.tokens[:1], batch.lengths[:1], batch.answer_start[:1], batch.str_tokens[:1])

    def ig(rule, n):
        return metrics.integrated_gradients(model, one, steps=n, rule=rule)

    ref = ig("gauss_legendre", ref_steps).maps[0]
    ref_check = (ig("gauss_legendre", ref_steps // 2).maps[0] - ref).abs().max().item()
    scale = ref.abs().max().item()
    naive, t_naive = timed(lambda: naive_integrated_gradients(model, one, naive_steps, weight_grads=False))
    riemann, t_riemann = timed(lambda: ig("riemann_left", naive_steps))
    err_naive = (naive - ref).abs().max().item()
    err_riemann = (riemann.maps[0] - ref).abs().max().item()
    for n in ladder:
        gauss, t_gauss = timed(lambda n=n: ig("gauss_legendre", n))
        err = (gauss.maps[0] - ref).abs().max().item()
        if err <= min(err_naive, err_riemann):
            break
    else:
        raise RuntimeError(f"no Gauss-Legendre rule in {ladder} reaches left-Riemann-{naive_steps}")
    return {"speedup": t_naive / t_gauss, "speedup_vs_engine_riemann": t_riemann / t_gauss,
            "rule": "gauss_legendre", "steps": n, "naive_steps": naive_steps,
            "max_abs_err": err, "max_abs_err_naive": err_naive, "max_abs_err_engine_riemann": err_riemann,
            "max_abs_attribution": scale, "reference": f"gauss_legendre-{ref_steps}",
            "reference_self_diff": ref_check, "naive_frozen_s": t_naive, "engine_riemann_s": t_riemann,
            "engine_s": t_gauss, "V": int(model.cfg.d_vocab)}


def bench_logit_lens(length: int, vocab: int):
    model = build_model(n_layers=4, d_model=64, vocab=vocab, d_mlp=256, heads=4, kv_heads=4, seed=2)
    batch = make_batch(vocab, 1, length, 4, seed=3)
    metrics.logit_lens(model, batch)  # warm-up
    _, peak = peak_bytes(lambda: metrics.logit_lens(model, batch))

    def naive():  # every layer's lens at once: L x T x V
        _, cache = model.run_with_cache(batch.tokens)
        stack = torch.stack([cache[f"blocks.{i}.hook_resid_pre"] for i in range(4)])
        return torch.log_softmax(model.unembed(model.ln_final(stack[:, 0])), -1)

    _, naive_peak = peak_bytes(naive)
    from effective_depth.metrics.base import lens_rows

    bound = (length + 4 * lens_rows(vocab)) * vocab * 4
    return {"peak_bytes": peak, "bound_bytes": bound, "naive_peak_bytes": naive_peak,
            "T": length, "V": vocab, "within_bound": peak <= bound}


def bench_hardware_limit(model: str, n: int, policies=("fp32", "auto")) -> dict:
    """``model``'s default study under each policy against its work priced at Hugging Face's
    fastest forward; the projection is ``effective-depth plan``'s under the same policy."""
    import tempfile

    from benchmarks.precision_agreement import cpu_flags, hf_prices, priced, run_one
    from effective_depth.study.planner import plan_study
    from effective_depth.study.run import StudyConfig

    out = {"model": model, "n_examples": n, "cpu_flags": cpu_flags(), "policies": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in policies:
            plan = plan_study(StudyConfig(model=model, n_examples=n, precision=policy))
            run = run_one(model, policy, n, Path(tmp))
            out["policies"][policy] = {
                "resolved": plan.precision, "wall_s": run["wall_s"],
                "load_before": run["load_before"], "seconds": run["seconds"],
                "projected_s": {m.name: m.seconds for m in plan.measurements if not m.skipped},
                "peak_rss_gib": run["peak_rss_gib"]}
            if "work" not in out:
                inputs = json.loads((run["_dir"] / "inputs.json").read_text())
                path = json.loads((run["_dir"] / "results.json").read_text())["model"]["source"]["path"]
                prices = hf_prices(path, [e["tokens"] for e in inputs["examples"]])
                out["hf_prices"] = prices
                out["work"] = priced(model, n, prices)
    for name, w in out["work"].items():
        w["ratio"] = {p: round(w["hf_seconds"] / r["seconds"][name], 3) if r["seconds"].get(name)
                      else None for p, r in out["policies"].items()}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="Small workloads (24 tokens, 32 IG nodes): under 10 minutes on 2 cores.")
    parser.add_argument("--json", type=Path, default=None, help="Write the figures to this file.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--limit-model", default=None, metavar="MODEL",
                        help="Also run MODEL's default study under fp32 and auto and price each "
                             "measurement's work at Hugging Face's fastest forward "
                             "(e.g. real/smollm2-135m-instruct; minutes per policy).")
    parser.add_argument("--limit-n", type=int, default=20, help="Prompts of --limit-model's study.")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # --quick: the same measurements on smaller work (shorter prompts, fewer IG nodes, a coarser
    # equal-accuracy ladder), engine and naive each timed on it; --full: the published sizes
    size = dict(n_prompts=2, length=24, ig_steps=32, lens_T=128, repeat=1,
                equal=dict(ladder=(4, 8, 16), ref_steps=64, naive_steps=64)) if args.quick else \
        dict(n_prompts=4, length=96, ig_steps=256, lens_T=256, repeat=2,
             equal=dict(ladder=(4, 8, 16, 32, 64), ref_steps=128, naive_steps=256))
    wall = time.perf_counter()
    model = build_model(n_layers=12, d_model=256, vocab=4096, d_mlp=1024, heads=4, kv_heads=4)
    batch = make_batch(4096, size["n_prompts"], size["length"], 4)
    gpt2_vocab = build_model(n_layers=12, d_model=256, vocab=50257, d_mlp=1024, heads=4, kv_heads=4)
    gpt2_batch = make_batch(50257, 1, size["length"], 4)
    metrics.contributions(model, batch)  # warm-up
    sections = {
        "skip_future": lambda: bench_skip(model, batch, size["repeat"]),
        "erasure": lambda: bench_erasure(model, batch, size["repeat"]),
        "igrad": lambda: bench_igrad(model, batch, size["ig_steps"], size["repeat"]),
        # the same with GPT-2's vocabulary (50,257), as a real small model of this width has
        # (TinyStories-8M): the naive scheme's full-vocabulary softmax then weighs more
        "igrad_gpt2_vocab": lambda: bench_igrad(gpt2_vocab, gpt2_batch, size["ig_steps"], 1),
        "igrad_equal_accuracy": lambda: {
            "V4096": bench_igrad_equal_accuracy(model, batch, **size["equal"]),
            "V50257": bench_igrad_equal_accuracy(gpt2_vocab, gpt2_batch, **size["equal"])},
        "logit_lens": lambda: bench_logit_lens(size["lens_T"], 150_000),
    }
    if args.limit_model:
        sections["hardware_limit"] = lambda: bench_hardware_limit(args.limit_model, args.limit_n)
    report: dict = {
        "config": {"model": "12 blocks, d_model 256, d_mlp 1024 (gated), 4 heads, vocab 4096",
                   "prompts": size["n_prompts"], "tokens": size["length"], "ig_steps": size["ig_steps"],
                   "threads": torch.get_num_threads(), "torch": torch.__version__, "quick": args.quick,
                   "load_average_start": os.getloadavg()},
        "section_seconds": {},
    }
    for key, fn in sections.items():
        start = time.perf_counter()
        report[key] = fn()
        report["section_seconds"][key] = round(time.perf_counter() - start, 1)
        print(f"{key}: {report['section_seconds'][key]} s", flush=True)
    report["config"]["wall_seconds"] = round(time.perf_counter() - wall, 1)
    report["config"]["load_average_end"] = os.getloadavg()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_report(report: dict) -> None:
    mib = 1 / (1 << 20)
    cfg = report["config"]
    print(f"model: {cfg['model']}; {cfg['prompts']} prompts x {cfg['tokens']} tokens; "
          f"{cfg['threads']} threads; wall {cfg.get('wall_seconds', float('nan'))} s "
          f"(load average {cfg.get('load_average_start')} -> {cfg.get('load_average_end')})")
    for key, label in (("skip_future", "skip future effects"), ("erasure", "residual erasure"),
                       ("igrad", "integrated gradients"), ("igrad_gpt2_vocab", "  ... with V=50257")):
        r = report[key]
        extra = (f", {r['speedup_vs_frozen_naive']:.2f}x vs naive with frozen weights"
                 if key.startswith("igrad") else "")
        print(f"{label:22s} speed-up {r['speedup']:6.2f}x{extra}  (naive {r['naive_s']:.2f} s, "
              f"engine {r['engine_s']:.2f} s)  max |diff| {r['max_abs_diff']:.2e}  "
              f"peak {r['peak_bytes_engine'] * mib:.1f} MiB")
    for key, r in report["igrad_equal_accuracy"].items():
        print(f"IG equal accuracy {key:7s} {r['rule']}-{r['steps']} vs left Riemann-{r['naive_steps']}: "
              f"speed-up {r['speedup']:.1f}x vs naive (frozen weights), "
              f"{r['speedup_vs_engine_riemann']:.1f}x vs the engine's Riemann  (naive {r['naive_frozen_s']:.2f} s, "
              f"engine Riemann {r['engine_riemann_s']:.2f} s, engine {r['engine_s']:.2f} s)  max |err| vs "
              f"{r['reference']}: {r['max_abs_err']:.2e} vs Riemann {r['max_abs_err_naive']:.2e} "
              f"(max |A| {r['max_abs_attribution']:.1e})")
    lens = report["logit_lens"]
    print(f"{'logit lens (V=150k)':22s} peak {lens['peak_bytes'] * mib:.1f} MiB vs bound (T + 4 rows)*V floats "
          f"{lens['bound_bytes'] * mib:.1f} MiB (naive L*T*V: {lens['naive_peak_bytes'] * mib:.1f} MiB)")
    limit = report.get("hardware_limit")
    if limit:
        print(f"\n{limit['model']}, {limit['n_examples']} prompts; CPU flags: {limit['cpu_flags']}")
        pols = list(limit["policies"])
        head = "".join(f"  {p + ' (' + limit['policies'][p]['resolved'] + ')':>22s}" for p in pols)
        print(f"{'measurement':22s}{'HF-priced s':>12s}{head}   (measured s / projected s / "
              "peak GiB / priced:measured)")
        for name, w in limit["work"].items():
            cells = ""
            for p in pols:
                r = limit["policies"][p]
                sec, proj = r["seconds"].get(name), r["projected_s"].get(name)
                if sec is None:
                    cells += f"  {'-':>22s}"
                    continue
                cells += (f"  {sec:6.1f}/{proj or float('nan'):6.1f}/"
                          f"{r['peak_rss_gib'].get(name) or 0:4.1f}/{w['hf_seconds'] / sec:4.2f}")
            print(f"{name:22s}{w['hf_seconds']:12.1f}{cells}")
        print(f"{'study (wall)':22s}{'':12s}"
              + "".join(f"  {limit['policies'][p]['wall_s']:>22}" for p in pols)
              + "  (load at start " + " / ".join(str(limit['policies'][p]['load_before'])
                                                  for p in pols) + ")")


if __name__ == "__main__":
    main()
