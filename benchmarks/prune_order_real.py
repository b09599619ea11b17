"""``ed_prune`` on a real checkpoint with the two pruning orders, and its parameter counts.

    python -m benchmarks.prune_order_real MODEL_DIR PROMPTS.jsonl [-n 12] [--json FILE]

"before": blocks sorted by their future-mode output effect (the order up to this change: the
last block's future effect is zero by construction, so it is pruned first); "after": by the
current-mode output effect (docs/methods.md §6). Also the accuracy with the last block skipped
alone, and the parameter counts of both backends beside Hugging Face's ``num_parameters()``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> None:
    import torch

    from effective_depth import load_model
    from effective_depth.analysis.estimation import estimate_all
    from effective_depth.engine.batch import encode_batch
    from effective_depth.metrics.behaviour import behaviour, prune_order
    from effective_depth.metrics.skip_effects import skip_effects
    from effective_depth.models.params import parameter_counts
    from effective_depth.tasks import get_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("prompts")
    parser.add_argument("-n", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: dict = {"loadavg_start": os.getloadavg()}
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(args.model)
    out["params_hf"] = hf.num_parameters()
    out["params_hf_non_embedding"] = hf.num_parameters(exclude_embeddings=True)
    del hf
    for backend in ("hooked", "bridge"):
        m = load_model(args.model, device="cpu", backend=backend)
        out[f"params_{backend}"] = parameter_counts(m)
        out[f"params_{backend}_sum_of_tensors"] = int(sum(p.numel() for p in m.parameters()))
        del m
    model = load_model(args.model, device="cpu")
    L = model.cfg.n_layers
    batch = encode_batch(model.tokenizer, get_task("prompts", path=args.prompts).examples(args.n))
    start = time.perf_counter()
    future = skip_effects(model, batch, mode="future", aggregate="mean", n_cuts=2)
    current = skip_effects(model, batch, mode="current", aggregate="mean", skip_front=0)
    out["skip_effects_s"] = round(time.perf_counter() - start, 1)
    for label, effect in (("before_future_order", future.output_effect_of(aggregate="mean")),
                          ("after_current_order", current.output_effect)):
        r = behaviour(model, batch, order=prune_order(torch.nan_to_num(effect)))
        est = estimate_all({"behaviour": r}, n_boot=200)["ed_prune"]
        out[label] = {"order": r.prune_order, "accuracy": r.accuracy(),
                      "accuracy_by_prune": [round(x, 3) for x in r.accuracy_by_prune().tolist()],
                      "ed_prune": est.to_dict()}
    alone = behaviour(model, batch, order=[L - 1, *range(L - 1)]).accuracy_by_prune()
    out["skip_last_alone_accuracy"] = float(alone[1])
    out["loadavg_end"] = os.getloadavg()
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
