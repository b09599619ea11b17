"""The compute policy and the fused blocks: equal to TransformerLens's own blocks in float32,
close under bf16-mixed, and never silently used where they would ignore a hook."""

from __future__ import annotations

import logging

import pytest
import torch

from effective_depth.engine.adapter import Adapter
from effective_depth.errors import ConfigError
from effective_depth.models import precision as prec
from effective_depth.models.loading import load_model
from effective_depth.models.precision import ComputePolicy, resolve_precision, set_policy
from tests.helpers import ARCHS, save_tiny_checkpoint

FUSED_ARCHS = (*ARCHS, "gemma3")


def _tiny_gemma3():
    """A tiny random Gemma-3 HookedTransformer (sandwich norms, QK norm, a sliding window of 6
    on two of three blocks, local and global rotary bases): TransformerLens's own Gemma-3 config
    at a small size (a local Gemma-3 checkpoint must match an official config's shape)."""
    from transformer_lens import HookedTransformer
    from transformer_lens.config import HookedTransformerConfig

    cfg = HookedTransformerConfig(
        original_architecture="Gemma3ForCausalLM", d_model=64, d_head=16, n_heads=4,
        n_key_value_heads=1, d_mlp=128, n_layers=3, d_vocab=40, n_ctx=256,
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=16,
        rotary_base=1_000_000, rotary_base_local=10_000, act_fn="gelu_pytorch_tanh",
        gated_mlp=True, use_qk_norm=True, use_normalization_before_and_after=True,
        use_local_attn=True, attn_types=["local", "local", "global"], window_size=6,
        attn_scale=4.0, final_rms=True, eps=1e-6, device="cpu", dtype=torch.float32)
    torch.manual_seed(0)
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".w") or name.endswith("b_Q") or name.endswith("b_O"):
                p.add_(0.1 * torch.randn_like(p))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    paths = {arch: save_tiny_checkpoint(arch, root / f"tiny-{arch}") for arch in ARCHS}
    paths["gemma3"] = "tiny-gemma3"
    return paths


def _pair(path, precision="fp32"):
    """The same weights twice: fused blocks, and TransformerLens's own (attention='eager')."""
    if path == "tiny-gemma3":
        import copy

        fused = _tiny_gemma3()
        eager = copy.deepcopy(fused)
        set_policy(fused, resolve_precision(precision, "cpu"))
    else:
        fused = load_model(str(path), device="cpu", precision=precision)
        eager = load_model(str(path), device="cpu")
    set_policy(eager, ComputePolicy("fp32", attention="eager"))
    return Adapter(fused), Adapter(eager)


def _rel(a, b):
    """Relative difference; NaN where a measurement leaves a cell undefined must match."""
    a, b = a.float(), b.float()
    assert torch.equal(a.isnan(), b.isnan())
    a, b = a.nan_to_num(), b.nan_to_num()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("arch", FUSED_ARCHS)
def test_fused_blocks_equal_transformer_lens_in_float32(tiny_paths, arch):
    fused, eager = _pair(tiny_paths[arch])
    assert fused.fused, fused.fused_reason
    assert not eager.fused
    tokens = torch.randint(3, fused.d_vocab, (3, 20))
    a = fused.clean(tokens, components=True, kv=True)
    # TransformerLens's own suffix runs refuse sliding windows: its keys come from its projection
    b = eager.clean(tokens, components=True, kv=eager.can_run_suffix)
    assert a.resid.dtype == torch.float32
    for name in ("resid", "attn", "mlp"):
        assert _rel(getattr(a, name), getattr(b, name)) < 1e-5, name
    kv_b = b.kv or [eager.keys_values(i, b.resid[i]) for i in range(eager.n_layers)]
    for (ka, va), (kb, vb) in zip(a.kv, kv_b):
        assert _rel(ka, kb) < 1e-5 and _rel(va, vb) < 1e-5
    # a suffix run over cached keys and values (bottom-right aligned mask, sliding window)
    for layer in range(fused.n_layers):
        prefix = (a.kv[layer][0][:, :13], a.kv[layer][1][:, :13])
        out = fused.block(layer, a.resid[layer][:, 13:], prefix)
        assert _rel(out, b.resid[layer + 1][:, 13:]) < 1e-5
        keys, values = fused.keys_values(layer, a.resid[layer])
        assert _rel(keys, kv_b[layer][0]) < 1e-5 and _rel(values, kv_b[layer][1]) < 1e-5
    # the lens and its gradient through the blocks
    x = a.resid[0].clone().requires_grad_(True)
    y = b.resid[0].clone().requires_grad_(True)
    with fused.grad_enabled_inputs(), eager.grad_enabled_inputs():
        h_a, h_b = x, y
        for layer in range(fused.n_layers):
            h_a, h_b = fused.block(layer, h_a), eager.block(layer, h_b)
        fused.lens_log_probs(h_a)[..., 5].sum().backward()
        eager.lens_log_probs(h_b)[..., 5].sum().backward()
    assert _rel(x.grad, y.grad) < 1e-5


@pytest.mark.parametrize("name", ["skip_effects", "logit_lens", "erasure",
                                  "integrated_gradients", "contributions"])
def test_measurements_equal_across_kernels_in_float32(tiny_paths, name):
    """Every measurement's curves: fused blocks equal TransformerLens's to 1e-5 (relative)."""
    import effective_depth as ed
    from effective_depth.engine import encode_batch

    fused, eager = _pair(tiny_paths["qwen2"])
    batch = encode_batch(fused.tokenizer, ed.get_task("addition", digits=2).examples(4))
    fn = getattr(ed, name)
    kwargs = {"steps": 16} if name == "integrated_gradients" else {}
    if name == "erasure":
        kwargs = {"reference": batch}
    ra = fn(fused.model, batch, **kwargs)
    rb = fn(eager.model, batch, **kwargs)
    ta, tb = ra.tensors(), rb.tensors()
    assert ta.keys() == tb.keys() and ta
    for key in ta:
        if ta[key].is_floating_point():
            a, b = ta[key].nan_to_num(), tb[key].nan_to_num()
            if key.startswith("angular"):
                # the angle of a residual with itself, arccos(1 - 1e-7) ~ 5e-4 a token, is
                # rounding noise in both (the diagonal); every other angle must agree
                a = a * (1 - torch.eye(a.shape[-1]))
                b = b * (1 - torch.eye(b.shape[-1]))
            # 1e-5 relative, or float32's noise floor for values that are rounding noise
            # themselves (completeness gaps ~1e-8)
            assert _rel(a, b) < 1e-5 or float((a - b).abs().max()) < 1e-6, key


def test_bf16_mixed_keeps_the_stream_in_float32_and_the_output_close(tiny_paths):
    fused, eager = _pair(tiny_paths["llama"], precision="bf16-mixed")
    assert fused.policy.name == "bf16-mixed"
    tokens = torch.randint(3, fused.d_vocab, (2, 16))
    a, b = fused.clean(tokens), eager.clean(tokens)
    assert a.resid.dtype == torch.float32
    assert 0 < _rel(a.resid, b.resid) < 0.05  # bfloat16 matmuls: close, not equal
    p, q = fused.lens_log_probs(a.resid[-1]), eager.lens_log_probs(b.resid[-1])
    assert p.dtype == torch.float32
    kl = (q.exp() * (q - p)).sum(-1).mean()
    assert float(kl) < 1e-2
    # differentiated passes run in float32 (ComputePolicy.for_grad)
    assert fused._policy_for(a.resid[0].requires_grad_(True)).matmul == torch.float32


def test_a_hook_inside_a_block_runs_transformer_lens_blocks(tiny_paths):
    """A user's hook on a point the fused forward does not call (the attention pattern) sees
    every call, and the numbers stay those of TransformerLens."""
    fused, eager = _pair(tiny_paths["qwen2"])
    tokens = torch.randint(3, fused.d_vocab, (2, 12))
    seen = []

    def halve(pattern, hook):
        seen.append(hook.name)
        return pattern * 0.5

    name = "blocks.1.attn.hook_pattern"
    with fused.hooks([(name, halve)]):
        a = fused.clean(tokens)
    with eager.hooks([(name, halve)]):
        b = eager.clean(tokens)
    assert seen == [name, name]
    assert _rel(a.resid, b.resid) < 1e-5
    assert _rel(a.resid[-1], fused.clean(tokens).resid[-1]) > 1e-3  # the hook acted


def test_fused_weights_follow_an_in_place_edit(tiny_paths):
    fused, eager = _pair(tiny_paths["llama"])
    tokens = torch.randint(3, fused.d_vocab, (1, 10))
    before = fused.clean(tokens).resid
    for model in (fused.model, eager.model):
        with torch.no_grad():
            model.blocks[0].attn.W_Q.mul_(2.0)
    after = fused.clean(tokens).resid
    assert _rel(after, before) > 1e-3
    assert _rel(after, eager.clean(tokens).resid) < 1e-5


def test_an_uncovered_architecture_falls_back_and_says_so_once(tiny_paths, caplog):
    model = load_model(str(tiny_paths["llama"]), device="cpu")
    model.cfg.attn_scores_soft_cap = 30.0  # Gemma-2's soft-capping: no fused kernel
    with caplog.at_level(logging.WARNING):
        first, second = Adapter(model), Adapter(model)
    assert first.fused_reason == second.fused_reason == "attention soft-capping"
    assert sum("soft-capping" in r.getMessage() for r in caplog.records) == 1


def test_auto_detects_bfloat16_support(monkeypatch):
    prec._cpu_flags.cache_clear()
    monkeypatch.setattr(prec, "_cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    p = resolve_precision("auto", "cpu")
    assert (p.name, p.requested) == ("bf16-mixed", "auto") and "amx_bf16" in p.reason
    narrow = resolve_precision("auto", "cpu", d_model=128)
    assert narrow.name == "fp32" and "d_model 128 < 512" in narrow.reason
    assert resolve_precision("auto", "cpu", d_model=576).name == "bf16-mixed"
    monkeypatch.setattr(prec, "_cpu_flags", lambda: frozenset({"avx2"}))
    p = resolve_precision("auto", "cpu")
    assert p.name == "fp32" and "without" in p.reason
    assert resolve_precision("bf16", "cpu").to_dict()["resid"] == "bfloat16"
    with pytest.raises(ConfigError, match="auto, fp32, bf16-mixed, bf16"):
        resolve_precision("fp8", "cpu")


def test_load_model_records_the_policy_and_refuses_a_contradiction(tiny_paths):
    model = load_model(str(tiny_paths["qwen2"]), device="cpu", precision="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.effective_depth_source["precision"]["policy"] == "bf16"
    with pytest.raises(ConfigError, match="fp32 computes in float32"):
        load_model(str(tiny_paths["qwen2"]), device="cpu", precision="fp32", dtype="bfloat16")


def _estimators(model: str, precision: str, tmp_path, n: int, metrics=()) -> dict:
    import effective_depth as ed

    cfg = ed.StudyConfig(model=model, n_examples=n, n_boot=200, precision=precision,
                         metrics=metrics)
    res = ed.run_study(cfg, tmp_path / f"{model.replace('/', '_')}-{precision}", progress=False,
                       dashboard=False)
    return {k: v for k, v in res.record.depth.items() if getattr(v, "kind", "") == "estimator"}


def _agree(ref, other) -> bool:
    """bf16-mixed's block within fp32's 95% CI or one block of it (both undefined: agree)."""
    if ref.layer is None or other.layer is None:
        return ref.layer is None and other.layer is None
    lo, hi = ref.layer_ci or (ref.layer, ref.layer)
    return lo <= other.layer <= hi or abs(ref.layer - other.layer) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("model", ["zoo/add-12l", "zoo/spare-8l"])
def test_bf16_mixed_estimators_agree_with_fp32_on_the_zoo(model, tmp_path):
    ref = _estimators(model, "fp32", tmp_path, 10)
    mixed = _estimators(model, "bf16-mixed", tmp_path, 10)
    assert ref and set(ref) == set(mixed)
    bad = {k: (ref[k].layer, ref[k].layer_ci, mixed[k].layer) for k in ref
           if not _agree(ref[k], mixed[k])}
    assert not bad


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("name", ["real/smollm2-135m-instruct", "real/gemma-3-270m"])
def test_bf16_mixed_estimators_agree_with_fp32_on_real_models(name, tmp_path):
    from tests.helpers import real_checkpoint

    real_checkpoint(name)  # fetched (or a skip with the reason; a failure under CI=true)
    metrics = ("contributions", "logit_lens", "skip_effects")
    ref = _estimators(name, "fp32", tmp_path, 6, metrics)
    mixed = _estimators(name, "bf16-mixed", tmp_path, 6, metrics)
    assert ref and set(ref) == set(mixed)
    bad = {k: (ref[k].layer, ref[k].layer_ci, mixed[k].layer) for k in ref
           if not _agree(ref[k], mixed[k])}
    assert not bad
