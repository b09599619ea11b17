"""bf16-mixed against fp32: every estimator, every stored curve, and the time of each measurement.

    python -m benchmarks.precision_agreement [--models zoo/add-4l,real/gemma-3-270m] [-n 20]
        [--json benchmarks/results_precision_agreement.json]

For each model, the default study (every measurement, the model's default task, ``-n`` prompts)
runs once under ``fp32`` and once under ``bf16-mixed`` (fresh run directories, same seed). An
estimator *agrees* when the bf16-mixed block lies within the fp32 run's 95% CI or within one
block of the fp32 block (``docs/methods.md``, "Precision"), or both are undefined. For every
stored tensor the largest absolute difference and the relative (Frobenius) difference are
recorded. Times are each measurement's own wall time (``results.json`` ``resources``), with the
CPU flags and the load average beside them.

The hardware's limit, in the same run (``--price``, on by default for the real models): each
measurement's work as the planner counts it (block-tokens, of which the differentiated ones count
three times — a forward and a backward of twice its cost — and lens rows) priced at Hugging
Face's own forward of the same checkpoint on the study's own tokens (``AutoModelForCausalLM``,
``sdpa`` attention, the faster of float32 and bfloat16: seconds per block-token of the decoder,
seconds per row of ``lm_head`` + ``log_softmax``). The ratio *HF-priced seconds / measured
seconds* is 1.0 when the engine runs at Hugging Face's speed for the work it does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

ZOO = ("zoo/add-2l", "zoo/add-4l", "zoo/add-8l", "zoo/add-12l", "zoo/add-4l-scratch",
       "zoo/add-mixed-6l", "zoo/spare-2l", "zoo/spare-4l", "zoo/spare-8l", "zoo/spare-12l",
       "zoo/spare-16l")
REAL = ("real/smollm2-135m-instruct", "real/gemma-3-270m")


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return " ".join(sorted(f for f in flags if "bf16" in f or f.startswith("amx")
                                       or f in ("avx512f", "avx2"))) or "none of interest"
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_one(model: str, policy: str, n: int, root: Path) -> dict:
    from effective_depth.store.results import RunDir
    from effective_depth.study.run import StudyConfig, run_study

    out = root / f"{model.replace('/', '_')}__{policy}"
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = run_study(StudyConfig(model=model, n_examples=n, precision=policy), out, force=True,
                       progress=False, dashboard=False)
    wall = time.perf_counter() - t0
    rec = result.record
    depth = {}
    for name, entry in rec.depth.items():
        if getattr(entry, "kind", "") != "estimator":
            continue
        depth[name] = {"layer": entry.layer, "layer_ci": entry.layer_ci, "reason": entry.reason}
    tensors = RunDir(out).load_tensors()
    return {
        "wall_s": round(wall, 1), "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "seconds": {k: v.seconds for k, v in rec.resources.items()},
        "peak_rss_gib": {k: v.peak_rss_gib for k, v in rec.resources.items()},
        "depth": depth, "accuracy": rec.accuracy,
        "warnings": [w.code for w in rec.warnings],
        "_tensors": tensors, "_dir": out,
    }


def hf_prices(path: str, token_lists: list[list[int]], rows: int = 341) -> dict:
    """Hugging Face's seconds per block-token and per lens row, fastest dtype (best of 3), on
    the device the studies ran on (CUDA when present)."""
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    width = max(len(t) for t in token_lists)
    tokens = torch.tensor([t + [t[-1]] * (width - len(t)) for t in token_lists], device=device)

    def best(fn):
        fn()
        times = []
        for _ in range(3):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        hf.eval().to(device)
        n_layers = hf.config.num_hidden_layers
        h = torch.randn(rows, hf.config.hidden_size, dtype=dtype, device=device)
        with torch.no_grad():
            block = best(lambda hf=hf: hf.model(tokens)) / (n_layers * tokens.numel())
            lens = best(lambda hf=hf, h=h: torch.log_softmax(
                hf.lm_head(hf.model.norm(h)).float(), -1)) / rows
        out[str(dtype).removeprefix("torch.")] = {"block_token_s": block, "lens_row_s": lens}
        del hf
    out["fastest"] = {k: min(v[k] for v in out.values()) for k in ("block_token_s", "lens_row_s")}
    out["device"] = device  # after "fastest": only the dtype entries are priced
    return out


def priced(model: str, n: int, prices: dict) -> dict:
    """Each measurement's planner-counted work priced at Hugging Face's fastest forward."""
    from effective_depth.study.planner import plan_study
    from effective_depth.study.run import StudyConfig

    plan = plan_study(StudyConfig(model=model, n_examples=n, precision="fp32"), calibration=False)
    f = prices["fastest"]
    out = {}
    for m in plan.measurements:
        tokens = m.block_tokens + 2 * m.grad_block_tokens
        out[m.name] = {"block_tokens": m.block_tokens, "grad_block_tokens": m.grad_block_tokens,
                       "lens_rows": m.lens_rows,
                       "hf_seconds": tokens * f["block_token_s"] + m.lens_rows * f["lens_row_s"]}
    return out


def agrees(ref: dict, other: dict) -> bool:
    a, b = ref["layer"], other["layer"]
    if a is None or b is None:
        return a is None and b is None
    lo, hi = ref["layer_ci"] or (a, a)
    return lo <= b <= hi or abs(a - b) <= 1


def compare(ref: dict, other: dict) -> dict:
    diffs = {}
    for key, x in ref["_tensors"].items():
        y = other["_tensors"].get(key)
        if y is None or not x.is_floating_point() or x.shape != y.shape:
            continue
        x, y = x.double().nan_to_num(), y.double().nan_to_num()
        d = (x - y).abs()
        diffs[key] = {"max_abs": float(d.max()) if d.numel() else 0.0,
                      "rel": float((x - y).norm() / x.norm().clamp_min(1e-30))}
    return {
        "estimators": {name: {"fp32": ref["depth"][name], "bf16_mixed": other["depth"].get(name),
                              "agrees": agrees(ref["depth"][name],
                                               other["depth"].get(name, {"layer": None}))}
                       for name in ref["depth"]},
        "curves": diffs,
    }


def markdown(report: dict) -> str:
    """The tables of ``docs/benchmarks.md`` ("Precision") from a saved report."""
    lines = [f"CPU flags: {report['cpu_flags']}; {report['threads']} threads; torch "
             f"{report['torch']}; {report['n_examples']} prompts per study.", "",
             "| model | fp32 s | bf16-mixed s | estimators within the fp32 CI or ±1 block | "
             "largest relative curve difference |", "| --- | --- | --- | --- | --- |"]
    for model, entry in report["models"].items():
        comp = entry.get("comparison")
        if not comp:
            continue
        est = comp["estimators"]
        ok = sum(v["agrees"] for v in est.values())
        worst = max(comp["curves"].items(), key=lambda kv: kv[1]["rel"], default=("-", {"rel": 0}))
        lines.append(f"| {model} | {entry['fp32']['wall_s']} | {entry['bf16-mixed']['wall_s']} | "
                     f"{ok}/{len(est)} | {worst[1]['rel']:.2g} ({worst[0].split('.', 1)[-1]}) |")
    for model, entry in report["models"].items():
        work = entry.get("hf_priced")
        if not work:
            continue
        lines += ["", f"**{model}**: seconds per measurement (load at start "
                  f"{entry['fp32']['load_before']} / {entry['bf16-mixed']['load_before']}), the "
                  "work priced at Hugging Face's fastest forward, and the ratio", "",
                  "| measurement | fp32 s | bf16-mixed s | HF-priced s | ratio fp32 | ratio "
                  "bf16-mixed | peak RSS GiB (bf16-mixed) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, w in work.items():
            a = entry["fp32"]["seconds"].get(name)
            b = entry["bf16-mixed"]["seconds"].get(name)
            r = w.get("ratio", {})
            lines.append(f"| {name} | {a} | {b} | {w['hf_seconds']:.1f} | {r.get('fp32', '-')} | "
                         f"{r.get('bf16-mixed', '-')} | "
                         f"{entry['bf16-mixed']['peak_rss_gib'].get(name)} |")
        lines.append(f"| study (wall) | {entry['fp32']['wall_s']} | {entry['bf16-mixed']['wall_s']} "
                     "| | | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(ZOO + REAL))
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--policies", default="fp32,bf16-mixed")
    ap.add_argument("--json", default=None)
    ap.add_argument("--price", default="real", help="Models to price at Hugging Face's forward: "
                    "'real' (the real models), 'all' or 'none'.")
    ap.add_argument("--markdown", default=None, metavar="JSON",
                    help="Print the tables of a saved report and exit.")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    policies = args.policies.split(",")
    out = {"cpu_flags": cpu_flags(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "n_examples": args.n, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            runs = {p: run_one(model, p, args.n, Path(tmp)) for p in policies}
            entry = {p: {k: v for k, v in r.items() if k not in ("_tensors", "_dir")}
                     for p, r in runs.items()}
            if "fp32" in runs and "bf16-mixed" in runs:
                entry["comparison"] = compare(runs["fp32"], runs["bf16-mixed"])
                est = entry["comparison"]["estimators"]
                bad = [k for k, v in est.items() if not v["agrees"]]
                worst = max(entry["comparison"]["curves"].items(),
                            key=lambda kv: kv[1]["rel"] if math.isfinite(kv[1]["rel"]) else 0,
                            default=("-", {"rel": 0.0}))
                print(f"{model}: fp32 {runs['fp32']['wall_s']} s, bf16-mixed "
                      f"{runs['bf16-mixed']['wall_s']} s; estimators agree "
                      f"{len(est) - len(bad)}/{len(est)}{' (not: ' + ', '.join(bad) + ')' if bad else ''}"
                      f"; largest relative curve difference {worst[1]['rel']:.2g} ({worst[0]})",
                      flush=True)
            if args.price == "all" or (args.price == "real" and model.startswith("real/")):
                import json as _json

                first = runs[policies[0]]
                inputs = _json.loads((first["_dir"] / "inputs.json").read_text())
                path = _json.loads((first["_dir"] / "results.json").read_text())[
                    "model"]["source"]["path"]
                prices = hf_prices(path, [e["tokens"] for e in inputs["examples"]])
                work = priced(model, args.n, prices)
                entry["hf_prices"] = prices
                entry["hf_priced"] = work
                for p, r in runs.items():
                    line = []
                    for name, w in work.items():
                        sec = r["seconds"].get(name)
                        if sec:
                            w.setdefault("ratio", {})[p] = round(w["hf_seconds"] / sec, 3)
                            line.append(f"{name} {w['hf_seconds'] / sec:.2f}")
                    print(f"  {p}: HF-priced / measured: {', '.join(line)}", flush=True)
            for r in entry.values():
                if isinstance(r, dict):
                    r.pop("_dir", None)
            out["models"][model] = entry
            if args.json:
                Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
