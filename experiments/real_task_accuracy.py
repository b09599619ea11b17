"""Greedy exact-match accuracy of real pretrained models on the few-shot tasks (docs/tasks.md).

Teacher-forced exact match, which equals greedy decoding (docs/methods.md §6): one forward pass of
``prompt + answer`` per example, encoded exactly as a study encodes it
(``models.evaluate.encode_example``: the tokenizer's BOS in front, the prompt/answer boundary
checked). Runs on Hugging Face's model directly, so it needs no TransformerLens conversion.

    python experiments/real_task_accuracy.py MODEL_DIR [MODEL_DIR ...] [--n 50] [--split test]
        [--shots 5] [--sweep-shots 1,3,5,8] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def accuracy(model, tokenizer, examples, batch_size: int = 16) -> list[bool]:
    from effective_depth.models.evaluate import encode_example

    encoded = [encode_example(tokenizer, ex) for ex in examples]
    out = [False] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(encoded[i][0]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i][0]) for i in idx)
        tokens = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for r, i in enumerate(idx):
            ids = encoded[i][0]
            tokens[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
        with torch.no_grad():
            logits = model(input_ids=tokens, attention_mask=mask).logits
        for r, i in enumerate(idx):
            ids, n_prompt = encoded[i]
            guess = logits[r, n_prompt - 1 : len(ids) - 1].argmax(-1)
            out[i] = bool((guess == torch.tensor(ids[n_prompt:])).all())
    return out


def _loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from effective_depth.tasks import get_task

    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--split", default="test")
    ap.add_argument("--shots", type=int, default=None)
    ap.add_argument("--sweep-shots", default="")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    rows = []
    for path in args.models:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        name = os.path.basename(path.rstrip("/"))
        shot_list = [int(s) for s in args.sweep_shots.split(",") if s] or [args.shots]
        for shots in shot_list:
            sp = {} if shots is None else {"shots": shots}
            cases = [("fewshot_addition", {"digits": d, **sp}) for d in (1, 2, 3)]
            cases.append(("capitals", dict(sp)))
            for task, params in cases:
                examples = get_task(task, split=args.split, **params).examples(args.n)
                t0 = time.perf_counter()
                ok = accuracy(model, tok, examples)
                row = {"model": name, "task": task, "params": params, "split": args.split,
                       "n": len(ok), "correct": sum(ok), "accuracy": round(sum(ok) / len(ok), 3),
                       "seconds": round(time.perf_counter() - t0, 1),
                       "loadavg": _loadavg()}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
