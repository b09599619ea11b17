"""Ground truth: a trained zoo model with k appended no-op blocks uses exactly as many blocks as
before, so the estimators must return the same block index (and ratios shrink by L / (L + k))."""

from __future__ import annotations

import pytest
import torch

from effective_depth import load_model
from effective_depth.analysis.estimation import estimate_all
from effective_depth.engine import encode_batch
from effective_depth.metrics import behaviour, contributions, logit_lens, prune_order, skip_effects
from effective_depth.models.zoo import zoo_entry
from effective_depth.tasks import get_task

#: end to end on models (the fast tier, -m 'not slow', leaves these to the full run)
pytestmark = pytest.mark.slow

K = 2
MODEL = "zoo/add-4l"


def _append_noop_blocks(src, dst, k):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    cfg = hf.config.to_dict()
    cfg.pop("layer_types", None)
    cfg["num_hidden_layers"] += k
    new = Qwen2ForCausalLM(Qwen2Config(**cfg))
    new.load_state_dict(hf.state_dict(), strict=False)
    L = hf.config.num_hidden_layers
    with torch.no_grad():
        for i in range(L, L + k):
            layer = new.model.layers[i]
            layer.load_state_dict(hf.model.layers[L - 1].state_dict())  # arbitrary, trained weights
            layer.self_attn.o_proj.weight.zero_()  # ... whose outputs are zero: output == input
            layer.mlp.down_proj.weight.zero_()
    new.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    entry = zoo_entry(MODEL)
    if entry is None:
        pytest.skip(f"{MODEL} is not bundled")
    dst = _append_noop_blocks(entry.path, tmp_path_factory.mktemp("llama-noop") / "model", K)
    original = load_model(MODEL, device="cpu")
    extended = load_model(dst, device="cpu")
    task = get_task(entry.task["name"], **entry.task["params"])
    batch = encode_batch(original.tokenizer, task.examples(24))
    return original, extended, _measure(original, batch), _measure(extended, batch)


def _measure(model, batch):
    c = contributions(model, batch)
    lens = logit_lens(model, batch, k=5)
    skips = skip_effects(model, batch, mode="current")
    beh = behaviour(model, batch, order=prune_order(skips.output_effect_of(aggregate="mean")))
    metrics = {"contributions": c, "logit_lens": lens, "skip_effects": skips, "behaviour": beh}
    return metrics, estimate_all(metrics, n_boot=50)


def test_noop_blocks_do_not_change_the_estimated_depth(pair):
    original, extended, (m0, e0), (m1, e1) = pair
    L = original.cfg.n_layers
    assert extended.cfg.n_layers == L + K
    # the appended blocks contribute exactly nothing and skipping them changes nothing
    c1 = m1["contributions"]
    assert torch.all(c1.rel_block[L:] == 0)
    assert torch.all(c1.rel_attn[L:] == 0) and torch.all(c1.rel_mlp[L:] == 0)
    s1 = m1["skip_effects"]
    assert torch.all(s1.output_effect[L:] == 0)
    assert torch.all(s1.layer_effect[L:] == 0)
    assert torch.all(s1.layer_effect[:, L:] == 0)
    for name in ("ed_kl", "ed_overlap", "ed_skip", "ed_task"):
        assert e0[name].layer is not None, (name, e0[name].reason)
        assert e1[name].layer == e0[name].layer, name
        assert e1[name].ratio == pytest.approx(e0[name].ratio * L / (L + K)), name
    # pruning finds at least the no-op blocks (they come first: zero effect)
    order = m1["behaviour"].prune_order
    assert set(order[:K]) == set(range(L, L + K))
    assert e1["ed_prune"].layer is not None
    assert (L + K) - (e1["ed_prune"].layer + 1) >= K
    assert m1["behaviour"].accuracy() == m0["behaviour"].accuracy()


def test_ed_cos_on_noop_blocks(pair):
    """ed_cos reads the mean cosine of the *contributions*: a no-op block contributes the zero
    vector, whose cosine with anything is 0 (the clamped denominator), which counts as
    non-negative. So if the last real block erases (mean cosine < 0), the appended block creates a
    new negative-to-non-negative crossing at the last real block; otherwise ed_cos is unchanged.
    It is the one estimator that can move when depth is padded, because 0 sits exactly on its
    threshold."""
    original, _, (_, e0), (m1, e1) = pair
    L = original.cfg.n_layers
    c1 = m1["contributions"]
    mean_cos = (c1.cos_attn + c1.cos_mlp + c1.cos_block) / 3
    assert torch.all(mean_cos[L:] == 0)
    if mean_cos[L - 1] < 0:
        assert e1["ed_cos"].layer == L - 1
    else:
        assert e1["ed_cos"].layer == e0["ed_cos"].layer
