"""Fused transformer blocks: a HookedTransformer block's forward without its overhead.

TransformerLens's blocks are written for inspection: every projection is an einsum over a
``[head, d_model, d_head]`` weight laid out anew on every call, the attention pattern is
materialised, RMSNorm is written out, rotary copies its input, and the dtype follows the weights.
:func:`run_block` computes the same function of the same weights for the common pre-norm
decoders (Llama, Qwen2, Mistral-style, Gemma-3 with its sandwich norms, QK norm and sliding
window, GPT-2) with

* one ``[(heads + 2 kv_heads) * d_head, d_model]`` QKV projection and views (never per-call
  copies) of the output and MLP matrices, kept in the policy's matmul dtype;
* ``scaled_dot_product_attention``: causal, grouped-query, sliding-window, and bottom-right
  aligned when the queries are a suffix whose prefix keys and values are cached;
* ``torch.nn.functional.rms_norm`` / ``layer_norm`` in float32, rotary in float32 without copies
  of the whole head;
* the block's five residual hook points (named by the adapter: ``block_hook_points``) called
  where TransformerLens calls them, so every
  ``Patch`` and every user hook on those points acts exactly as on the original block.

A block whose inner hook points (the attention pattern, the MLP activations, ...) carry a hook at
call time runs TransformerLens's own forward instead, so a user's hook is never silently ignored.
An architecture outside the list runs TransformerLens's forward throughout; :func:`fused_reason`
says why, and the adapter logs it once per model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.precision import ComputePolicy

__all__ = ["FusedBlock", "fused_reason", "build_fused", "run_block"]

log = logging.getLogger(__name__)

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}

_OFF_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_attn_in",
              "parallel_attn_mlp", "attn_only", "use_logn_attn", "use_dynamic_ntk_rope",
              "use_attention_sinks", "load_in_4bit", "rotary_adjacent_pairs",
              "ungroup_grouped_query_attention", "scale_attn_by_inverse_layer_idx")


def fused_reason(model: Any, hook_flags: tuple[str, ...] = ()) -> str | None:
    """Why ``model``'s blocks cannot run fused (None: they can). ``hook_flags``: the config
    switches that add hook points the fused forward does not call (the adapter, which owns hook
    names, gives them)."""
    cfg = model.cfg
    if not hasattr(model, "blocks") or not hasattr(model, "input_to_embed"):
        return "not a HookedTransformer"
    if cfg.original_architecture in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"):
        return f"{cfg.original_architecture} normalises Q and K before the head split"
    if cfg.normalization_type not in ("RMS", "RMSPre", "LN", "LNPre"):
        return f"normalization_type {cfg.normalization_type!r}"
    if cfg.positional_embedding_type not in ("rotary", "standard"):
        return f"positional_embedding_type {cfg.positional_embedding_type!r}"
    if cfg.act_fn not in _ACTIVATIONS:
        return f"activation {cfg.act_fn!r}"
    for flag in (*_OFF_FLAGS, *hook_flags):
        if getattr(cfg, flag, False):
            return f"cfg.{flag}"
    if (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) > 0:
        return "attention soft-capping"
    if getattr(cfg, "clip_qkv", None) is not None:
        return "clip_qkv"
    if getattr(cfg, "attention_dir", "causal") != "causal":
        return "bidirectional attention"
    if getattr(cfg, "use_NTK_by_parts_rope", False) and getattr(cfg, "use_dynamic_ntk_rope", False):
        return "dynamic NTK rotary"
    for block in model.blocks:
        if type(block).__name__ != "TransformerBlock":
            return f"block type {type(block).__name__}"
        if type(block.attn).__name__ not in ("Attention", "GroupedQueryAttention"):
            return f"attention type {type(block.attn).__name__}"
        if type(block.mlp).__name__ not in ("MLP", "GatedMLP"):
            return f"MLP type {type(block.mlp).__name__}"
        if getattr(block.mlp, "ln", None) is not None:
            return "an MLP with a norm inside (SoLU)"
    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.bfloat16):
        return f"weights stored in {dtype}"
    return None


def _linear_view(w: Tensor, dtype: torch.dtype) -> Tensor:
    """``w`` (``[out, in]``) as ``F.linear`` reads it: the tensor itself when it is in ``dtype``
    and laid out so that no call copies it, else a copy in ``dtype``."""
    if w.dtype == dtype and (w.is_contiguous() or w.T.is_contiguous()):
        return w
    return w.detach().to(dtype).contiguous()


def _norm_kind(cfg: Any) -> str:
    return "rms" if cfg.normalization_type.startswith("RMS") else "ln"


@dataclass
class FusedBlock:
    """One block's weights as the fused forward multiplies them, in the policy's matmul dtype,
    with a signature of the parameters they were built from (rebuilt when any changes)."""

    block: Any
    signature: tuple
    qkv: Tensor
    qkv_bias: Tensor | None
    out: Tensor
    out_bias: Tensor | None
    mlp_in: Tensor
    mlp_in_bias: Tensor | None
    mlp_gate: Tensor | None
    mlp_out: Tensor
    mlp_out_bias: Tensor | None
    inner_hooks: list[Any] = field(default_factory=list)
    #: the residual hook points the fused forward calls (the adapter's ``BlockHooks``)
    hooks: Any = None

    def hooked_inside(self) -> bool:
        """Whether a hook sits on a point the fused forward does not call."""
        return any(hp._forward_hooks or hp._backward_hooks or hp._forward_pre_hooks
                   for hp in self.inner_hooks)


def _signature(block: Any) -> tuple:
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in block.parameters())


def _bias(b: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if b is None or not bool(torch.any(b != 0)):
        return None
    return b.detach().reshape(-1).to(dtype)


def build_fused(block: Any, policy: ComputePolicy, hooks: Any) -> FusedBlock:
    """The fused weights of one TransformerLens block under ``policy``; ``hooks``: the block's
    residual hook points (``resid_pre``, ``attn_out``, ``resid_mid``, ``mlp_out``,
    ``resid_post``), which the fused forward calls."""
    from transformer_lens.hook_points import HookPoint

    attn, mlp, dt = block.attn, block.mlp, policy.matmul
    grouped = type(attn).__name__ == "GroupedQueryAttention"
    w_k = attn._W_K if grouped else attn.W_K
    w_v = attn._W_V if grouped else attn.W_V
    b_k = attn._b_K if grouped else attn.b_K
    b_v = attn._b_V if grouped else attn.b_V
    # [head, d_model, d_head] -> [(head d_head), d_model]
    qkv = torch.cat([w.detach().transpose(1, 2).reshape(-1, w.shape[1])
                     for w in (attn.W_Q, w_k, w_v)]).to(dt).contiguous()
    biases = [b.detach().reshape(-1) for b in (attn.b_Q, b_k, b_v)]
    qkv_bias = _bias(torch.cat(biases), dt)
    w_o = attn.W_O.detach()
    out = _linear_view(w_o.reshape(-1, w_o.shape[-1]).T, dt)
    gated = type(mlp).__name__ == "GatedMLP"
    # the block-level hook points the fused forward calls itself; a hook on any other is a
    # reason to run TransformerLens's forward
    called = {id(hp) for hp in hooks}
    inner = [m for m in block.modules() if isinstance(m, HookPoint) and id(m) not in called]
    return FusedBlock(
        block=block,
        signature=_signature(block),
        qkv=qkv,
        qkv_bias=qkv_bias,
        out=out,
        out_bias=_bias(attn.b_O, dt),
        mlp_in=_linear_view(mlp.W_in.detach().T, dt),
        mlp_in_bias=_bias(mlp.b_in, torch.float32 if gated else dt),
        mlp_gate=_linear_view(mlp.W_gate.detach().T, dt) if gated else None,
        mlp_out=_linear_view(mlp.W_out.detach().T, dt),
        mlp_out_bias=_bias(mlp.b_out, dt),
        inner_hooks=inner,
        hooks=hooks,
    )


def _norm(module: Any, x: Tensor, kind: str) -> Tensor:
    """A TransformerLens norm module applied in float32 (``RMSPre``/``LNPre``: no weight)."""
    w = getattr(module, "w", None)
    w = None if w is None else w.float()
    x = x.float()
    if kind == "rms":
        return F.rms_norm(x, (x.shape[-1],), w, module.eps)
    b = getattr(module, "b", None)
    return F.layer_norm(x, (x.shape[-1],), w, None if b is None else b.float(), module.eps)


def _rotary(attn: Any, x: Tensor, start: int) -> Tensor:
    """Rotate ``x`` (``[batch, pos, head, d_head]``, float32) for positions ``start..``."""
    n = x.shape[1]
    if start + n > attn.rotary_cos.shape[0]:
        attn._extend_rotary_embeddings(min(attn.cfg.n_ctx, max(start + n,
                                                             2 * attn.rotary_cos.shape[0])))
    rd = attn.cfg.rotary_dim
    cos = attn.rotary_cos[start:start + n, None, :].float()
    sin = attn.rotary_sin[start:start + n, None, :].float()
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    flipped = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    turned = rot * cos + flipped * sin
    return turned if rest.shape[-1] == 0 else torch.cat((turned, rest), dim=-1)


_MASKS: dict[tuple, Tensor] = {}


def _mask(q_len: int, k_len: int, window: int | None, device: torch.device) -> Tensor | None:
    """The boolean attention mask (True: attend) of ``q_len`` queries that are the *last*
    positions of ``k_len`` keys (bottom-right aligned), with an optional sliding window."""
    key = (q_len, k_len, window, device)
    if key not in _MASKS:
        if len(_MASKS) > 256:
            _MASKS.clear()
        q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        allowed = k_pos <= q_pos
        if window is not None:
            allowed = allowed & (k_pos > q_pos - window)
        _MASKS[key] = allowed
    return _MASKS[key]


def run_block(
    fused: FusedBlock,
    policy: ComputePolicy,
    x: Tensor,
    prefix_kv: tuple[Tensor, Tensor] | None = None,
    want_kv: bool = False,
    stop_after_kv: bool = False,
) -> Any:
    """Block ``fused.block`` on ``x`` (``[rows, pos, d_model]``), as TransformerLens computes
    it (see the module docstring). ``prefix_kv``: keys (before rotary) and values
    (``[rows, prefix, kv_heads, d_head]``) of positions before ``x``'s. ``want_kv``: also return
    this call's keys and values in that layout; ``stop_after_kv``: return only them."""
    block = fused.block
    attn, cfg = block.attn, block.cfg
    kind = _norm_kind(cfg)
    rows, n, _ = x.shape
    heads, d_head = cfg.n_heads, cfg.d_head
    kv_heads = cfg.n_key_value_heads or heads
    mm, rd = policy.matmul, policy.resid

    # keys and values alone are not a block call (TransformerLens's path reads them off ln1 too)
    hooks = fused.hooks
    x = x.to(rd) if stop_after_kv else hooks.resid_pre(x.to(rd))
    h = _norm(block.ln1, x, kind).to(mm)
    qkv = F.linear(h, fused.qkv, fused.qkv_bias)
    q, k, v = qkv.split([heads * d_head, kv_heads * d_head, kv_heads * d_head], dim=-1)
    q = q.reshape(rows, n, heads, d_head)
    k = k.reshape(rows, n, kv_heads, d_head)
    v = v.reshape(rows, n, kv_heads, d_head)
    if cfg.use_qk_norm:
        q = F.rms_norm(q.float(), (d_head,), attn.q_norm.w.float(), attn.q_norm.eps).to(mm)
        k = F.rms_norm(k.float(), (d_head,), attn.k_norm.w.float(), attn.k_norm.eps).to(mm)
    if stop_after_kv:
        return k, v
    new_kv = (k, v)
    offset = 0
    if prefix_kv is not None:
        pk, pv = prefix_kv
        offset = int(pk.shape[1])
        k = torch.cat([pk.to(k.device, k.dtype), k], dim=1)
        v = torch.cat([pv.to(v.device, v.dtype), v], dim=1)
    if cfg.positional_embedding_type == "rotary":
        q = _rotary(attn, q.float(), offset).to(mm)
        k = _rotary(attn, k.float(), 0).to(mm)
    window = cfg.window_size if getattr(attn, "attn_type", "global") == "local" else None
    causal_only = offset == 0 and (window is None or window >= n)
    mask = None if causal_only else _mask(n, offset + n, window, x.device)
    z = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=mask, is_causal=causal_only, scale=1.0 / float(attn.attn_scale),
        enable_gqa=kv_heads != heads,
    )
    z = z.transpose(1, 2).reshape(rows, n, heads * d_head)
    attn_out = F.linear(z, fused.out, fused.out_bias)
    if cfg.use_normalization_before_and_after:
        attn_out = _norm(block.ln1_post, attn_out, kind)
    attn_out = hooks.attn_out(attn_out.to(rd))
    mid = hooks.resid_mid(x + attn_out)

    h2 = _norm(block.ln2, mid, kind).to(mm)
    act = _ACTIVATIONS[cfg.act_fn]
    if fused.mlp_gate is not None:
        post = act(F.linear(h2, fused.mlp_gate)) * F.linear(h2, fused.mlp_in)
        if fused.mlp_in_bias is not None:
            post = (post.float() + fused.mlp_in_bias).to(mm)
    else:
        post = act(F.linear(h2, fused.mlp_in, fused.mlp_in_bias))
    mlp_out = F.linear(post, fused.mlp_out, fused.mlp_out_bias)
    if cfg.use_normalization_before_and_after:
        mlp_out = _norm(block.ln2_post, mlp_out, kind)
    mlp_out = hooks.mlp_out(mlp_out.to(rd))
    out = hooks.resid_post(mid + mlp_out)
    return (out, new_kv) if want_kv else out
