"""The five measurements against slow references computed from cached activations, on two
architectures; known-answer cases; padding."""

from __future__ import annotations

import pytest
import torch

from effective_depth import load_model
from effective_depth.engine import encode_batch, measured_mask
from effective_depth.metrics import (
    contributions,
    depth_score,
    draw_cuts,
    erasure,
    integrated_gradients,
    logit_lens,
    mean_residuals,
    skip_effects,
)
from effective_depth.tasks import Example, get_task
from tests import reference

TOL = 1e-5
ARCHS = ("qwen2", "gpt2")


@pytest.fixture(scope="module")
def models(tiny_checkpoints):
    return {arch: load_model(tiny_checkpoints[arch], device="cpu") for arch in ARCHS}


@pytest.fixture(scope="module")
def batch(models):
    # long enough for cut positions (range(8, T-4, 8)), unequal lengths to exercise padding
    examples = get_task("multistep", steps=5, format="scratchpad", seed=3).examples(2)
    examples.append(Example("1+2+3+4+5+6+7+8=", "36"))
    return encode_batch(models["qwen2"].tokenizer, examples)


def _one(batch, b):
    n = int(batch.lengths[b])
    return batch.tokens[b : b + 1, :n]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("include_front", [True, False])
def test_contributions_match_reference(models, batch, arch, include_front):
    model = models[arch]
    got = contributions(model, batch, include_front=include_front)
    mask = measured_mask(batch.lengths, batch.width, 1, include_front)
    want = reference.contributions(model, batch.tokens, mask)
    for key, curve in want.items():
        assert (got.curve(key) - curve).abs().max() <= TOL, key
    assert (got.block_influence - (1 - want["cos_resid"])).abs().max() <= TOL
    # angular distance: 0 on the diagonal, symmetric, and arccos(cos_resid) next to it
    ang = got.angular_distance
    assert ang.diagonal().abs().max() <= 1e-3
    assert (ang - ang.T).abs().max() <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_future_skip_effects_match_reference(models, batch, arch):
    model = models[arch]
    got = skip_effects(model, batch, mode="future", seed=7)
    assert got.cuts[0] == draw_cuts(int(batch.lengths[0]), 4, "7:0")
    L = model.cfg.n_layers
    want_layer, want_out = torch.zeros(L, L), torch.zeros(L)
    for b in range(batch.size):
        n = int(batch.lengths[b])
        if not got.cuts[b]:
            continue
        layer, out = reference.future_effects(model, _one(batch, b), n, got.cuts[b])
        want_layer = torch.maximum(want_layer, layer)
        want_out = torch.maximum(want_out, out)
    assert (got.layer_effect - want_layer).abs().max() <= TOL
    assert (got.output_effect - want_out).abs().max() <= TOL
    assert torch.all(got.layer_effect.tril() == 0)  # i <= s is 0 by construction
    assert got.output_effect.max() > 0


@pytest.mark.slow
def test_current_effects_and_mean_aggregation(models, batch):
    model = models["qwen2"]
    got = skip_effects(model, batch, mode="current", aggregate="mean")
    b = 0
    n = int(batch.lengths[b])
    single = skip_effects(model, batch.select([b]), mode="current", aggregate="mean")
    # mean over positions of prompt 0 alone equals the per-prompt sums / counts of the batch run
    assert torch.allclose(got.output_sum[0] / got.counts[0], single.output_effect, atol=TOL)
    _, out = reference.skip_effect_one(model, _one(batch, b), 1, 1, n, 0, n)
    assert abs(single.output_effect_of(aggregate="max")[1].item() - out) <= TOL
    assert got.aggregate == "mean"
    assert (got.output_effect <= got.output_effect_of(aggregate="max") + TOL).all()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_logit_lens_matches_reference(models, batch, arch):
    model = models[arch]
    got = logit_lens(model, batch, k=5, chunk=5)  # the reference's top-5
    mask = measured_mask(batch.lengths, batch.width, 1, True)
    kl, overlap = reference.logit_lens(model, batch.tokens, mask)
    assert (got.kl - kl).abs().max() <= TOL
    assert (got.overlap - overlap).abs().max() <= TOL


@pytest.mark.slow
def test_lens_of_final_residual_is_the_output(models, batch):
    got = logit_lens(models["qwen2"], batch, include_final=True)
    assert got.kl[-1].abs().item() <= 1e-6
    assert got.overlap[-1].item() == 1.0
    assert got.kl.shape[0] == models["qwen2"].cfg.n_layers + 1


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_erasure_matches_reference(models, batch, arch):
    model = models[arch]
    sub = batch.select([2])
    mu = mean_residuals(model, batch)
    got = erasure(model, sub, mean_resid=mu)
    want = reference.erasure_map(model, _one(sub, 0), mu, int(sub.answer_start[0]))
    m = got.maps[0]
    assert m.shape == want.shape
    assert torch.isnan(m[:, 0]).all() and torch.isnan(want[:, 0]).all()
    assert (m[:, 1:] - want[:, 1:]).abs().max() <= TOL
    assert got.str_tokens[0][0] == "<bos>" and len(got.str_tokens[0]) == m.shape[1]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_integrated_gradients_match_reference(models, batch, arch):
    model = models[arch]
    sub = batch.select([2])
    got = integrated_gradients(model, sub, steps=32, rule="riemann_left")
    want = reference.integrated_gradients(model, _one(sub, 0), int(sub.answer_start[0]), n_steps=32)
    assert (got.maps[0] - want).abs().max() <= TOL


@pytest.mark.slow
def test_zeroed_block_has_no_contribution_and_no_effect(tiny_checkpoints, batch):
    model = load_model(tiny_checkpoints["qwen2"], device="cpu")
    block = model.blocks[1]
    with torch.no_grad():
        block.attn.W_O.zero_()
        block.attn.b_O.zero_()
        block.mlp.W_out.zero_()
        block.mlp.b_out.zero_()
    c = contributions(model, batch)
    assert c.rel_block[1].item() == 0.0
    assert c.rel_block[0].item() > 0
    for mode in ("future", "current"):
        s = skip_effects(model, batch, mode=mode)
        assert s.output_effect[1].item() == 0.0
        assert s.layer_effect[1].abs().max().item() == 0.0
        assert s.output_effect[0].item() > 0


@pytest.mark.slow
def test_padding_gives_per_prompt_results(models, batch):
    model = models["qwen2"]
    together = contributions(model, batch)
    lens_together = logit_lens(model, batch)
    skips = skip_effects(model, batch, mode="current")
    for b in range(batch.size):
        one = batch.select([b])
        alone = contributions(model, one)
        for key in ("rel_attn", "cos_block"):
            assert (together.curve(key, [b]) - alone.curve(key)).abs().max() <= TOL
        assert (lens_together.kl_of([b]) - logit_lens(model, one).kl).abs().max() <= TOL
        single = skip_effects(model, one, mode="current")
        assert (skips.output_max[b] - single.output_max[0]).abs().max() <= TOL
        assert (skips.layer_max[b] - single.layer_max[0]).abs().max() <= TOL


def test_depth_score_known_values():
    L = 4
    eff = torch.zeros(L, L)
    eff[0, 1:] = 1.0  # only skipping block 0 matters
    assert depth_score(eff) == 0.0
    eff = torch.zeros(L, L)
    eff[2, 3] = 1.0
    assert depth_score(eff) == 2.0
    assert depth_score(torch.tensor([1.0, 0.0, 0.0, 1.0])) == 1.5
    assert depth_score(torch.zeros(3)) != depth_score(torch.zeros(3))  # NaN: no effect anywhere


@pytest.mark.slow
def test_bridge_backend_gives_the_same_measurements(tiny_checkpoints, models, batch):
    """The bridge cannot resume at a block: the engine falls back to full forwards with the
    residual overwritten by a hook. The numbers must not change."""
    bridge = load_model(tiny_checkpoints["qwen2"], device="cpu", backend="bridge")
    hooked = models["qwen2"]
    tol = 1e-4  # HF and TransformerLens kernels differ at ~1e-6
    a, b = contributions(hooked, batch), contributions(bridge, batch)
    for key in ("rel_attn", "rel_mlp", "cos_block"):
        assert (a.curve(key) - b.curve(key)).abs().max() <= tol
    assert (logit_lens(hooked, batch).kl - logit_lens(bridge, batch).kl).abs().max() <= tol
    for component in ("block", "attn"):
        sa = skip_effects(hooked, batch, mode="future", component=component)
        sb = skip_effects(bridge, batch, mode="future", component=component)
        assert (sa.layer_effect - sb.layer_effect).abs().max() <= tol
        assert (sa.output_effect - sb.output_effect).abs().max() <= tol
    sub = batch.select([2])
    mu = mean_residuals(hooked, batch)
    ea, eb = erasure(hooked, sub, mean_resid=mu), erasure(bridge, sub, mean_resid=mu)
    assert (ea.maps[0][:, 1:] - eb.maps[0][:, 1:]).abs().max() <= tol
    ia, ib = integrated_gradients(hooked, sub, steps=8), integrated_gradients(bridge, sub, steps=8)
    assert (ia.maps[0] - ib.maps[0]).abs().max() <= tol


@pytest.mark.slow
@pytest.mark.parametrize("component", ["mlp", "local"])
def test_mlp_and_local_skip_effects_match_reference(models, batch, component):
    model = models["qwen2"]
    L = model.cfg.n_layers
    future = skip_effects(model, batch, mode="future", component=component, seed=7)
    want_layer, want_out = torch.zeros(L, L), torch.zeros(L)
    for b in range(batch.size):
        if future.cuts[b]:
            layer, out = reference.future_effects(model, _one(batch, b), int(batch.lengths[b]),
                                                  future.cuts[b], component=component)
            want_layer, want_out = torch.maximum(want_layer, layer), torch.maximum(want_out, out)
    assert (future.layer_effect - want_layer).abs().max() <= TOL
    assert (future.output_effect - want_out).abs().max() <= TOL
    # known values: a local skip before t changes only the output before t, so its future effect
    # is exactly 0; the last MLP's output at earlier positions reaches no later computation
    if component == "local":
        assert future.output_effect.abs().max() == 0
    else:
        assert future.output_effect[:-1].min() > 0 and future.output_effect[-1] == 0
    current = skip_effects(model, batch, mode="current", component=component)
    for b in range(batch.size):
        n = int(batch.lengths[b])
        for s in range(L):
            layer, out = reference.skip_effect_one(model, _one(batch, b), s, 1, n, 0, n, component)
            assert (current.layer_max[b, s] - layer).abs().max() <= TOL, (b, s)
            assert abs(current.output_max[b, s].item() - out) <= TOL, (b, s)
    if component == "local":
        assert current.layer_effect.abs().max() == 0  # later blocks keep their clean inputs
    else:
        assert current.layer_effect.max() > 0


def _greedy(forward, prompt, n):
    """Greedy decoding of ``n`` tokens after ``prompt`` (1-D ids); ``forward`` maps [1, pos]
    token ids to [1, pos, vocab] logits."""
    seq = prompt.clone()
    for _ in range(n):
        nxt = forward(seq[None])[0, -1].argmax()
        seq = torch.cat([seq, nxt[None]])
    return seq[len(prompt):]


@pytest.mark.slow
def test_behaviour_equals_greedy_decoding_under_intervene():
    """The input of ed_task / ed_prune is teacher-forced exact match; it must equal real greedy
    decoding, with the pruned blocks skipped by hooks and the early exits read by the lens."""
    from effective_depth.engine import intervene, skip_block
    from effective_depth.metrics import behaviour

    model = load_model("zoo/add-4l", device="cpu")  # trained: it solves some, not all
    examples = get_task("addition", digits=3, split="test", seed=5).examples(6)
    batch = encode_batch(model.tokenizer, examples)
    L = model.cfg.n_layers
    order = [2, 0, 3, 1]
    got = behaviour(model, batch, order=order)

    def lens_forward(n):
        def forward(tokens):
            if n == L:
                return model(tokens)
            name = f"blocks.{n}.hook_resid_pre"
            _, cache = model.run_with_cache(tokens, names_filter=name)
            return model.unembed(model.ln_final(cache[name]))

        return forward

    exit_ok = torch.zeros(batch.size, L + 1, dtype=torch.bool)
    prune_ok = torch.zeros(batch.size, L + 1, dtype=torch.bool)
    with torch.no_grad():
        for b in range(batch.size):
            start, n = int(batch.answer_start[b]), int(batch.lengths[b])
            prompt, answer = batch.tokens[b, :start], batch.tokens[b, start:n]
            for depth in range(L + 1):
                exit_ok[b, depth] = torch.equal(_greedy(lens_forward(depth), prompt, len(answer)), answer)
            for k in range(L + 1):
                with intervene(model, *[skip_block(s) for s in order[:k]]):
                    prune_ok[b, k] = torch.equal(_greedy(model, prompt, len(answer)), answer)
    assert torch.equal(got.correct_by_exit, exit_ok)
    assert torch.equal(got.correct_by_prune, prune_ok)
    # not a vacuous agreement: some examples are solved by the full model, and pruning all
    # blocks solves none
    assert exit_ok[:, L].any() and not prune_ok[:, L].any()


@pytest.mark.slow
@pytest.mark.parametrize("budget", [512 << 20, 0])
def test_clean_lens_probs_are_the_lens_of_the_clean_residual(models, batch, budget):
    """The cached reference side of the output distances: any (prompt, position) asked for —
    repeated, in any order, kept in the table or (budget 0) recomputed — equals the lens of that
    clean residual, and a distance against it equals one against the residuals themselves."""
    from effective_depth.engine import get_adapter
    from effective_depth.metrics.base import CleanLensProbs, lens_prob_distance

    adapter = get_adapter(models["qwen2"])
    h = adapter.clean(batch.tokens).resid[-1]
    probs = CleanLensProbs(adapter, h, budget=budget)
    assert (probs.table is None) == (budget == 0)
    prompts = torch.tensor([1, 0, 1, 1, 0])
    positions = torch.tensor([3, 5, 3, 0, 7])
    expected = adapter.lens_probs(h[prompts, positions])
    torch.testing.assert_close(probs.rows(prompts, positions), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(probs.rows(prompts.flip(0), positions.flip(0)), expected.flip(0),
                               rtol=0, atol=1e-6)
    if probs.table is not None:
        assert int(probs.done.sum()) == 4  # the four distinct positions, each computed once
    h_new = h[prompts, positions] + 0.5 * torch.randn(len(prompts), h.shape[-1])
    d_cached = lens_prob_distance(adapter, h_new, probs.at(prompts, positions), chunk=2)
    d_plain = lens_prob_distance(adapter, h_new, h[prompts, positions], chunk=2)
    torch.testing.assert_close(d_cached, d_plain, rtol=0, atol=1e-6)
    assert float(d_plain.min()) > 0
