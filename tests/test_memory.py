"""Memory regressions found at paper scale (a 151,936-row unembedding), checked on small shapes."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformer_lens import HookedTransformer, HookedTransformerConfig

from effective_depth.engine.adapter import get_adapter


def _wide_vocab_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=1, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64,
                                  d_vocab=40_000, act_fn="gelu", normalization_type="LN", seed=0)
    return HookedTransformer(cfg)


def _largest_allocation(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)


def test_lens_never_copies_the_unembedding():
    model = _wide_vocab_model()
    adapter = get_adapter(model)
    x = torch.randn(1, 2, 32)
    w_bytes = model.unembed.W_U.numel() * model.unembed.W_U.element_size()
    with torch.no_grad():
        expected = model.unembed(model.ln_final(x))
        got = adapter.lens_logits(x)
        largest = _largest_allocation(lambda: adapter.lens_logits(x))
        # TransformerLens's own forward copies W_U (``W_U.T.contiguous()``): the check can fail
        assert _largest_allocation(lambda: model.unembed(x)) >= w_bytes
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert largest < w_bytes / 4, f"lens allocated {largest} bytes; the unembedding is {w_bytes}"


def test_lens_keeps_the_unembed_hook_points():
    model = _wide_vocab_model()
    adapter = get_adapter(model)
    seen = []
    with adapter.hooks([("unembed.hook_in", lambda t, hook: seen.append("in")),
                        ("unembed.hook_out", lambda t, hook: t * 0)]):
        out = adapter.lens_logits(torch.randn(3, 32))
    assert seen == ["in"] and torch.count_nonzero(out) == 0


@pytest.mark.slow
def test_early_exit_top_tokens_are_taken_a_chunk_of_rows_at_a_time():
    from effective_depth.metrics.base import lens_argmax

    model = _wide_vocab_model()
    adapter = get_adapter(model)
    h = torch.randn(3, 8, 32)  # [boundary, answer position, d_model]
    row_bytes = model.cfg.d_vocab * 4
    with torch.no_grad():
        expected = adapter.lens_logits(h).argmax(-1)
        got = lens_argmax(adapter, h, chunk=4)
        largest = _largest_allocation(lambda: lens_argmax(adapter, h, chunk=4))
    assert torch.equal(got, expected) and got.shape == (3, 8)
    assert largest < 6 * row_bytes


@pytest.mark.slow
def test_ig_answer_probability_holds_one_chunk_of_log_probs_through_backward():
    from effective_depth.metrics.integrated_gradients import answer_probability

    model = _wide_vocab_model()
    adapter = get_adapter(model)
    h = torch.randn(24, 32)
    ids = torch.randint(0, model.cfg.d_vocab, (24,))
    row_bytes = model.cfg.d_vocab * 4

    def grad_of(chunk):
        x = h.clone().requires_grad_(True)
        with adapter.grad_enabled_inputs():
            # per-row probabilities since the adaptive rule; their sum is the IG target
            total = answer_probability(adapter, x, ids, chunk=chunk).sum()
            (g,) = torch.autograd.grad(total, x)
        return total.detach(), g

    expected = adapter.lens_log_probs(h).gather(-1, ids[:, None]).exp().sum()
    total, g = grad_of(4)
    total_all, g_all = grad_of(24)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(g, g_all, rtol=1e-5, atol=1e-7)
    assert _largest_allocation(lambda: grad_of(4)) < 6 * row_bytes
    assert _largest_allocation(lambda: grad_of(24)) >= 24 * row_bytes  # the check can fail
