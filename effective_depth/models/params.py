"""Parameter counts as Hugging Face states them.

A model's size is the number of *distinct* parameters of its Hugging Face checkpoint, what
``PreTrainedModel.num_parameters()`` returns: a matrix tied between the embedding and the
unembedding counts once. The hooked backend keeps ``W_E`` and ``W_U`` as two tensors and adds
zero biases the checkpoint does not have, so counting its own parameters overstates the size
(SmolLM2-135M: 162,985,152 against Hugging Face's 134,515,008). The count is therefore taken from
the Hugging Face model the backend was built from (or, for an official TransformerLens name,
from that architecture instantiated on the ``meta`` device, which allocates nothing).

*Embedding* parameters are those of the token and position embeddings and of the output
(unembedding) layer, each distinct tensor once; *non-embedding* parameters are the rest (the
blocks and the final norm), the count scaling laws use (Kaplan et al. 2020).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["hf_parameter_counts", "parameter_counts"]

#: how :func:`parameter_counts` arrived at its numbers, stored beside them
HF_METHOD = "Hugging Face num_parameters() of the checkpoint's model (tied matrices once)"


def hf_parameter_counts(hf_model: Any) -> dict[str, Any]:
    """Total, embedding and non-embedding parameters of a Hugging Face causal LM."""
    total = int(hf_model.num_parameters())
    modules = [m for m in hf_model.modules() if isinstance(m, torch.nn.Embedding)]
    out_emb = hf_model.get_output_embeddings()
    if out_emb is not None:
        modules.append(out_emb)
    distinct = {id(p): p for m in modules for p in m.parameters()}
    embedding = int(sum(p.numel() for p in distinct.values()))
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding,
            "method": HF_METHOD}


def meta_parameter_counts(hf_config: Any) -> dict[str, Any]:
    """:func:`hf_parameter_counts` of the architecture ``hf_config`` describes, built on the
    ``meta`` device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return hf_parameter_counts(model)


def parameter_counts(model: Any) -> dict[str, Any]:
    """The counts of a loaded model (either backend): recorded at load time, read from the
    bridge's Hugging Face model, or — for a model built some other way — counted from the hooked
    tensors with ``W_U`` left out when it equals ``W_Eᵀ`` and all-zero tensors left out (the
    biases TransformerLens adds where the checkpoint has none); ``method`` says which."""
    known = getattr(model, "effective_depth_params", None)
    if known is not None:
        return dict(known)
    original = getattr(model, "original_model", None)
    if original is not None and hasattr(original, "num_parameters"):
        return hf_parameter_counts(original)
    return _hooked_counts(model)


def _hooked_counts(model: Any) -> dict[str, Any]:
    seen: dict[int, tuple[str, torch.Tensor]] = {}
    for name, p in model.named_parameters():
        seen.setdefault(id(p), (name, p))
    params = dict(seen.values())
    w_e, w_u = params.get("embed.W_E"), params.get("unembed.W_U")
    tied = (w_e is not None and w_u is not None and w_e.shape == w_u.T.shape
            and bool(torch.equal(w_e, w_u.T)))
    total = embedding = 0
    for name, p in params.items():
        if (tied and name == "unembed.W_U") or not bool(p.detach().any()):
            continue
        total += p.numel()
        if name.startswith(("embed.", "pos_embed.", "unembed.")):
            embedding += p.numel()
    return {"total": int(total), "embedding": int(embedding),
            "non_embedding": int(total - embedding),
            "method": "counted from the hooked model's tensors (W_U once when tied to W_E; "
                      "all-zero tensors left out)"}
