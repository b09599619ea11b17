"""The naive baselines: one full forward per variant, as the reference research scripts do.

Skip effects and erasure reuse the test suite's slow references (``tests/reference.py``).
Integrated gradients mirror the reference script closely: the prompt runs through the lower
blocks with batch 1, a hook at block ``l``'s output swaps in a batch of 16 interpolations, the
full output distribution is computed at every position, and ``backward`` runs through a model
whose weights require grad (unless ``weight_grads=False``).
"""

from __future__ import annotations

import torch

from tests import reference


def naive_future_effects(model, batch, cuts):
    L = model.cfg.n_layers
    layer, out = torch.zeros(L, L), torch.zeros(L)
    for b in range(batch.size):
        if not cuts[b]:
            continue
        n = int(batch.lengths[b])
        le, oe = reference.future_effects(model, batch.tokens[b : b + 1, :n], n, cuts[b])
        layer, out = torch.maximum(layer, le), torch.maximum(out, oe)
    return layer, out


def naive_erasure(model, batch, mu):
    maps = []
    for b in range(batch.size):
        n = int(batch.lengths[b])
        maps.append(reference.erasure_map(model, batch.tokens[b : b + 1, :n], mu, int(batch.answer_start[b])))
    return maps


def naive_integrated_gradients(model, batch, n_steps, block=16, weight_grads=True):
    L = model.cfg.n_layers
    tokens = batch.tokens[:1, : int(batch.lengths[0])]
    T = tokens.shape[1]
    start = int(batch.answer_start[0])
    pred = list(range(start - 1, T - 1))
    answer = tokens[0, start:]
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(weight_grads)
    try:
        clean = reference.run_resid(model, tokens)
        out = torch.zeros(L, T)
        for layer in range(L):
            x = clean[layer + 1][0].float()
            base = x.mean(0, keepdim=True)
            total = torch.zeros(T, x.shape[-1])
            for k0 in range(0, n_steps, block):
                alphas = torch.arange(k0, min(k0 + block, n_steps)).float() / n_steps
                interp = (base + alphas[:, None, None] * (x - base)).requires_grad_(True)

                def put(act, hook, interp=interp):
                    return interp.to(act.dtype)  # batch 1 below, a batch of steps from here on

                with torch.enable_grad():
                    logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", put)])
                    probs = torch.softmax(logits.float(), -1)[:, pred]
                    target = probs.gather(-1, answer[None, :, None].expand(len(alphas), -1, 1)).sum()
                    target.backward()
                total += interp.grad.sum(0)
                model.zero_grad(set_to_none=True)
            out[layer] = ((total / n_steps) * (x - base)).sum(-1)
        return out
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
