"""The tuned lens on a real model: held-out KL of the tuned and the logit lens per block input,
training time, and (``--ridges``) the closed-form fit's ridge swept on the same moments.

    python experiments/real_tuned_lens.py MODEL [--backend hooked|bridge] [--task fewshot_addition]
        [--param digits=1] [--n-train 1000] [--n-test 20] [--ridges 0.001,0.01,0.1]
        [--steps N] [--out FILE.json]

The fit is ``train_tuned_lens`` with the study's defaults (train split of the task); the held-out
prompts are the task's ``test`` split, as a study analyses them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def main() -> None:
    import effective_depth as ed
    from effective_depth.engine import get_adapter
    from effective_depth.engine.batch import encode_batch, measured_mask
    from effective_depth.metrics.logit_lens import logit_lens
    from effective_depth.metrics.tuned_lens import (
        _Moments,
        least_squares_translators,
        lens_kl_by_layer,
        train_tuned_lens,
        tuned_lens,
    )

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--backend", default="hooked")
    ap.add_argument("--task", default="fewshot_addition")
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--ridges", default="")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    params = {}
    for p in args.param:
        k, v = p.split("=", 1)
        params[k] = int(v) if v.isdigit() else v
    load = _loadavg()
    t0 = time.perf_counter()
    model = ed.load_model(args.model, backend=args.backend)
    load_s = time.perf_counter() - t0
    train = encode_batch(model.tokenizer,
                         ed.get_task(args.task, split="train", **params).examples(args.n_train))
    test = encode_batch(model.tokenizer,
                        ed.get_task(args.task, split="test", **params).examples(args.n_test))
    t0, c0 = time.perf_counter(), time.process_time()
    fitted = train_tuned_lens(model, train, steps=args.steps, progress=True)
    fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    plain = logit_lens(model, test, progress=True)
    logit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tuned = tuned_lens(model, test, fitted, progress=True)
    tuned_s = time.perf_counter() - t0
    L = int(tuned.meta["n_layers"])
    out = {"model": args.model, "backend": args.backend, "task": args.task, "params": params,
           "n_train": train.size, "n_test": test.size, "loadavg_start": load,
           "loadavg_end": _loadavg(),
           "seconds": {"load": round(load_s, 1), "fit": round(fit_s, 1),
                       "fit_cpu": round(fit_cpu, 1), "logit_lens": round(logit_s, 1),
                       "tuned_lens_measure": round(tuned_s, 1)},
           "info": {k: v for k, v in fitted.info.items() if k != "loss"},
           "heldout": {"logit_kl": [round(x, 4) for x in plain.kl[:L].tolist()],
                       "tuned_kl": [round(x, 4) for x in tuned.kl[:L].tolist()]}}
    print(json.dumps(out["seconds"]), json.dumps(out["info"].get("validation")))
    for layer in range(L):
        print(f"block input {layer:2d}: logit {out['heldout']['logit_kl'][layer]:8.4f}   "
              f"tuned {out['heldout']['tuned_kl'][layer]:8.4f}")
    if args.ridges:
        # the same moments, other ridges: validation KL on the held-out prompts' residuals
        adapter = get_adapter(model)
        moments = _Moments(L, adapter.d_model, adapter.device)
        for start in range(0, train.size, 8):
            sub = train.select(list(range(start, min(start + 8, train.size))))
            mask = measured_mask(sub.lengths, sub.width, 1, True)
            moments.add(adapter, adapter.clean(sub.tokens).resid[:, mask])
            if moments.n >= 8192:
                break
        sub = test
        mask = measured_mask(sub.lengths, sub.width, 1, True)
        resid = adapter.clean(sub.tokens).resid[:, mask]
        resid = resid[:, torch.randperm(resid.shape[1], generator=torch.Generator().manual_seed(0))[:256]]
        out["ridges"] = {}
        for r in [float(x) for x in args.ridges.split(",")]:
            tr, losses = least_squares_translators(moments, r)
            kl = lens_kl_by_layer(adapter, resid, tr)
            out["ridges"][str(r)] = {"kl": [round(x, 4) for x in kl], "ls_loss": losses}
            print("ridge", r, "mean", round(sum(kl) / L, 4), [round(x, 3) for x in kl])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
