"""Tiny random checkpoints of the architectures the reference papers use."""

from __future__ import annotations

import os
from pathlib import Path

import torch

ARCHS = ("gpt2", "llama", "qwen2", "mistral")


def in_ci() -> bool:
    """Whether the tests run in CI (``CI=true``), where the real-model tests fail, never skip."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def real_checkpoint(name: str) -> Path:
    """The converted checkpoint directory of real model ``name`` (``real/NAME``) in the cache that
    ``effective-depth fetch`` writes, fetched now when absent. A model that cannot be had (no
    index, no ``gguf``, a broken cache) skips the calling test with the reason — except under
    ``CI=true``, where it fails it."""
    import pytest

    from effective_depth.errors import ModelError
    from effective_depth.models.real import fetch_real_model

    try:
        return fetch_real_model(name, progress=False)
    except ModelError as exc:
        if in_ci():
            pytest.fail(f"CI must run the real-model tests, but {name} is unavailable: {exc}")
        pytest.skip(f"{name} is not fetched and cannot be fetched here ({exc})")


def tiny_hf_model(arch: str, n_layers: int = 3, vocab_size: int | None = None, seed: int = 0):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from effective_depth.models.tokenizer import build_char_tokenizer

    vocab = vocab_size or len(build_char_tokenizer())
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=n_layers, num_attention_heads=4,
                  max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=n_layers, n_head=4,
                         n_positions=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        model = GPT2LMHeadModel(cfg)
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=4))
    elif arch == "qwen2":  # grouped-query attention, biased qkv
        model = Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=2))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(**common, num_key_value_heads=2, sliding_window=None))
    else:
        raise ValueError(arch)
    # Random init leaves norms at 1 and biases at 0; perturb them so that processing bugs show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def save_tiny_checkpoint(arch: str, path: Path, n_layers: int = 3, seed: int = 0) -> Path:
    from effective_depth.models.tokenizer import build_char_tokenizer

    model = tiny_hf_model(arch, n_layers=n_layers, seed=seed)
    model.save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)
    return path


#: the tensors that write a block's output into the residual stream
_BLOCK_OUTPUTS = ("W_O", "b_O", "W_out", "b_out")


def rebuilt_model(name: str, layout: list[tuple[int, float]]):
    """A hooked model whose block ``i`` is block ``layout[i][0]`` of the zoo model ``name`` with
    its output weights scaled by ``layout[i][1]`` (embedding, final norm and unembedding kept)."""
    import copy

    from transformer_lens import HookedTransformer

    from effective_depth import load_model

    base = load_model(name, device="cpu")
    cfg = copy.deepcopy(base.cfg)
    cfg.n_layers = len(layout)
    model = HookedTransformer(cfg, tokenizer=base.tokenizer, move_to_device=False)
    src = base.state_dict()
    state = {k: v for k, v in src.items() if not k.startswith("blocks.")}
    for i, (j, scale) in enumerate(layout):
        for k, v in src.items():
            if k.startswith(f"blocks.{j}."):
                rest = k.split(".", 2)[2]
                out = rest.rsplit(".", 1)[-1] in _BLOCK_OUTPUTS
                state[f"blocks.{i}.{rest}"] = v * scale if out else v.clone()
    model.load_state_dict(state, strict=False)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


#: the tiny GGUF's vocabulary: SentencePiece-style pieces, "▁" for the space
GGUF_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789+=., "


def _llama_cpp_permute(w, n_head: int):
    """llama.cpp's row order for the q/k projections (transformers undoes it when loading)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, seed: int = 0, n_layers: int = 2):
    """A tiny random Llama written as an F32 GGUF file (with a SentencePiece-style tokenizer in its
    metadata, BOS ``<s>``) exactly as llama.cpp lays it out; returns the Hugging Face model whose
    weights it holds, the ground truth for conversion."""
    import gguf
    import numpy as np
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens = ["<unk>", "<s>", "</s>"] + ["▁" if c == " " else c for c in GGUF_CHARS]
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_block_count(n_layers)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 3 + [-float(i) for i in range(len(GGUF_CHARS))])
    w.add_token_types([2, 3, 3] + [1] * len(GGUF_CHARS))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(True)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(n_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _llama_cpp_permute(sd[p + "self_attn.q_proj.weight"], 4))
        w.add_tensor(f"blk.{i}.attn_k.weight", _llama_cpp_permute(sd[p + "self_attn.k_proj.weight"], 2))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model
