"""The backend adapter: the only code in the toolkit that knows hook names and backends.

Everything else asks it for "the residual stream", "the attention output of block l", "run blocks
s..L-1 from this residual", or "the logit lens of this residual". Two backends:

* ``HookedTransformer``: blocks are called directly, so a run can *resume* at any block from a
  cached residual (what ``forward(start_at_layer=...)`` does), rows can join a running batch at
  the block where their intervention starts, and a run can cover only a suffix of the positions
  with the unchanged prefix supplied as cached keys and values.
* ``TransformerBridge``: HF modules inside, no ``start_at_layer``. Resuming falls back to a full
  forward with the residual at the resume boundary overwritten by a hook; the numbers are the same,
  only slower.

Every computation goes through the model's :class:`~effective_depth.models.precision.ComputePolicy`
(:attr:`Adapter.policy`): the blocks of the common architectures run fused
(:mod:`effective_depth.engine.fused`: matmuls in the policy's matmul dtype, the residual stream
in its residual dtype), the others under ``torch.autocast`` when the policy multiplies in
bfloat16, and the unembedding of every lens in the matmul dtype with log-probabilities in float32.

Notation follows ``docs/methods.md``: boundary ``l`` (0..L) is the residual ``h_l`` entering block
``l``; ``h_L`` is the output of the last block, before the final norm.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..models.precision import ComputePolicy, get_policy
from .fused import FusedBlock, _signature, build_fused, fused_reason, run_block

__all__ = ["Adapter", "Clean", "get_adapter", "HookFn"]

HookFn = Callable[[Tensor, Any], Tensor | None]

log = logging.getLogger(__name__)


class BlockHooks(NamedTuple):
    """A TransformerLens block's residual hook points, in the order its forward calls them."""

    resid_pre: Any
    attn_out: Any
    resid_mid: Any
    mlp_out: Any
    resid_post: Any


def block_hook_points(block: Any) -> BlockHooks:
    """The hook points a fused block calls itself (:mod:`.fused`); a hook on any other point
    of the block makes that call run TransformerLens's own forward."""
    return BlockHooks(block.hook_resid_pre, block.hook_attn_out, block.hook_resid_mid,
                      block.hook_mlp_out, block.hook_resid_post)


@dataclass
class Clean:
    """Activations of one clean forward pass over a batch.

    ``resid[l]`` is ``h_l`` for l = 0..L; ``attn[l]``/``mlp[l]`` are ``a_l``/``m_l`` when requested;
    ``kv[l]`` are block ``l``'s attention keys and values (for suffix runs) when requested.
    """

    tokens: Int[Tensor, "batch pos"]
    resid: Float[Tensor, "boundary batch pos d_model"]
    attn: Float[Tensor, "layer batch pos d_model"] | None = None
    mlp: Float[Tensor, "layer batch pos d_model"] | None = None
    kv: list[tuple[Tensor, Tensor]] | None = None

    @property
    def n_layers(self) -> int:
        return int(self.resid.shape[0]) - 1

    def block_out(self, layer: int) -> Float[Tensor, "batch pos d_model"]:
        """``d_l = h_{l+1} - h_l``, the whole block's contribution."""
        return self.resid[layer + 1] - self.resid[layer]


#: TransformerLens config switches that add hook points inside a block (fused_reason's input)
_HOOK_FLAGS = ("use_hook_mlp_in", "use_hook_tokens")


class Adapter:
    """Wraps a ``HookedTransformer`` or ``TransformerBridge`` (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cfg = model.cfg
        self.is_bridge = type(model).__name__ == "TransformerBridge" or not hasattr(
            model, "input_to_embed"
        )
        self.n_layers: int = int(self.cfg.n_layers)
        self.d_model: int = int(self.cfg.d_model)
        self.d_vocab: int = int(getattr(self.cfg, "d_vocab_out", None) or self.cfg.d_vocab)
        self.parallel: bool = bool(getattr(self.cfg, "parallel_attn_mlp", False))
        self.tokenizer = getattr(model, "tokenizer", None)
        self.policy: ComputePolicy = get_policy(model)
        self.fused_reason: str | None = self._fused_reason()

    # ------------------------------------------------------------------ compute policy
    def _fused_reason(self) -> str | None:
        """Why the blocks run TransformerLens's own forward (None: they run fused); logged once
        per model."""
        if self.is_bridge:
            return "the bridge runs Hugging Face's modules"
        if self.policy.attention == "eager":
            return "attention='eager' asked for TransformerLens's own blocks"
        cached = getattr(self.model, "_effective_depth_fused_reason", False)
        if cached is not False:
            return cached
        reason = fused_reason(self.model, _HOOK_FLAGS)
        if reason is not None:
            log.warning("%s: blocks run TransformerLens's own forward (slower; %s), under "
                        "precision %s", getattr(self.cfg, "model_name", "model"), reason,
                        self.policy.name)
        self.model._effective_depth_fused_reason = reason
        return reason

    def with_policy(self, policy: ComputePolicy) -> Adapter:
        """An adapter of the same model computing under ``policy`` (the model keeps its own)."""
        if policy == self.policy:
            return self
        other = Adapter(self.model)
        other.policy = policy
        other.fused_reason = other._fused_reason()
        return other

    @property
    def fused(self) -> bool:
        """Whether blocks run fused (see :mod:`effective_depth.engine.fused`)."""
        return self.fused_reason is None

    def compute(self) -> contextlib.AbstractContextManager:
        """The context of the paths that are not fused (TransformerLens blocks, the bridge):
        ``torch.autocast`` to bfloat16 when the policy multiplies in bfloat16."""
        if self.policy.matmul == torch.float32 or self.dtype == self.policy.matmul:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.policy.matmul)

    def _policy_for(self, x: Tensor) -> ComputePolicy:
        """The policy of a computation on ``x``: :meth:`ComputePolicy.for_grad` when it is
        differentiated (``x`` requires grad), else the model's."""
        if torch.is_grad_enabled() and x.requires_grad:
            return self.policy.for_grad()
        return self.policy

    def _fused_block(self, layer: int, policy: ComputePolicy | None = None) -> FusedBlock | None:
        """Block ``layer``'s fused weights under the policy (rebuilt when a parameter changed
        since), or None when the block must run TransformerLens's forward: the architecture is
        not covered, or a hook sits inside the block at this moment."""
        if self.fused_reason is not None:
            return None
        store: dict[tuple, FusedBlock] = self.model.__dict__.setdefault(
            "_effective_depth_fused", {})
        policy = policy or self.policy
        block = self.model.blocks[layer]
        key = (layer, policy.matmul)
        fb = store.get(key)
        if fb is None or fb.block is not block or fb.signature != _signature(block):
            fb = store[key] = build_fused(block, policy, block_hook_points(block))
        return None if fb.hooked_inside() else fb

    def _unembed_weight(self, policy: ComputePolicy) -> tuple[Tensor, Tensor | None]:
        """``W_U`` and ``b_U`` in the matmul dtype (a copy kept while ``W_U`` is unchanged)."""
        u = self.model.unembed
        dt = policy.matmul
        if u.W_U.dtype == dt:
            return u.W_U, u.b_U
        store = self.model.__dict__.setdefault("_effective_depth_fused", {})
        sig = (u.W_U.data_ptr(), u.W_U._version, u.b_U._version, u.W_U.device)
        entry = store.get(("unembed", dt))
        if entry is None or entry[0] != sig:
            b = u.b_U.detach()
            entry = store[("unembed", dt)] = (sig, u.W_U.detach().to(dt),
                                        b.to(dt) if bool(torch.any(b != 0)) else None)
        return entry[1], entry[2]

    # ------------------------------------------------------------------ names and basics
    def resid_hook(self, boundary: int) -> str:
        L = self.n_layers
        if not 0 <= boundary <= L:
            raise IndexError(f"residual boundary {boundary} outside 0..{L}")
        if boundary == L:
            return f"blocks.{L - 1}.hook_resid_post"
        return f"blocks.{boundary}.hook_resid_pre"

    def attn_hook(self, layer: int) -> str:
        return f"blocks.{layer}.hook_attn_out"

    def mlp_hook(self, layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_out"

    def block_io_hooks(self, layer: int) -> tuple[str, str]:
        """The hooks on block ``layer``'s input ``h_l`` and output ``h_{l+1}`` (inside the block,
        so a change there is a change of that block's contribution)."""
        return f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_post"

    def point_hook(self, kind: str, index: int) -> str:
        """The hook of a patch point: "resid" boundary, or block ``index``'s "attn" / "mlp"."""
        if kind == "resid":
            return self.resid_hook(index)
        if kind == "attn":
            return self.attn_hook(index)
        if kind == "mlp":
            return self.mlp_hook(index)
        raise ValueError(f"no single hook for a {kind!r} point")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def can_resume(self) -> bool:
        """Whether blocks can be run directly from a given residual (HookedTransformer)."""
        return not self.is_bridge

    @property
    def can_run_suffix(self) -> bool:
        """Whether a run may cover only a suffix of positions (keys/values of the prefix cached)."""
        return not self.is_bridge and self.cfg.positional_embedding_type in ("rotary", "standard") \
            and (self.fused or not getattr(self.cfg, "use_local_attn", False))

    @property
    def can_truncate_final(self) -> bool:
        """Whether the last block may run only on the measured positions, the earlier positions'
        keys and values computed by :meth:`keys_values` (plain attention: no QK norm, no
        clipping, no split inputs)."""
        cfg = self.cfg
        if self.fused:
            return self.can_run_suffix
        return (self.can_run_suffix and not getattr(cfg, "use_qk_norm", False)
                and getattr(cfg, "clip_qkv", None) is None
                and not getattr(cfg, "use_attn_in", False)
                and not getattr(cfg, "use_split_qkv_input", False)
                and not getattr(cfg, "load_in_4bit", False)
                and hasattr(self.model.blocks[-1], "ln1"))

    def keys_values(self, layer: int, x: Float[Tensor, "rows pos d_model"]) -> tuple[Tensor, Tensor]:
        """Block ``layer``'s attention keys and values (before rotary, as its cache stores them)
        for the residual ``x`` entering it."""
        policy = self._policy_for(x)
        fb = self._fused_block(layer, policy)
        if fb is not None:
            return run_block(fb, policy, x, stop_after_kv=True)
        block = self.model.blocks[layer]
        with self.compute():
            normed = block.ln1(x)
            _, keys, values = block.attn.calculate_qkv_matrices(normed, normed, normed)
        return keys, values

    def hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]] = (),
              bwd_hooks: Sequence[tuple[str, HookFn]] = ()) -> contextlib.AbstractContextManager:
        """Temporary hooks, removed on exit even after an exception (TransformerLens ``hooks``)."""
        return self.model.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks))

    def to_device(self, tokens: Tensor) -> Tensor:
        return tokens.to(self.device)

    # ------------------------------------------------------------------ clean pass
    def clean(
        self,
        tokens: Int[Tensor, "batch pos"],
        *,
        components: bool = False,
        kv: bool = False,
    ) -> Clean:
        """One forward pass caching ``h_0..h_L`` (and ``a_l``, ``m_l``, keys/values if asked).

        Only the hooks needed are attached: no full activation cache is built. Inside
        :func:`~effective_depth.engine.clean_cache.shared_clean_passes` (a study), a pass already
        computed for the same tokens under the same policy and weights is returned instead,
        unless a hook is attached to the model or keys and values are asked for.
        """
        from .clean_cache import active_cache

        cache = active_cache(self.model)
        if cache is None or kv or self._hooked():
            return self._clean_pass(tokens, components=components, kv=kv)
        key = (*cache.key(tokens, self.policy), self._weights_version())
        hit = None if components else cache.get(key)
        if hit is not None:
            return hit
        clean = self._clean_pass(tokens, components=components, kv=False)
        cache.put(key, clean)
        return clean

    def _hooked(self) -> bool:
        """Whether any hook is attached to the model (its passes are not the clean ones)."""
        return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   for m in self.model.modules())

    def _weights_version(self) -> int:
        """Changes whenever a parameter is written in place (a cached pass is then stale)."""
        return sum(p._version for p in self.model.parameters())

    @torch.no_grad()
    def _clean_pass(self, tokens: Tensor, *, components: bool, kv: bool) -> Clean:
        L = self.n_layers
        tokens = self.to_device(tokens)
        store: dict[str, Tensor] = {}

        def keep(name: str) -> Callable[[Tensor, Any], None]:
            def hook(x: Tensor, hook: Any) -> None:
                store[name] = x.detach()

            return hook

        names = [self.resid_hook(b) for b in range(L + 1)]
        if components:
            names += [self.attn_hook(i) for i in range(L)] + [self.mlp_hook(i) for i in range(L)]
        hooks = [(n, keep(n)) for n in names]
        kv_list: list[tuple[Tensor, Tensor]] | None = None
        with self.hooks(hooks):
            fused = self._fused_forward(tokens, kv)
            if fused is not None:
                kv_list = fused if kv else None
            elif kv:
                if not self.can_run_suffix:
                    raise NotImplementedError("keys/values for suffix runs need a "
                                              "HookedTransformer")
                from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

                kv_cache = TransformerLensKeyValueCache.init_cache(self.cfg, self.device,
                                                                   tokens.shape[0])
                with self.compute():
                    self._forward_tokens(tokens, past_kv_cache=kv_cache,
                                         attention_mask=torch.ones_like(tokens))
                kv_list = [(e.past_keys, e.past_values) for e in kv_cache.entries]
            else:
                with self.compute():
                    self._forward_tokens(tokens)
        dev = store[names[0]].device
        rd = self.policy.resid
        resid = torch.stack([store[self.resid_hook(b)].to(dev, rd) for b in range(L + 1)])
        attn = mlp = None
        if components:
            attn = torch.stack([store[self.attn_hook(i)].to(dev, rd) for i in range(L)])
            mlp = torch.stack([store[self.mlp_hook(i)].to(dev, rd) for i in range(L)])
        return Clean(tokens, resid, attn, mlp, kv_list)

    def _fused_forward(self, tokens: Tensor, kv: bool) -> list[tuple[Tensor, Tensor]] | None:
        """The blocks of a clean pass run fused (the hooks attached fire as in the model's own
        forward); the blocks' keys and values when ``kv``. None when the model must run its own
        forward: blocks not fused, a hook inside a block, or an attention mask from padding."""
        if not self.fused:
            return None
        blocks = [self._fused_block(i) for i in range(self.n_layers)]
        if any(fb is None for fb in blocks):
            return None
        x, _, shortformer, mask = self.model.input_to_embed(tokens, padding_side="right")
        if mask is not None or shortformer is not None:
            return None
        kv_list: list[tuple[Tensor, Tensor]] = []
        for layer, fb in enumerate(blocks):
            x = x.to(self._block_device(layer))
            if kv:
                x, (k, v) = run_block(fb, self.policy, x, want_kv=True)
                kv_list.append((k.contiguous(), v.contiguous()))
            else:
                x = run_block(fb, self.policy, x)
        return kv_list

    def _block_device(self, layer: int) -> torch.device:
        from transformer_lens.utilities.multi_gpu import get_device_for_block_index

        return get_device_for_block_index(layer, self.cfg)

    def _forward_tokens(self, tokens: Tensor, **kwargs: Any) -> Any:
        if self.is_bridge:
            return self.model(tokens, return_type=None)
        # padding_side="right": never derive an attention mask from pad tokens (see batch.py)
        return self.model(tokens, return_type=None, padding_side="right", **kwargs)

    # ------------------------------------------------------------------ resumed runs
    def block(
        self,
        layer: int,
        x: Float[Tensor, "rows pos d_model"],
        prefix_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Float[Tensor, "rows pos d_model"]:
        """Run block ``layer`` on ``x`` (HookedTransformer only).

        With ``prefix_kv`` the rows of ``x`` are the positions after a cached prefix whose keys
        and values are given (``[rows, prefix, kv_heads, d_head]`` each).
        """
        x = x.to(self._block_device(layer))
        policy = self._policy_for(x)
        fb = self._fused_block(layer, policy)
        if fb is not None:
            return run_block(fb, policy, x, prefix_kv)
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

        block = self.model.blocks[layer]
        entry = None
        if prefix_kv is not None:
            keys, values = prefix_kv
            entry = TransformerLensKeyValueCacheEntry(keys.to(self.dtype), values.to(self.dtype),
                                                      frozen=True)
        with self.compute():
            return block(x, past_kv_cache_entry=entry)

    # ------------------------------------------------------------------ lens / output
    def final_norm(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The final norm applied to ``x`` itself: its scale is recomputed from ``x``, never
        taken from the clean run's cache (the trap of TransformerLens issue #1076)."""
        ln = getattr(self.model, "ln_final", None)
        return x if ln is None else ln(x)

    def unembed(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        u = self.model.unembed
        if not self.is_bridge and isinstance(getattr(u, "W_U", None), Tensor):
            # TransformerLens 3.9's Unembed.forward multiplies by ``W_U.T.contiguous()``: a copy
            # of the whole unembedding (544 MiB for Qwen2.5-0.5B in float32) on every call, kept
            # alive for the backward pass under autograd. The same product, with its hook points,
            # on the transposed view (in the policy's matmul dtype) costs nothing extra.
            w, b = self._unembed_weight(self._policy_for(x))
            logits = u.hook_out(torch.nn.functional.linear(
                u.hook_in(x).to(w.dtype), w.T, b))
        else:
            with self.compute():
                logits = u(x)
        cap = getattr(self.cfg, "output_logits_soft_cap", -1.0) or -1.0
        if cap > 0:
            logits = cap * torch.tanh(logits.float() / cap)
        return logits

    def lens_logits(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """``unembed(ln_final(x))``: the logit lens of any residual; of ``h_L`` it is the output."""
        shape = x.shape
        flat = x.reshape(-1, 1, shape[-1]) if x.dim() != 3 else x
        out = self.unembed(self.final_norm(flat))
        return out.reshape(*shape[:-1], out.shape[-1])

    def lens_log_probs(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        return torch.log_softmax(self.lens_logits(x).float(), dim=-1)

    def lens_probs(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        return torch.softmax(self.lens_logits(x).float(), dim=-1)

    @contextlib.contextmanager
    def grad_enabled_inputs(self) -> Iterator[None]:
        """Gradients w.r.t. activations only: parameters stay frozen whatever the caller did."""
        flags = [p.requires_grad for p in self.model.parameters()]
        try:
            for p in self.model.parameters():
                p.requires_grad_(False)
            with torch.enable_grad():
                yield
        finally:
            for p, f in zip(self.model.parameters(), flags):
                p.requires_grad_(f)


def get_adapter(model: Any) -> Adapter:
    """The adapter of ``model`` (an :class:`Adapter` is returned as it is)."""
    if isinstance(model, Adapter):
        return model
    if not hasattr(model, "cfg") or not hasattr(model, "hooks"):
        raise TypeError(
            f"expected a TransformerLens HookedTransformer or TransformerBridge, got "
            f"{type(model).__name__}; load models with effective_depth.load_model"
        )
    return Adapter(model)
