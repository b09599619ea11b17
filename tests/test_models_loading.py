"""Model loading: every backend and processing mode reproduces the Hugging Face model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from effective_depth import ModelError, load_model
from effective_depth.models import resolve_spec
from effective_depth.models.loading import transposed_mlp_layout
from tests.helpers import ARCHS, tiny_hf_model

TOKENS = torch.tensor([[1, 5, 6, 14, 7, 8, 17, 9, 10, 11, 12], [1, 9, 9, 14, 4, 5, 17, 6, 7, 8, 13]])


def _hf_outputs(path):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf(TOKENS, output_hidden_states=True)
    return out.logits.log_softmax(-1), out.hidden_states


def _tl_outputs(model):
    with torch.no_grad():
        logits, cache = model.run_with_cache(TOKENS)
    return logits.log_softmax(-1), cache


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_default_load_matches_hf_residuals_and_logprobs(tiny_checkpoints, arch, backend):
    path = tiny_checkpoints[arch]
    assert "llama" in str(path)
    model = load_model(path, backend=backend, device="cpu")
    hf_logp, hidden = _hf_outputs(path)
    logp, cache = _tl_outputs(model)
    L = model.cfg.n_layers
    assert L == 3
    assert (logp - hf_logp).abs().max().item() <= 1e-4
    for layer in range(L):
        diff = (cache[f"blocks.{layer}.hook_resid_pre"] - hidden[layer]).abs().max().item()
        assert diff <= 1e-4, (layer, diff)
    for layer in range(L - 1):
        post, nxt = cache[f"blocks.{layer}.hook_resid_post"], cache[f"blocks.{layer + 1}.hook_resid_pre"]
        assert torch.equal(post, nxt)
    assert model.effective_depth_source["kind"] == "local"
    assert model.effective_depth_source["backend"] == backend


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_weight_processing_keeps_logprobs(tiny_checkpoints, arch, backend):
    path = tiny_checkpoints[arch]
    model = load_model(path, backend=backend, device="cpu", process_weights=True)
    hf_logp, _ = _hf_outputs(path)
    logp, _ = _tl_outputs(model)
    assert (logp - hf_logp).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_fold_ln_alone_keeps_residual_stream(tiny_checkpoints):
    path = tiny_checkpoints["qwen2"]
    model = load_model(path, device="cpu", fold_ln=True)
    _, hidden = _hf_outputs(path)
    _, cache = _tl_outputs(model)
    assert model.cfg.normalization_type == "RMSPre"
    for layer in range(model.cfg.n_layers):
        assert (cache[f"blocks.{layer}.hook_resid_pre"] - hidden[layer]).abs().max() <= 1e-4


@pytest.mark.slow
def test_centering_changes_residual_only_when_asked(tiny_checkpoints):
    path = tiny_checkpoints["gpt2"]
    plain = load_model(path, device="cpu")
    centred = load_model(path, device="cpu", center_writing_weights=True)
    _, c1 = _tl_outputs(plain)
    _, c2 = _tl_outputs(centred)
    # the embedding is a writing weight: centring it moves the residual stream
    assert (c1["blocks.0.hook_resid_pre"] - c2["blocks.0.hook_resid_pre"]).abs().max() > 1e-3


def test_dtype_and_device_defaults(tiny_checkpoints):
    model = load_model(tiny_checkpoints["llama"])
    assert next(model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert model.cfg.dtype == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    bf = load_model(tiny_checkpoints["llama"], device="cpu", dtype="bf16")
    assert bf.cfg.dtype == torch.bfloat16
    assert next(bf.parameters()).dtype == torch.bfloat16
    assert not any(p.requires_grad for p in bf.parameters())


def _fake_hub_cache(cache, repo_id, source):
    """A Hugging Face cache entry for ``repo_id`` holding the files of ``source``."""
    commit = "0" * 40
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    shutil.copytree(source, snap)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snap


@pytest.mark.slow
def test_unofficial_hub_id_loads_its_own_config_from_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    # A DeepSeek-R1-Distill-Qwen look-alike: Qwen2 architecture, dimensions no official model has.
    from effective_depth.models.tokenizer import build_char_tokenizer

    src = tmp_path / "src"
    model = tiny_hf_model("qwen2", n_layers=5)
    model.save_pretrained(src)
    build_char_tokenizer().save_pretrained(src)
    cache = tmp_path / "hub"
    repo = "deepseek-ai/DeepSeek-R1-Distill-Qwen-Tiny-Test"
    _fake_hub_cache(cache, repo, src)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert resolve_spec(repo).kind == "hub"
    tl = load_model(repo, device="cpu")
    hf_cfg = json.loads((src / "config.json").read_text())
    assert tl.cfg.n_layers == hf_cfg["num_hidden_layers"] == 5
    assert tl.cfg.d_model == hf_cfg["hidden_size"]
    assert tl.cfg.n_key_value_heads == hf_cfg["num_key_value_heads"]
    assert tl.cfg.d_mlp == hf_cfg["intermediate_size"]
    assert tl.cfg.original_architecture == "Qwen2ForCausalLM"
    with torch.no_grad():
        diff = (tl(TOKENS).log_softmax(-1) - model(TOKENS).logits.log_softmax(-1)).abs().max()
    assert diff <= 1e-4


def test_uncached_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="could not fetch model 'someorg/not-cached'.*local"):
        load_model("someorg/not-cached", device="cpu")


def test_unknown_model_lists_close_names():
    with pytest.raises(ModelError, match=r"unknown model 'gtp2'.*did you mean.*'gpt2'"):
        load_model("gtp2")


def test_missing_directory_says_which_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelError, match="does not exist") as err:
        load_model(str(missing))
    assert str(missing) in str(err.value)


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path)


def test_unsupported_architecture_suggests_bridge(tmp_path, tiny_checkpoints):
    path = tmp_path / "weird"
    shutil.copytree(tiny_checkpoints["llama"], path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["FancyNewForCausalLM"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="backend='bridge'"):
        load_model(path, device="cpu")


def test_bad_backend_and_cuda_without_gpu(tiny_checkpoints):
    with pytest.raises(ModelError, match="unknown backend 'hf'"):
        load_model(tiny_checkpoints["llama"], backend="hf")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            load_model(tiny_checkpoints["llama"], device="cuda")


def test_official_name_loads_from_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    from effective_depth.models.tokenizer import build_char_tokenizer

    src = tmp_path / "src"
    model = tiny_hf_model("qwen2", n_layers=2)
    model.save_pretrained(src)
    build_char_tokenizer().save_pretrained(src)
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "Qwen/Qwen2.5-0.5B", src)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert resolve_spec("qwen2.5-0.5b").kind == "official"
    tl = load_model("Qwen/Qwen2.5-0.5B", device="cpu")
    assert tl.cfg.n_layers == 2 and tl.cfg.d_model == 64
    with torch.no_grad():
        diff = (tl(TOKENS).log_softmax(-1) - model(TOKENS).logits.log_softmax(-1)).abs().max()
    assert diff <= 1e-4


def test_gemma3_of_an_unofficial_shape_is_refused_with_the_differences(tmp_path):
    """Gemma-3 converts by official config only: a checkpoint of another shape must not be
    loaded with a look-alike config (it would compute something else)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from effective_depth.models.tokenizer import build_char_tokenizer

    cfg = Gemma3TextConfig(vocab_size=len(build_char_tokenizer()), hidden_size=64,
                           intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=16, sliding_window=8,
                           layer_types=["sliding_attention", "full_attention"])
    path = tmp_path / "gemma-tiny"
    Gemma3ForCausalLM(cfg).save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)
    with pytest.raises(ModelError, match=r"matches no official TransformerLens config.*"
                                         r"google/gemma-3-270m: d_model 640 vs 64"):
        load_model(path, device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gated_mlp_weights_are_stored_in_the_layout_their_forward_reads(tiny_checkpoints, arch):
    """TransformerLens's GatedMLP multiplies by ``W.T.contiguous()``: after loading, ``W.T`` is
    already contiguous (no per-call copy), and every block's output is bit-identical to the same
    block with ordinary row-major weights."""
    model = load_model(tiny_checkpoints[arch], device="cpu")
    mlps = [b.mlp for b in model.blocks]
    assert all(type(m).__name__ == "GatedMLP" for m in mlps)
    for m in mlps:
        for name in ("W_gate", "W_in", "W_out"):
            w = getattr(m, name)
            assert w.T.is_contiguous() and not w.is_contiguous()
            assert w.T.contiguous().data_ptr() == w.data_ptr()  # no copy
    x = torch.randn(2, 7, model.cfg.d_model)
    relaid = [m(x) for m in mlps]
    for m in mlps:
        for name in ("W_gate", "W_in", "W_out"):
            getattr(m, name).data = getattr(m, name).data.contiguous()
    assert all(torch.equal(a, m(x)) for a, m in zip(relaid, mlps))
    assert transposed_mlp_layout(model) == 3 * len(mlps)  # and it relays them again
