"""Accuracy of the integrated-gradient quadrature rules against a very fine reference.

    python benchmarks/ig_accuracy.py [--quick] [--json FILE]

Two measurements, each per (model, example, layer):

* **maps** — the attribution map of each rule and node count against a reference map from a very
  fine rule (``trapezoid``-1024 for the trained zoo models, whose integrands have narrow peaks;
  ``gauss_legendre``-128 for the random model, checked against half as many nodes):
  ``max_abs`` = the largest ``|A − A_ref|`` over (example, layer, token); ``rel`` = the largest over
  examples of ``max |A − A_ref| / max |A_ref|``; ``gap`` = the largest completeness gap
  ``|Σ_t A[l, t] − (F(x_l) − F(x̄_l))|``, where ``F`` is the target (summed answer probability) and
  ``F(x̄_l)`` comes from one independent forward from the baseline residual (``start_at_layer``).
* **completeness** — the same rules applied to the scalar integrand ``dF/dα`` along each path,
  whose exact integral is ``F(x_l) − F(x̄_l)``: the error of each rule needs no reference, so it
  is cheap enough for ``zoo/add-12l`` (the default study's model). It is the error of a map's row
  sum.

The default rule is the cheapest (fewest nodes) whose error is no larger than left-Riemann-256's
on every model measured.

``--equal-accuracy`` measures the default rule (and a ladder of adaptive tolerances) at equal
accuracy on trained models: the attribution maps of the default, of left-Riemann-256 and of a very
fine reference (``trapezoid``-1024; its completeness gap is recorded), on the study's first
three examples. It writes ``equal_accuracy_trained`` into the JSON file (other keys kept):
``{model: {"default": {"rule", "evals", "max_abs"}, "riemann_left_256": {"evals": 256,
"max_abs"}, ...}}``, ``evals`` being integrand evaluations per (example, block), averaged.

    python benchmarks/ig_accuracy.py --equal-accuracy \
        --models zoo/add-12l,real/smollm2-135m-instruct --json benchmarks/ig_accuracy_zoo_quick.json

A model can be given a local checkpoint directory instead of its name, e.g.
``--model-path my-model=/data/checkpoints/my-model`` (its task then comes from
``FALLBACK_TASKS``); the real models load by name (``real/smollm2-135m-instruct``) from the
cache ``effective-depth fetch`` fills.
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

from effective_depth import metrics  # noqa: E402
from effective_depth.engine import Batch  # noqa: E402
from effective_depth.engine.adapter import get_adapter  # noqa: E402

GRID = {"riemann_left": (16, 64, 256), "trapezoid": (16, 64, 128, 256),
        "gauss_legendre": (8, 16, 32, 64, 128, 256)}
SCALAR_GRID = {"riemann_left": (64, 256, 1024), "trapezoid": (16, 32, 64, 128, 256),
               "gauss_legendre": (8, 16, 32, 64, 128, 256)}


@torch.no_grad()
def _example(adapter, batch: Batch, b: int):
    """Example ``b`` alone (no padding): its clean pass, answer-predicting positions and answer ids."""
    tokens = batch.tokens[b : b + 1, : int(batch.lengths[b])]
    pred = torch.tensor(batch.answer_predicting_positions(b))
    return adapter.clean(tokens), pred, tokens[0, pred + 1]


def baseline_targets(model, batch: Batch) -> torch.Tensor:
    """``F(x̄_l)`` per (example, layer): the target with block ``l``'s output replaced by its
    mean over positions, by one forward of the upper blocks (``start_at_layer``)."""
    adapter = get_adapter(model)
    L = adapter.n_layers
    out = torch.zeros(batch.size, L)
    for b in range(batch.size):
        clean, pred, answer = _example(adapter, batch, b)
        for layer in range(L):
            x = clean.resid[layer + 1, 0]
            base = x.float().mean(0, keepdim=True).expand_as(x).to(x.dtype)[None]
            logits = model(base, start_at_layer=layer + 1) if layer + 1 < L else \
                model.unembed(model.ln_final(base))
            probs = torch.softmax(logits[0, pred].float(), -1)
            out[b, layer] = probs.gather(-1, answer[:, None].to(probs.device)).sum().cpu()
    return out


def errors(result, reference, f0: torch.Tensor) -> dict:
    """max_abs / rel error of ``result``'s maps against ``reference``'s, and the completeness gap."""
    max_abs = rel = gap = 0.0
    for b, (a, r) in enumerate(zip(result.maps, reference.maps)):
        d = (a - r).abs().max().item()
        max_abs = max(max_abs, d)
        rel = max(rel, d / max(r.abs().max().item(), 1e-30))
        delta = float(result.targets[b]) - f0[b]
        gap = max(gap, (a.sum(-1) - delta).abs().max().item())
    return {"max_abs": max_abs, "rel": rel, "gap": gap}


def measure(model, batch: Batch, ref_rule: str, ref_steps: int, grid: dict = GRID) -> dict:
    """The error table of one model: ``{rule: {n: errors}}``, the reference's own error (against
    half as many nodes) and the reference's completeness gap; each run's seconds."""
    ref, t_ref = _timed(lambda: metrics.integrated_gradients(model, batch, steps=ref_steps, rule=ref_rule))
    half = metrics.integrated_gradients(model, batch, steps=ref_steps // 2, rule=ref_rule)
    f0 = baseline_targets(model, batch)
    table: dict = {}
    for rule, steps in grid.items():
        for n in steps:
            res, t = _timed(lambda n=n, rule=rule: metrics.integrated_gradients(
                model, batch, steps=n, rule=rule))
            table.setdefault(rule, {})[n] = {**errors(res, ref, f0), "seconds": t}
    return {"reference": {"rule": ref_rule, "steps": ref_steps, "seconds": t_ref,
                          "self_error": errors(half, ref, f0), "gap": errors(ref, ref, f0)["gap"]},
            "table": table}


def completeness(model, batch: Batch, grid: dict = SCALAR_GRID) -> dict:
    """``{rule: {n: {"max_abs", "rel"}}}``: the error of each rule on ``∫₀¹ dF/dα dα`` against
    the exact ``F(x_l) − F(x̄_l)``, largest over (example, layer); ``rel`` divides by
    ``max |F(x_l) − F(x̄_l)|`` of the example. Also the per-(example, layer) errors."""
    from effective_depth.metrics.quadrature import quadrature

    adapter = get_adapter(model)
    L = adapter.n_layers
    f0 = baseline_targets(model, batch)
    per: dict = {}
    for b in range(batch.size):
        clean, pred, answer = _example(adapter, batch, b)
        with torch.no_grad():
            f1 = adapter.lens_probs(clean.resid[-1, 0, pred]).gather(-1, answer[:, None]).sum().item()
        scale = (f1 - f0[b]).abs().max().item()
        for layer in range(L):
            x = clean.resid[layer + 1, 0].float()
            base = x.mean(0, keepdim=True)
            exact = f1 - f0[b, layer].item()
            for rule, steps in grid.items():
                for m in steps:
                    alphas, weights = quadrature(rule, m)
                    total = 0.0
                    for i in range(0, m, 128):
                        a = torch.tensor(alphas[i : i + 128]).requires_grad_(True)
                        h = (base + a[:, None, None] * (x - base)).to(clean.resid.dtype)
                        logits = model(h, start_at_layer=layer + 1) if layer + 1 < L else \
                            model.unembed(model.ln_final(h))
                        probs = torch.softmax(logits[:, pred].float(), -1)
                        target = probs.gather(-1, answer[None, :, None].expand(len(a), -1, 1)).sum()
                        (g,) = torch.autograd.grad(target, a)
                        total += float((g.double() * torch.tensor(weights[i : i + 128])).sum())
                    err = abs(total - exact)
                    per.setdefault(rule, {}).setdefault(m, []).append((err, err / max(scale, 1e-30)))
    return {rule: {m: {"max_abs": max(e for e, _ in v), "rel": max(r for _, r in v),
                       "per_map": [e for e, _ in v]} for m, v in d.items()} for rule, d in per.items()}


def cheapest(tables: list[dict], target=("riemann_left", 256)) -> tuple[str, int]:
    """The (rule, n) of fewest nodes whose max_abs and rel are <= the target's on every table
    (each ``{rule: {n: {"max_abs", "rel"}}}``); among equally cheap ones, the most accurate (the
    smallest worst ratio of its error to the target's)."""
    rule0, n0 = target
    ok = []
    for rule, steps in tables[0].items():
        for n in steps:
            if not all(n in t.get(rule, {}) for t in tables):
                continue
            ratios = [t[rule][n][k] / max(t[rule0][n0][k], 1e-300) for t in tables for k in ("max_abs", "rel")]
            if max(ratios) <= 1:
                ok.append((n, max(ratios), rule))
    n, _, rule = min(ok)
    return rule, n


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


#: the task of a model given by ``--model-path`` whose zoo card is not available here: the
#: real models' card task (few-shot one-digit addition), built from the addition task
FALLBACK_TASKS = {"real/smollm2-135m-instruct": ("fewshot_addition", {"digits": 1})}


def fewshot(examples, shots: int = 3):
    """Each example with the ``shots`` examples after it, solved, in front (one per line)."""
    from effective_depth.tasks import Example

    out = []
    for i, ex in enumerate(examples):
        solved = [examples[(i + 1 + j) % len(examples)] for j in range(shots)]
        prefix = "".join(f"{s.prompt}{s.answer}\n" for s in solved)
        out.append(Example(prefix + ex.prompt, ex.answer, dict(ex.meta)))
    return out


def zoo_batch(name: str, n: int, path: str | None = None):
    from effective_depth.engine.batch import encode_batch
    from effective_depth.models.loading import load_model
    from effective_depth.study import StudyConfig, resolve_task
    from effective_depth.tasks import get_task

    model = load_model(path or name, device="cpu")
    if path is not None and name in FALLBACK_TASKS:
        task_name, params = FALLBACK_TASKS[name]
    else:
        task_name, params = resolve_task(StudyConfig(model=name))
    try:
        examples = get_task(task_name, **params).examples(20)[:n]
    except Exception:  # the few-shot task is not registered here yet: build it
        if task_name != "fewshot_addition":
            raise
        examples = fewshot(get_task("addition", **params).examples(20))[:n]
    return model, encode_batch(model.tokenizer, examples, device="cpu")


def equal_accuracy(model, batch, ref=("trapezoid", 1024), tols=(3e-2, 3e-3),
                   reference_file: Path | None = None) -> dict:
    """The default rule, an adaptive ladder and left-Riemann-256 against ``ref``: max-abs map error
    and integrand evaluations per (example, block), averaged; the reference's completeness gap.
    ``reference_file``: the reference result's tensors (safetensors), reused when present (its
    metadata must name the same rule, node count and tokens), written otherwise."""
    from safetensors.torch import load_file, save_file

    from effective_depth.metrics.integrated_gradients import DEFAULT_RULE, DEFAULT_STEPS

    def run(rule, n, **kw):
        res, t = _timed(lambda: metrics.integrated_gradients(model, batch, steps=n, rule=rule, **kw))
        print(f"  {rule}-{n} {kw or ''}: {t:.1f} s, {float(res.evals.double().mean()):.1f} evaluations "
              f"per (example, block), largest gap {float(res.gaps.abs().max()):.2e}", flush=True)
        return res, t

    def entry(res, t, reference):
        err = max((a - r).abs().max().item() for a, r in zip(res.maps, reference.maps))
        return {"rule": res.meta["rule"], "steps": res.meta["n_steps"], **(
            {"tol": res.meta["tol"]} if "tol" in res.meta else {}),
            "evals": float(res.evals.double().mean()), "evals_max": int(res.evals.max()),
            "max_abs": err, "gap": float(res.gaps.abs().max()), "seconds": t}

    runs = {"default": run(DEFAULT_RULE, DEFAULT_STEPS)}
    runs.update({f"adaptive_tol_{tol:g}": run("adaptive", 256, tol=tol) for tol in tols})
    runs["riemann_left_256"] = run("riemann_left", 256)
    ref_kw = {"tol": ref[2]} if len(ref) > 2 else {}
    key = json.dumps({"rule": ref[0], "steps": ref[1], **ref_kw,
                      "tokens": [batch.token_ids(b) for b in range(batch.size)]})
    if reference_file is not None and reference_file.exists() and \
            load_file(str(reference_file)).get("key") is not None:
        tensors = load_file(str(reference_file))
        if bytes(tensors.pop("key").tolist()).decode() != key:
            raise SystemExit(f"{reference_file} holds another reference (rule, nodes or prompts)")
        meta = json.loads(bytes(tensors.pop("meta").tolist()).decode())
        reference = metrics.IntegratedGradients.from_tensors(tensors, meta["meta"], meta["str_tokens"])
        t_ref = meta["seconds"]
        print(f"  reference {ref[0]}-{ref[1]} read from {reference_file}", flush=True)
    else:
        reference, t_ref = run(ref[0], ref[1], **ref_kw)
        if reference_file is not None:
            meta = json.dumps({"meta": {k: v for k, v in reference.meta.items() if k != "warnings"},
                               "str_tokens": reference.str_tokens, "seconds": t_ref})
            save_file({**{k: v.contiguous() for k, v in reference.tensors().items()},
                       "key": torch.tensor(list(key.encode()), dtype=torch.uint8),
                       "meta": torch.tensor(list(meta.encode()), dtype=torch.uint8)}, str(reference_file))
    out = {k: entry(*v, reference) for k, v in runs.items()}
    out["reference"] = {"rule": ref[0], "steps": ref[1], **ref_kw, "seconds": t_ref,
                        "gap": float(reference.gaps.abs().max()),
                        "max_abs_attribution": max(m.abs().max().item() for m in reference.maps)}
    out["examples"], out["n_layers"] = batch.size, reference.n_layers
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer rules and a coarser reference (trapezoid-512) for the zoo maps")
    parser.add_argument("--models", default="random-12l-V4096,zoo/add-4l,zoo/add-12l",
                        help="comma-separated: random-12l-V4096, zoo/add-4l, zoo/add-12l")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--equal-accuracy", action="store_true",
                        help="only the trained models' equal-accuracy table (equal_accuracy_trained)")
    parser.add_argument("--model-path", action="append", default=[], metavar="NAME=PATH",
                        help="load NAME from a local checkpoint directory (repeatable)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reference", default="trapezoid-1024",
                        help="--equal-accuracy: the fine reference rule, RULE-N")
    parser.add_argument("--reference-tol", type=float, default=None,
                        help="--equal-accuracy: the tolerance of an adaptive reference "
                             "(--reference adaptive-1024 --reference-tol 1e-4)")
    parser.add_argument("--tols", type=lambda s: tuple(float(x) for x in s.split(",") if x),
                        default=(3e-2, 3e-3), help="--equal-accuracy: adaptive tolerances besides the default")
    parser.add_argument("--examples", type=int, default=3, help="--equal-accuracy: examples per model")
    parser.add_argument("--reference-dir", type=Path, default=None,
                        help="--equal-accuracy: keep each model's reference maps here and reuse them")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from benchmarks.run import build_model, make_batch

    names = args.models.split(",")
    if args.equal_accuracy:
        rule, steps = args.reference.split("-")
        if args.reference_tol is not None and rule != "adaptive":
            parser.error(f"--reference-tol applies to an adaptive reference, not {rule}")
        ref = (rule, int(steps)) + ((args.reference_tol,) if args.reference_tol else ())
        return main_equal_accuracy(names, dict(p.split("=", 1) for p in args.model_path), args.json,
                                   ref=ref, tols=args.tols, n=args.examples,
                                   reference_dir=args.reference_dir)
    grid, scalar_grid, zoo_ref = GRID, SCALAR_GRID, ("trapezoid", 1024)
    if args.quick:
        grid = {"riemann_left": (64, 256), "trapezoid": (64, 128, 256), "gauss_legendre": (32, 64, 128, 256)}
        scalar_grid = {"riemann_left": (64, 256, 1024), "trapezoid": (64, 128, 256),
                       "gauss_legendre": (32, 64, 128, 256)}
        zoo_ref = ("trapezoid", 512)
    report: dict = {"maps": {}, "completeness": {}}
    for name in names:
        if name.startswith("random"):
            case, ref, maps = (build_model(12, 256, 4096, 1024, 4, 4), make_batch(4096, 1, 40, 4)), \
                ("gauss_legendre", 128), True
        else:
            case, ref, maps = zoo_batch(name, 3), zoo_ref, name != "zoo/add-12l"  # add-12l: too slow
        if maps:
            report["maps"][name] = measure(*case, *ref, grid=grid)
            print_table(name, report["maps"][name])
        if not name.startswith("random"):
            report["completeness"][name] = completeness(*case, grid=scalar_grid)
            print_completeness(name, report["completeness"][name])
    tables = [r["table"] for r in report["maps"].values()] + list(report["completeness"].values())
    rule, n = cheapest(tables)
    report["default"] = {"rule": rule, "steps": n}
    print(f"\ncheapest rule at least as accurate as riemann_left-256 on every model: {rule}-{n}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main_equal_accuracy(names: list[str], paths: dict[str, str], json_path: Path | None,
                        ref=("trapezoid", 1024), tols=(3e-2, 3e-3), n: int = 3,
                        reference_dir: Path | None = None) -> dict:
    report = json.loads(json_path.read_text()) if json_path and json_path.exists() else {}
    table = report.setdefault("equal_accuracy_trained", {})
    for name in names:
        print(f"{name}:", flush=True)
        ref_file = None
        if reference_dir is not None:
            reference_dir.mkdir(parents=True, exist_ok=True)
            tag = "-".join(str(x) for x in ref)
            ref_file = reference_dir / f"{name.replace('/', '_')}-{tag}-{n}.safetensors"
        entry = equal_accuracy(*zoo_batch(name, n, paths.get(name)), ref=ref, tols=tols,
                               reference_file=ref_file)
        entry["load_average"] = os.getloadavg()
        entry["threads"] = torch.get_num_threads()
        table[name] = entry
        for key, e in entry.items():
            if isinstance(e, dict) and "max_abs" in e:
                print(f"  {key:24s} evals {e['evals']:7.1f}  max abs {e['max_abs']:.2e}  "
                      f"gap {e['gap']:.2e}  {e['seconds']:.1f} s")
        if json_path:  # after each model: a long run keeps what it measured
            json_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_completeness(name: str, r: dict) -> None:
    print(f"\n{name}: error of the completeness integral F(x) - F(baseline), max over (example, layer)")
    print(f"{'rule':16s} {'n':>5s} {'max abs':>9s} {'rel':>9s}")
    for rule, steps in r.items():
        for n, e in steps.items():
            print(f"{rule:16s} {n:5d} {e['max_abs']:9.2e} {e['rel']:9.2e}")


def print_table(name: str, r: dict) -> None:
    ref = r["reference"]
    print(f"\n{name}: reference {ref['rule']}-{ref['steps']} ({ref['seconds']:.1f} s); its self-error "
          f"(vs half the nodes) {ref['self_error']['max_abs']:.1e}, completeness gap {ref['gap']:.1e}")
    print(f"{'rule':16s} {'n':>5s} {'max abs':>9s} {'rel':>9s} {'gap':>9s} {'s':>7s}")
    for rule, steps in r["table"].items():
        for n, e in steps.items():
            print(f"{rule:16s} {n:5d} {e['max_abs']:9.2e} {e['rel']:9.2e} {e['gap']:9.2e} {e['seconds']:7.2f}")


if __name__ == "__main__":
    main()
