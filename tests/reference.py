"""Slow, obviously-correct reference implementations of docs/methods.md §1–5.

Written independently of ``effective_depth.engine``: plain ``run_with_cache`` / ``run_with_hooks``
calls on a ``HookedTransformer``, one full forward per variant, exactly the way the reference
research scripts work. The tests compare the engine against these, and ``benchmarks/`` times the
engine against them.
"""

from __future__ import annotations

import torch

EPS = 1e-6


def resid_names(model):
    L = model.cfg.n_layers
    return [f"blocks.{i}.hook_resid_pre" for i in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]


def probs_from_final(model, final):
    """softmax(unembed(ln_final(h))) for a [batch, pos, d] final residual."""
    return torch.softmax(model.unembed(model.ln_final(final)).float(), dim=-1)


def run_resid(model, tokens, fwd_hooks=()):
    """All residual boundaries h_0..h_L of a hooked forward, as a list of [batch, pos, d]."""
    names = resid_names(model)
    store = {}

    def keep(x, hook):
        store[hook.name] = x.detach().clone()

    hooks = list(fwd_hooks) + [(n, keep) for n in names]
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None, padding_side="right")
    return [store[n] for n in names]


def contributions(model, tokens, mask):
    """Token-weighted means of docs/methods.md §1 over the True positions of ``mask`` [batch, pos]."""
    L = model.cfg.n_layers
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, padding_side="right")
    res = {k: [] for k in ("rel_attn", "rel_mlp", "rel_block", "cos_attn", "cos_mlp", "cos_block", "cos_resid")}
    sel = mask.bool()
    for layer in range(L):
        h = cache[f"blocks.{layer}.hook_resid_pre"].float()[sel]
        a = cache[f"blocks.{layer}.hook_attn_out"].float()[sel]
        m = cache[f"blocks.{layer}.hook_mlp_out"].float()[sel]
        h_next = cache[f"blocks.{layer}.hook_resid_post"].float()[sel]
        d = h_next - h

        def rel(x, y):
            return (x.norm(dim=-1) / y.norm(dim=-1).clamp(min=EPS)).mean().item()

        def cos(x, y):
            return torch.nn.functional.cosine_similarity(x, y, dim=-1, eps=EPS).mean().item()

        res["rel_attn"].append(rel(a, h))
        res["rel_mlp"].append(rel(m, h + a))
        res["rel_block"].append(rel(d, h))
        res["cos_attn"].append(cos(a, h))
        res["cos_mlp"].append(cos(m, h + a))
        res["cos_block"].append(cos(d, h))
        res["cos_resid"].append(cos(h_next, h))
    return {k: torch.tensor(v) for k, v in res.items()}


def skip_effect_one(model, tokens, skip_layer, skip_from, skip_to, measure_from, length,
                    component="block"):
    """One full forward with block ``skip_layer`` skipped at [skip_from, skip_to); returns
    (relative change of every block's contribution at positions [measure_from, length),
    max over positions -> [L]; max output change -> float).

    ``component``: "block" (h_{s+1} := h_s), "mlp" (m_s := 0), or "local" (only the final
    residual loses d_s; every block runs on its clean input, so no contribution changes)."""
    L = model.cfg.n_layers
    clean = run_resid(model, tokens)
    seen = {}

    def grab(x, hook):
        seen["in"] = x.clone()

    def merge(x, hook):
        x = x.clone()
        x[:, skip_from:skip_to] = seen["in"][:, skip_from:skip_to]
        return x

    def zero(x, hook):
        x = x.clone()
        x[:, skip_from:skip_to] = 0.0
        return x

    if component == "local":
        d = clean[skip_layer + 1] - clean[skip_layer]
        final = clean[L].clone()
        final[:, skip_from:skip_to] -= d[:, skip_from:skip_to]
        new = clean[:L] + [final]
    elif component == "mlp":
        new = run_resid(model, tokens, [(f"blocks.{skip_layer}.hook_mlp_out", zero)])
    else:
        hooks = [(f"blocks.{skip_layer}.hook_resid_pre", grab), (f"blocks.{skip_layer}.hook_resid_post", merge)]
        new = run_resid(model, tokens, hooks)
    sl = slice(measure_from, length)
    effects = []
    for i in range(L):
        d_ref = (clean[i + 1] - clean[i])[0, sl].float()
        d_new = (new[i + 1] - new[i])[0, sl].float()
        rel = (d_new - d_ref).norm(dim=-1) / d_ref.norm(dim=-1).clamp(min=EPS)
        if component == "local":
            rel = torch.zeros_like(rel)  # every block ran on its clean input
        effects.append(rel.max().item() if i > skip_layer else 0.0)
    with torch.no_grad():
        p_ref = probs_from_final(model, clean[-1])[0, sl]
        p_new = probs_from_final(model, new[-1])[0, sl]
    return torch.tensor(effects), (p_new - p_ref).norm(dim=-1).max().item()


def future_effects(model, tokens, length, cuts, skip_front=1, component="block"):
    """max over cuts of skip_effect_one; layer effects [L, L] and output effects [L]."""
    L = model.cfg.n_layers
    layer = torch.zeros(L, L)
    out = torch.zeros(L)
    for t in cuts:
        for s in range(L):
            eff, o = skip_effect_one(model, tokens, s, skip_front, t, t, length, component)
            layer[s] = torch.maximum(layer[s], eff)
            out[s] = max(out[s].item(), o)
    return layer, out


def logit_lens(model, tokens, mask, k=5):
    """KL(lens(h_l) || p) and top-k overlap per layer l = 0..L-1, token means over ``mask``."""
    L = model.cfg.n_layers
    resid = run_resid(model, tokens)
    sel = mask.bool()
    with torch.no_grad():
        log_p = torch.log_softmax(model.unembed(model.ln_final(resid[-1])).float(), -1)[sel]
        kls, overlaps = [], []
        for layer in range(L):
            log_q = torch.log_softmax(model.unembed(model.ln_final(resid[layer])).float(), -1)[sel]
            kl = torch.nn.functional.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
            kls.append(kl.mean().item())
            tq, tp = log_q.topk(k, -1).indices, log_p.topk(k, -1).indices
            inter = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(tq, tp)]
            overlaps.append(sum(inter) / len(inter))
    return torch.tensor(kls), torch.tensor(overlaps)


def erasure_map(model, tokens, mu, answer_start, skip_front=1):
    """[(L+1), T]: max over answer-predicting positions of the output change when h_l[t] := mu[l]."""
    L = model.cfg.n_layers
    T = tokens.shape[1]
    names = resid_names(model)
    clean = run_resid(model, tokens)
    pred = list(range(answer_start - 1, T - 1))
    with torch.no_grad():
        p_ref = probs_from_final(model, clean[-1])[0, pred]
    out = torch.zeros(L + 1, T)
    out[:, :skip_front] = float("nan")
    for layer in range(L + 1):
        for t in range(skip_front, T):

            def put(x, hook, t=t, layer=layer):
                x = x.clone()
                x[:, t] = mu[layer].to(x.dtype)
                return x

            with torch.no_grad():
                logits = model.run_with_hooks(tokens, fwd_hooks=[(names[layer], put)], padding_side="right")
            p_new = torch.softmax(logits.float(), -1)[0, pred]
            out[layer, t] = (p_new - p_ref).norm(dim=-1).max().item()
    return out


def integrated_gradients(model, tokens, answer_start, n_steps=32, block=16, weight_grads=False):
    """[L, T] IG map, the way the reference script computes it: the prompt runs through the lower
    blocks with batch 1, a hook at block l's output swaps in a batch of ``block`` interpolations,
    the full output distribution is computed at every position, and ``backward`` runs (through
    weights that require grad when ``weight_grads``). The target is the summed probability of the
    answer tokens."""
    L = model.cfg.n_layers
    T = tokens.shape[1]
    pred = list(range(answer_start - 1, T - 1))
    answer = tokens[0, answer_start:]
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(weight_grads)
    try:
        clean = run_resid(model, tokens)
        out = torch.zeros(L, T)
        for layer in range(L):
            x = clean[layer + 1][0].float()
            base = x.mean(0, keepdim=True)
            total = torch.zeros(T, x.shape[-1])
            for k0 in range(0, n_steps, block):
                alphas = torch.arange(k0, min(k0 + block, n_steps)).float() / n_steps
                interp = (base + alphas[:, None, None] * (x - base)).requires_grad_(True)

                def put(act, hook, interp=interp):
                    return interp.to(act.dtype)  # batch 1 below this block, a batch of steps above

                with torch.enable_grad():
                    logits = model.run_with_hooks(
                        tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", put)], padding_side="right"
                    )
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


# ----------------------------------------------------------------------------------------------
# Hugging Face-only references (no TransformerLens): the same definitions computed from a plain
# ``AutoModelForCausalLM`` with forward hooks on its own modules, for the real pretrained models.

#: per model type: the modules whose *outputs* are what attention and the MLP add to the residual
#: stream. Llama adds the projections' outputs; Gemma 3 normalises them first (its "sandwich"
#: post-attention / post-feedforward norms), so the residual contribution is the norm's output.
#: (Llama's module called ``post_attention_layernorm`` is the MLP's *input* norm: not used here.)
HF_WRITERS = {
    "llama": ("self_attn", "mlp"),
    "gemma3_text": ("post_attention_layernorm", "post_feedforward_layernorm"),
}


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def hf_run(hf, ids, skip=None):
    """One forward of the HF model on ``ids`` [1, T]: every residual boundary h_0..h_L (h_L before
    the final norm), the attention and MLP writes of every block, and the output probabilities.

    ``skip=(s, lo, hi)`` replaces block ``s``'s output by its input at positions [lo, hi)."""
    layers = hf.model.layers
    attn_name, mlp_name = HF_WRITERS[hf.config.model_type]
    store = {"in": [None] * len(layers), "out": [None] * len(layers),
             "attn": [None] * len(layers), "mlp": [None] * len(layers)}
    handles = []

    def pre(i):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            store["in"][i] = h.detach().clone()
        return hook

    def post(i):
        def hook(module, args, kwargs, output):
            out = _first(output)
            if skip is not None and skip[0] == i:
                out = out.clone()
                out[:, skip[1]:skip[2]] = store["in"][i][:, skip[1]:skip[2]]
                store["out"][i] = out.detach().clone()
                return (out, *output[1:]) if isinstance(output, tuple) else out
            store["out"][i] = out.detach().clone()
            return None
        return hook

    def keep(kind, i):
        def hook(module, args, output):
            store[kind][i] = _first(output).detach().clone()
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post(i), with_kwargs=True))
        handles.append(getattr(layer, attn_name).register_forward_hook(keep("attn", i)))
        handles.append(getattr(layer, mlp_name).register_forward_hook(keep("mlp", i)))
    try:
        with torch.no_grad():
            logits = hf(ids).logits
    finally:
        for h in handles:
            h.remove()
    resid = store["in"] + [store["out"][-1]]
    return {"resid": [r.float() for r in resid], "attn": [a.float() for a in store["attn"]],
            "mlp": [m.float() for m in store["mlp"]], "probs": torch.softmax(logits.float(), -1)}


def hf_lens_log_probs(hf, h):
    """The logit lens of a residual ``h``: the model's own final norm and unembedding."""
    with torch.no_grad():
        return torch.log_softmax(hf.lm_head(hf.model.norm(h.to(hf.lm_head.weight.dtype))).float(), -1)


def hf_contributions(hf, ids):
    """docs/methods.md §1 on one prompt (all positions), from the HF model alone."""
    run = hf_run(hf, ids)
    res = {k: [] for k in ("rel_attn", "rel_mlp", "rel_block", "cos_attn", "cos_mlp", "cos_block",
                           "cos_resid")}
    cos = torch.nn.functional.cosine_similarity
    for layer in range(len(run["attn"])):
        h, h_next = run["resid"][layer][0], run["resid"][layer + 1][0]
        a, m = run["attn"][layer][0], run["mlp"][layer][0]
        d = h_next - h

        def rel(x, y):
            return (x.norm(dim=-1) / y.norm(dim=-1).clamp(min=EPS)).mean().item()

        res["rel_attn"].append(rel(a, h))
        res["rel_mlp"].append(rel(m, h + a))
        res["rel_block"].append(rel(d, h))
        res["cos_attn"].append(cos(a, h, dim=-1, eps=EPS).mean().item())
        res["cos_mlp"].append(cos(m, h + a, dim=-1, eps=EPS).mean().item())
        res["cos_block"].append(cos(d, h, dim=-1, eps=EPS).mean().item())
        res["cos_resid"].append(cos(h_next, h, dim=-1, eps=EPS).mean().item())
    return {k: torch.tensor(v) for k, v in res.items()}, run


def hf_logit_lens(hf, ids, k=5):
    """KL(lens(h_l) || output) and top-k overlap per block input, means over all positions."""
    run = hf_run(hf, ids)
    log_p = hf_lens_log_probs(hf, run["resid"][-1])[0]
    kls, overlaps = [], []
    for layer in range(len(run["attn"])):
        log_q = hf_lens_log_probs(hf, run["resid"][layer])[0]
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)
        kls.append(kl.mean().item())
        tq, tp = log_q.topk(k, -1).indices, log_p.topk(k, -1).indices
        overlaps.append(sum(len(set(a.tolist()) & set(b.tolist())) / k
                            for a, b in zip(tq, tp)) / len(tq))
    return torch.tensor(kls), torch.tensor(overlaps)


def hf_future_effects(hf, ids, cut, skip_front=1):
    """Future skip effects of every block at one cut ``t``: block ``s`` skipped at positions
    [skip_front, t), effects measured at [t, T) (max over positions) -> ([L, L], [L])."""
    clean = hf_run(hf, ids)
    L, T = len(clean["attn"]), ids.shape[1]
    layer, out = torch.zeros(L, L), torch.zeros(L)
    sl = slice(cut, T)
    for s in range(L):
        new = hf_run(hf, ids, skip=(s, skip_front, cut))
        for i in range(s + 1, L):
            d_ref = (clean["resid"][i + 1] - clean["resid"][i])[0, sl]
            d_new = (new["resid"][i + 1] - new["resid"][i])[0, sl]
            rel = (d_new - d_ref).norm(dim=-1) / d_ref.norm(dim=-1).clamp(min=EPS)
            layer[s, i] = rel.max().item()
        out[s] = (new["probs"][0, sl] - clean["probs"][0, sl]).norm(dim=-1).max().item()
    return layer, out
