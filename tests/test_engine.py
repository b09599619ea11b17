"""The engine: interventions as hooks == as resumed plans == Hugging Face with the layer deleted;
hooks clean up; padding is exact."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import pytest
import torch

from effective_depth import load_model
from effective_depth.engine import (
    Intervention,
    Patch,
    Row,
    compile_plan,
    encode_batch,
    get_adapter,
    intervene,
    local_skip,
    replace_residual,
    skip_attn,
    skip_block,
    skip_mlp,
    sweep,
    where,
)
from effective_depth.engine.interventions import ablate
from effective_depth.errors import ConfigError
from effective_depth.tasks import Example

TOL = 1e-5


@pytest.fixture(scope="module")
def models(tiny_checkpoints):
    return {arch: load_model(tiny_checkpoints[arch], device="cpu") for arch in ("qwen2", "gpt2")}


@pytest.fixture(scope="module")
def batch(models):
    examples = [
        Example("12+34=", "46"),
        Example("1+2+3+4+5+6=", "21"),
        Example("(9*8)-7=", "65"),
    ]
    return encode_batch(models["qwen2"].tokenizer, examples)


def _hf_without_layer(path, layer):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    hf = copy.deepcopy(hf)
    if hasattr(hf, "transformer"):  # GPT-2
        hf.transformer.h = torch.nn.ModuleList(b for i, b in enumerate(hf.transformer.h) if i != layer)
    else:
        hf.model.layers = torch.nn.ModuleList(b for i, b in enumerate(hf.model.layers) if i != layer)
    hf.config.num_hidden_layers -= 1
    return hf


def _resumed_logits(model, specs, tokens):
    adapter = get_adapter(model)
    clean = adapter.clean(tokens, components=True)
    outs = []
    for row in range(tokens.shape[0]):
        plan = compile_plan(specs, adapter, clean, row)
        final = {}

        def on_final(chunk, h, final=final):
            final["h"] = h

        sweep(adapter, clean, [Row("r", row, plan)], on_final=on_final)
        outs.append(adapter.lens_logits(final["h"])[0])
    return torch.stack(outs)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_skip_hooks_equals_resume_equals_hf_without_layer(models, tiny_checkpoints, batch, arch, layer):
    model = models[arch]
    tokens = batch.tokens
    with torch.no_grad():
        with intervene(model, skip_block(layer)):
            hooked = model(tokens, padding_side="right").log_softmax(-1)
        resumed = _resumed_logits(model, [skip_block(layer)], tokens).log_softmax(-1)
        hf = _hf_without_layer(tiny_checkpoints[arch], layer)(tokens, use_cache=False).logits.log_softmax(-1)
    assert (hooked - resumed).abs().max() <= TOL
    assert (hooked - hf).abs().max() <= 1e-4  # HF vs TL kernels differ at ~1e-6
    clean = model(tokens).log_softmax(-1)
    assert (clean - hooked).abs().max() > 1e-3  # the skip did something


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_every_intervention_hooks_equal_plans(models, batch, arch):
    model = models[arch]
    adapter = get_adapter(model)
    tokens = batch.tokens
    width = tokens.shape[1]
    mean_vec = torch.randn(adapter.d_model)
    positions = torch.zeros(width, dtype=torch.bool)
    positions[2:5] = True
    clean = adapter.clean(tokens, components=True)
    cases = [
        [skip_block(1, positions)],
        [skip_attn(1, positions)],
        [skip_mlp(0, slice(1, None))],
        [local_skip(1, positions)],
        [replace_residual(2, mean_vec, [3])],
        [replace_residual(3, mean_vec, [3])],  # the final residual
        [ablate(1, "mlp", "mean", mean_vec, positions)],
        [ablate(0, "attn", "resample", clean.attn[0].flip(0), positions)],
        [skip_block(0, positions), skip_mlp(2, positions)],  # several at once
        [skip_attn(2), replace_residual(1, mean_vec, [4])],
    ]
    for specs in cases:
        with torch.no_grad(), intervene(model, *specs):
            hooked = model(tokens, padding_side="right")
        resumed = _resumed_logits(model, specs, tokens)
        assert (hooked - resumed).abs().max() <= TOL, specs


@pytest.mark.slow
def test_skip_nothing_changes_nothing(models, batch):
    model = models["qwen2"]
    empty = torch.zeros(batch.width, dtype=torch.bool)
    with torch.no_grad():
        clean = model(batch.tokens)
        with intervene(model, skip_block(1, empty), skip_attn(0, empty)):
            same = model(batch.tokens)
    assert torch.equal(clean, same)
    resumed = _resumed_logits(model, [skip_block(1, empty)], batch.tokens)
    assert (resumed - clean).abs().max() <= TOL


@pytest.mark.slow
def test_user_hooks_fire_and_ours_are_removed_after_an_exception(models, batch):
    model = models["qwen2"]
    adapter = get_adapter(model)
    calls = []
    model.add_hook("blocks.2.hook_resid_pre", lambda x, hook: calls.append(x.shape[0]))
    try:
        clean = adapter.clean(batch.tokens)
        rows = [Row(s, 0, compile_plan([skip_attn(s)], adapter, clean, 0)) for s in range(3)]

        def boom(chunk, h):
            raise RuntimeError("metric failed")

        before = len(calls)
        with pytest.raises(RuntimeError, match="metric failed"):
            sweep(adapter, clean, rows, on_final=boom)
        assert len(calls) > before  # the user's hook saw the resumed rows
        for name, hp in model.hook_dict.items():
            n = len(hp.fwd_hooks)
            assert n == (1 if name == "blocks.2.hook_resid_pre" else 0), name
        with pytest.raises(ZeroDivisionError), intervene(model, skip_block(0)):
            _ = 1 / 0
        assert all(len(hp.fwd_hooks) <= 1 for hp in model.hook_dict.values())
        # composes with model.hooks / run_with_hooks
        seen = []
        with intervene(model, skip_block(1)):
            model.run_with_hooks(batch.tokens, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: seen.append(1))])
        assert seen == [1]
    finally:
        model.reset_hooks(including_permanent=True)


@pytest.mark.slow
def test_padded_batch_equals_one_prompt_at_a_time(models, batch):
    model = models["qwen2"]
    adapter = get_adapter(model)
    clean = adapter.clean(batch.tokens)
    for b in range(batch.size):
        n = int(batch.lengths[b])
        alone = adapter.clean(batch.tokens[b : b + 1, :n])
        assert (clean.resid[:, b, :n] - alone.resid[:, 0]).abs().max() <= TOL


@pytest.mark.slow
def test_suffix_runs_equal_full_runs(models, batch):
    model = models["qwen2"]
    adapter = get_adapter(model)
    mean_vec = torch.randn(adapter.d_model)
    clean_kv = adapter.clean(batch.tokens, kv=True)
    clean = adapter.clean(batch.tokens)
    assert (clean_kv.resid - clean.resid).abs().max() <= TOL
    rows = [Row((b, layer, t), 0, compile_plan([replace_residual(layer, mean_vec, [t])], adapter, clean_kv, 0))
            for b in [0] for layer in range(4) for t in (2, 5, 7)]
    got = {}

    def keep(chunk, h):
        for k, x in zip(chunk.keys, h):
            got[(k, chunk.start)] = x[-1].clone()

    sweep(adapter, clean_kv, rows, on_final=keep, suffix=True)
    assert any(off > 0 for _, off in got)
    full = {}

    def keep_full(chunk, h):
        assert chunk.positions.tolist() == list(range(batch.width))
        for k, x in zip(chunk.keys, h):
            full[k] = x[-1].clone()

    sweep(adapter, clean, rows, on_final=keep_full, suffix=False)
    for (k, _off), v in got.items():
        assert (v - full[k]).abs().max() <= TOL


@dataclass(frozen=True)
class ScaleMLP(Intervention):
    """A user's intervention, written once as a patch (the hook-scripting guide's example)."""

    layer: int
    factor: float
    positions: object = None

    def patches(self):
        return [Patch("mlp", self.layer, self.positions, fn=lambda m: m * self.factor)]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_a_custom_intervention_written_once_works_both_ways(models, batch, arch):
    model = models[arch]
    adapter = get_adapter(model)
    tokens = batch.tokens
    with torch.no_grad():
        clean_logits = model(tokens, padding_side="right")
        # an independent hook: the MLP output of block 1 scaled by hand at positions 2..
        def by_hand(x, hook):
            x = x.clone()
            x[:, 2:] *= 0.25
            return x

        want = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", by_hand)],
                                    padding_side="right")
    spec = ScaleMLP(1, 0.25, slice(2, None))
    with torch.no_grad(), intervene(model, spec):
        hooked = model(tokens, padding_side="right")
    assert (hooked - want).abs().max() <= TOL
    assert (hooked - clean_logits).abs().max() > 1e-3
    clean = adapter.clean(tokens, components=True)
    assert compile_plan([spec], adapter, clean, 0).start == 2  # resumed after block 1
    for specs in ([spec], [spec, skip_block(2, slice(3, None))], [skip_attn(0, [4]), spec]):
        with torch.no_grad(), intervene(model, *specs):
            hooked = model(tokens, padding_side="right")
        assert (hooked - _resumed_logits(model, specs, tokens)).abs().max() <= TOL, specs


@pytest.mark.slow
def test_patches_fold_into_the_resumed_residual(models, batch):
    model = models["qwen2"]
    adapter = get_adapter(model)
    clean = adapter.clean(batch.tokens, components=True)
    L = adapter.n_layers
    # a block skip resumes at s + 1 from h_s exactly (no in-run patch left)
    plan = compile_plan([skip_block(1, slice(2, None))], adapter, clean, 0)
    assert plan.start == 2 and plan.patches == () and plan.first_pos == 2
    assert torch.equal(plan.resid[2:], clean.resid[1, 0, 2:])
    assert torch.equal(plan.resid[:2], clean.resid[2, 0, :2])
    # a sequential attention skip must run inside block s; a local skip starts at h_L
    assert compile_plan([skip_attn(1)], adapter, clean, 0).start == 1
    local = compile_plan([local_skip(0, [3])], adapter, clean, 0)
    assert local.start == L and local.patches == ()
    assert torch.equal(local.resid[3], clean.resid[L, 0, 3] - (clean.resid[1, 0, 3] - clean.resid[0, 0, 3]))
    # plans are values: the sweep never writes into them
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.start = 0  # type: ignore[misc]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_local_skip_combined_with_later_patches(models, batch, arch):
    model = models[arch]
    adapter = get_adapter(model)
    positions = torch.zeros(batch.width, dtype=torch.bool)
    positions[2:6] = True
    specs = [skip_mlp(2, positions), local_skip(0, positions)]  # d_0 is read before anything changes
    with torch.no_grad(), intervene(model, *specs):
        hooked = model(batch.tokens, padding_side="right")
    assert (hooked - _resumed_logits(model, specs, batch.tokens)).abs().max() <= TOL
    # d_1 would have to come from a run that already skipped block 0: hooks only, and the
    # resumed form says so instead of using the clean d_1
    clean = adapter.clean(batch.tokens, components=True)
    with pytest.raises(ConfigError, match="reads block 1"):
        compile_plan([skip_block(0), local_skip(1)], adapter, clean, 0)
    with pytest.raises(ConfigError, match="block 7 outside 0..2"):
        compile_plan([skip_block(7)], adapter, clean, 0)


def test_where_replaces_only_the_masked_positions():
    old = torch.arange(24.0).reshape(2, 3, 4)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    out = where(mask, torch.zeros(4), old)
    assert out[0, 0].tolist() == [0.0] * 4 and out[1, 2].tolist() == [0.0] * 4
    assert torch.equal(out[0, 1:], old[0, 1:]) and torch.equal(out[1, :2], old[1, :2])
    with pytest.raises(ConfigError, match="does not match"):
        where(torch.ones(3, 3, dtype=torch.bool), torch.zeros(4), old)


@pytest.mark.slow
def test_bridge_hooks_and_resumed_plans_equal_hooked_transformer(tiny_checkpoints, models, batch):
    """The same patches, spelled as the bridge's hooks by the adapter, in a forward pass and in
    the bridge's resumed fallback (a full forward with the residual overwritten)."""
    bridge = load_model(tiny_checkpoints["qwen2"], device="cpu", backend="bridge")
    hooked = models["qwen2"]
    cases = [[skip_block(1)], [skip_mlp(0, slice(2, None)), skip_block(2)],
             [skip_mlp(2), local_skip(0)], [ScaleMLP(1, 2.0, [3, 4])]]
    for specs in cases:
        with torch.no_grad():
            with intervene(hooked, *specs):
                want = hooked(batch.tokens, padding_side="right")
            with intervene(bridge, *specs):
                got = bridge(batch.tokens)
        assert (want - got).abs().max() <= 1e-4, specs
        assert (want - _resumed_logits(bridge, specs, batch.tokens)).abs().max() <= 1e-4, specs
