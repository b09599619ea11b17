"""Memory regressions found at paper scale (a 151,936-row unembedding), checked on small shapes."""

from __future__ import annotations

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
