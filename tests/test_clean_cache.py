"""One clean pass per prompt chunk within a study (engine/clean_cache.py): reused for the same
tokens, never while a hook is attached or after the weights changed, and a study's measurements
give exactly the numbers they give with every pass recomputed."""

from __future__ import annotations

import torch

from effective_depth.engine.adapter import Adapter, get_adapter
from effective_depth.engine.clean_cache import active_cache, shared_clean_passes
from effective_depth.models import load_model
from effective_depth.study import StudyConfig, run_study


def _tokens(model, texts):
    from effective_depth.engine.batch import encode_batch
    from effective_depth.tasks.base import Example

    return encode_batch(model.tokenizer, [Example(t, "") for t in texts]).tokens


def test_a_pass_is_reused_only_when_it_is_the_clean_one():
    model = load_model("zoo/add-2l")
    adapter = get_adapter(model)
    tokens = _tokens(model, ["12+34=", "56+7="])
    with shared_clean_passes(model, 1 << 30) as cache:
        assert active_cache(model) is cache
        first = adapter.clean(tokens)
        again = get_adapter(model).clean(tokens.clone())  # another adapter, equal ids
        assert again is first and cache.summary()["reused"] == 1
        other = adapter.clean(tokens[:1])  # other tokens: their own pass
        assert other is not first and torch.allclose(other.resid, first.resid[:, :1], atol=1e-5)
        with_parts = adapter.clean(tokens, components=True)  # components: computed
        assert with_parts is not first and with_parts.attn is not None
        assert torch.equal(with_parts.resid, first.resid)
        # a hook on the model: its pass is not the clean one
        zero = ("blocks.0.hook_resid_post", lambda x, hook: torch.zeros_like(x))
        with adapter.hooks([zero]):
            hooked = adapter.clean(tokens)
        assert hooked is not first and not torch.equal(hooked.resid[1], first.resid[1])
        # weights written in place: the cached pass is stale
        with torch.no_grad():
            model.blocks[0].mlp.W_out.mul_(2.0)
        changed = adapter.clean(tokens)
        assert changed is not first and not torch.equal(changed.resid[2], first.resid[2])
    assert active_cache(model) is None
    assert adapter.clean(tokens) is not adapter.clean(tokens)  # no cache outside the block


def test_the_budget_bounds_what_is_kept():
    model = load_model("zoo/add-2l")
    adapter = get_adapter(model)
    tokens = _tokens(model, ["12+34="])
    with shared_clean_passes(model, budget=16) as cache:  # smaller than any pass
        a, b = adapter.clean(tokens), adapter.clean(tokens)
        assert a is not b and torch.equal(a.resid, b.resid)
        assert cache.summary() == {"computed": 2, "reused": 0, "over_budget": 2, "bytes": 0}


def test_a_study_runs_one_clean_pass_per_chunk_and_the_same_numbers(tmp_path, monkeypatch):
    config = StudyConfig(model="zoo/add-4l", metrics=("contributions", "logit_lens",
                         "skip_effects"), n_examples=12, batch_size=4, n_boot=50)
    calls: list[tuple[int, bool]] = []
    original = Adapter._clean_pass

    def counting(self, tokens, *, components, kv):
        calls.append((int(tokens.shape[0]), components))
        return original(self, tokens, components=components, kv=kv)

    monkeypatch.setattr(Adapter, "_clean_pass", counting)
    cached = run_study(config, tmp_path / "cached", progress=False, dashboard=False)
    # 3 chunks, one pass each: contributions' (with components), whose residual stream the
    # logit lens and the skip sweeps then read
    assert calls == [(4, True)] * 3
    calls.clear()
    monkeypatch.setattr("effective_depth.study.run.shared_clean_passes",
                        lambda model, budget: shared_clean_passes(model, 0))
    fresh = run_study(config, tmp_path / "fresh", progress=False, dashboard=False)
    assert len(calls) == 9  # every measurement its own pass per chunk
    assert cached.results["depth"] == fresh.results["depth"]
    assert cached.results["metrics"] == fresh.results["metrics"]
