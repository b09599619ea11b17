"""Tiny random checkpoints of the architectures the reference papers use."""

from __future__ import annotations

from pathlib import Path

import torch

ARCHS = ("gpt2", "llama", "qwen2", "mistral")


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
