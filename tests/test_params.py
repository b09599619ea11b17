"""Parameter counts equal Hugging Face's ``num_parameters()`` (a tied matrix once), on both
backends, for tied and untied checkpoints; embedding and non-embedding parts are exact."""

from __future__ import annotations

import pytest
import torch

from effective_depth import load_model
from effective_depth.models.params import parameter_counts


def _save(path, tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    from effective_depth.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0, tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["hooked", "bridge"])
@pytest.mark.parametrize("tied", [True, False])
def test_counts_equal_hugging_face(tmp_path, backend, tied):
    hf = _save(tmp_path / f"tiny-{'tied' if tied else 'untied'}", tied)
    V, d = hf.config.vocab_size, hf.config.hidden_size
    # ground truth by hand: blocks + final norm, then the embedding once or twice
    block = (d * d + 2 * d * (d // 2) + d * d) + 3 * d * 64 + 2 * d
    non_embedding = 2 * block + d
    embedding = V * d * (1 if tied else 2)
    assert hf.num_parameters() == non_embedding + embedding
    model = load_model(tmp_path / f"tiny-{'tied' if tied else 'untied'}", device="cpu",
                       backend=backend)
    counts = parameter_counts(model)
    assert counts["total"] == hf.num_parameters()
    assert counts["embedding"] == embedding
    assert counts["non_embedding"] == non_embedding


def test_hooked_fallback_counts_a_tied_matrix_once(tmp_path):
    """A hooked model without a recorded count (built by hand) counts W_U once when it is W_Eᵀ
    and leaves out the zero biases TransformerLens adds."""
    hf = _save(tmp_path / "tiny-tied", True)
    model = load_model(tmp_path / "tiny-tied", device="cpu")
    del model.effective_depth_params
    counts = parameter_counts(model)
    assert counts["total"] == hf.num_parameters()
    assert "hooked" in counts["method"]
