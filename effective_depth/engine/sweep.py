"""The sweep engine: many interventions from one clean pass, resumed, batched and chunked.

A *row* is one intervention plan applied to one prompt. The engine

1. groups rows by the first position they change (``first_pos``): by causality every position
   before it is unchanged at every layer, so with a HookedTransformer the group runs only the
   suffix of positions, reading the prefix's keys and values from the clean pass;
2. sorts each group by resume boundary and cuts it into chunks that fit a memory budget;
3. runs each chunk as a *staircase*: the run starts at the smallest resume boundary, and a row
   joins the running batch at the block where its plan starts (its residual built from the clean
   cache), so blocks below a row's intervention never run for it, and rows that resume at
   different depths still share every matrix multiply above;
4. calls the metric's callbacks: ``on_block(layer, keys, x_in, x_out, offset)`` after every block
   with the rows that ran it, and ``on_final(keys, h_L, offset)`` with the final residuals.

With the bridge backend (no direct block calls) each resume boundary becomes one full forward
with the residual overwritten at that boundary; the callbacks receive the same values.

Every metric in :mod:`effective_depth.metrics` is a thin use of :func:`sweep`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .adapter import Adapter, Clean, HookFn
from .interventions import Patch, Plan, _where

__all__ = ["Row", "sweep", "default_memory_budget", "rows_per_chunk"]

log = logging.getLogger(__name__)

OnBlock = Callable[[int, list[Hashable], Tensor, Tensor, int], None]
OnFinal = Callable[[list[Hashable], Tensor, int], None]


@dataclass
class Row:
    """One plan on one prompt (``prompt`` indexes the clean batch); ``key`` names it for the
    callbacks."""

    key: Hashable
    prompt: int
    plan: Plan


def default_memory_budget(device: torch.device) -> int:
    """Bytes the sweep may use for activations: half the free GPU memory, or 1 GiB on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return 1 << 30


def rows_per_chunk(adapter: Adapter, positions: int, prefix: int, budget: int, grad: bool) -> int:
    """How many rows of ``positions`` tokens fit in ``budget`` bytes of activations."""
    cfg = adapter.cfg
    d_mlp = int(getattr(cfg, "d_mlp", 4 * adapter.d_model) or 4 * adapter.d_model)
    heads = int(cfg.n_heads)
    itemsize = torch.finfo(adapter.dtype).bits // 8
    per_token = 6 * adapter.d_model + 3 * d_mlp + 2 * heads * (positions + prefix)
    per_row = per_token * positions * max(itemsize, 4)
    if grad:
        per_row *= 2 * adapter.n_layers  # activations kept for the backward pass
    return max(1, budget // max(1, per_row))


def _patch_hooks(
    adapter: Adapter, patches: list[tuple[int, Patch]], offset: int
) -> list[tuple[str, HookFn]]:
    """Hooks applying each ``(row, patch)`` to its row of the running batch."""
    by_point: dict[tuple[str, int], list[tuple[int, Patch]]] = defaultdict(list)
    for row, p in patches:
        by_point[(p.kind, p.index)].append((row, p))
    hooks: list[tuple[str, HookFn]] = []
    for (kind, index), items in by_point.items():
        if kind == "block":
            hooks += _block_patch_hooks(adapter, index, items, offset)
            continue
        name = {"attn": adapter.attn_hook, "mlp": adapter.mlp_hook, "resid": adapter.resid_hook}[kind](index)
        hooks.append((name, _replace_rows(items, offset)))
    return hooks


def _slice_value(value: Tensor | None, offset: int, like: Tensor) -> Tensor:
    if value is None:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    if value.dim() >= 2:
        return value[offset:].to(like.dtype).to(like.device)
    return value.to(like.dtype).to(like.device)


def _replace_rows(items: list[tuple[int, Patch]], offset: int) -> HookFn:
    def hook(x: Tensor, hook: Any) -> Tensor:
        x = x.clone()
        for row, p in items:
            if row >= x.shape[0]:
                continue  # the row joins at a later block
            new = _slice_value(p.value, offset, x).expand_as(x[row])
            x[row] = _where(p.mask[offset:], new, x[row])
        return x

    return hook


def _block_patch_hooks(
    adapter: Adapter, layer: int, items: list[tuple[int, Patch]], offset: int
) -> list[tuple[str, HookFn]]:
    seen: dict[str, Tensor] = {}

    def grab(x: Tensor, hook: Any) -> None:
        seen["in"] = x

    def put(x: Tensor, hook: Any) -> Tensor:
        x = x.clone()
        for row, p in items:
            if row >= x.shape[0]:
                continue
            new = seen["in"][row] + _slice_value(p.value, offset, x)
            x[row] = _where(p.mask[offset:], new, x[row])
        return x

    return [(adapter.resid_hook(layer), grab), (f"blocks.{layer}.hook_resid_post", put)]


def sweep(
    adapter: Adapter,
    clean: Clean,
    rows: Sequence[Row],
    *,
    on_block: OnBlock | None = None,
    on_final: OnFinal | None = None,
    suffix: bool = True,
    memory_budget: int | None = None,
    max_rows: int | None = None,
    grad: bool = False,
    final_from: int | None = None,
    progress: Any = None,
) -> None:
    """Run every row's plan; see the module docstring for what is computed and when.

    ``final_from``: ``on_final`` only reads positions ``>= final_from``, so (HookedTransformer,
    no ``on_block``) the last block runs only on those positions; the earlier positions' keys and
    values are computed from the rows' own residual. ``on_final`` then receives that offset.

    ``grad=True`` makes each row's starting residual a leaf that requires grad (kept as
    ``row.plan.resid_leaf``); ``on_final`` then receives a graph it can differentiate with respect
    to those leaves. ``progress`` is an optional ``tqdm`` bar updated per row.
    """
    if not rows:
        return
    width = int(clean.tokens.shape[1])
    use_suffix = suffix and adapter.can_run_suffix and clean.kv is not None and not grad
    budget = memory_budget or default_memory_budget(adapter.device)
    groups: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        offset = min(r.plan.first_pos, width - 1) if use_suffix else 0
        groups[offset].append(r)
    for offset in sorted(groups):
        group = sorted(groups[offset], key=lambda r: r.plan.start)
        n = rows_per_chunk(adapter, width - offset, offset, budget, grad)
        if max_rows is not None:
            n = min(n, max_rows)
        for i in range(0, len(group), n):
            chunk = group[i : i + n]
            if adapter.can_resume:
                truncate = (final_from if on_block is None and adapter.can_truncate_final
                            else None)
                _staircase(adapter, clean, chunk, offset, use_suffix, on_block, on_final, grad,
                           truncate)
            else:
                _bridge_chunk(adapter, clean, chunk, on_block, on_final, grad)
            if progress is not None:
                progress.update(len(chunk))


def _start_resid(row: Row, offset: int, grad: bool) -> Tensor:
    x = row.plan.resid[offset:]
    if grad:
        x = x.detach().clone().requires_grad_(True)
        row.plan.resid_leaf = x
    return x


def _staircase(
    adapter: Adapter,
    clean: Clean,
    chunk: list[Row],
    offset: int,
    use_suffix: bool,
    on_block: OnBlock | None,
    on_final: OnFinal | None,
    grad: bool,
    final_from: int | None = None,
) -> None:
    L = adapter.n_layers
    patches = [(i, p) for i, r in enumerate(chunk) for p in r.plan.patches]
    if final_from is not None and (final_from <= offset or any(
            p.index == L - 1 or (p.kind == "resid" and p.index == L) for _, p in patches)):
        final_from = None  # nothing to save, or a patch inside the last block needs every position
    starts = [r.plan.start for r in chunk]
    keys = [r.key for r in chunk]
    prompts = torch.tensor([r.prompt for r in chunk], device=clean.resid.device)
    x: Tensor | None = None
    n_active = 0
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx, adapter.hooks(_patch_hooks(adapter, patches, offset)):
        for layer in range(min(starts), L):
            joining = [i for i in range(n_active, len(chunk)) if starts[i] == layer]
            if joining:
                new = torch.stack([_start_resid(chunk[i], offset, grad) for i in joining])
                x = new if x is None else torch.cat([x, new.to(x.device)], dim=0)
                n_active += len(joining)
            assert x is not None
            prefix_kv = None
            if use_suffix and offset > 0:
                assert clean.kv is not None
                keys_l, values_l = clean.kv[layer]
                sel = prompts[:n_active].to(keys_l.device)
                prefix_kv = (keys_l[sel, :offset], values_l[sel, :offset])
            if final_from is not None and layer == L - 1 and n_active == len(chunk):
                # the last block: only the positions on_final reads; the others' keys and values
                cut = final_from - offset
                k_new, v_new = adapter.keys_values(layer, x[:, :cut])
                if prefix_kv is not None:
                    k_new = torch.cat([prefix_kv[0].to(k_new.device, k_new.dtype), k_new], dim=1)
                    v_new = torch.cat([prefix_kv[1].to(v_new.device, v_new.dtype), v_new], dim=1)
                x = adapter.block(layer, x[:, cut:], (k_new, v_new))
                offset = final_from
                break
            x_out = adapter.block(layer, x, prefix_kv)
            if on_block is not None:
                on_block(layer, keys[:n_active], x, x_out, offset)
            x = x_out
        # rows that start at the final residual (local skips, erasure at boundary L) join here
        late = list(range(n_active, len(chunk)))
        if late:
            new = torch.stack([_start_resid(chunk[i], offset, grad) for i in late])
            new = _apply_final_resid_patches(adapter, new, [(j, p) for j, p in patches if j in late],
                                             n_active, offset)
            x = new if x is None else torch.cat([x, new.to(x.device)], dim=0)
        assert x is not None
        if on_final is not None:
            on_final(keys, x, offset)


def _apply_final_resid_patches(adapter: Adapter, x: Tensor, patches: list[tuple[int, Patch]],
                               first_row: int, offset: int) -> Tensor:
    # hooks on the final residual only fire when the last block runs; apply them by hand here
    L = adapter.n_layers
    for row, p in patches:
        if p.kind == "resid" and p.index == L:
            i = row - first_row
            x = x.clone()
            x[i] = _where(p.mask[offset:], _slice_value(p.value, offset, x).expand_as(x[i]), x[i])
    return x


def _bridge_chunk(
    adapter: Adapter,
    clean: Clean,
    chunk: list[Row],
    on_block: OnBlock | None,
    on_final: OnFinal | None,
    grad: bool,
) -> None:
    """Fallback without direct block calls: one full forward per resume boundary."""
    L = adapter.n_layers
    by_start: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(chunk):
        by_start[r.plan.start].append(i)
    ctx = torch.enable_grad() if grad else torch.no_grad()
    for start, idx in sorted(by_start.items()):
        sub = [chunk[i] for i in idx]
        keys = [r.key for r in sub]
        tokens = clean.tokens[[r.prompt for r in sub]]
        x0 = torch.stack([_start_resid(r, 0, grad) for r in sub])
        patches = [(j, p) for j, r in enumerate(sub) for p in r.plan.patches]
        if start == L:
            x = _apply_final_resid_patches(adapter, x0, patches, 0, 0)
            if on_final is not None:
                with ctx:
                    on_final(keys, x, 0)
            continue
        taps: dict[int, Tensor] = {}

        def tap(b: int, taps: dict[int, Tensor] = taps) -> HookFn:
            def hook(act: Tensor, hook: Any) -> None:
                taps[b] = act

            return hook

        def setter(act: Tensor, hook: Any, x0: Tensor = x0) -> Tensor:
            return x0.to(act.dtype).to(act.device)

        hooks = [(adapter.resid_hook(start), setter)]
        hooks += _patch_hooks(adapter, patches, 0)
        hooks += [(adapter.resid_hook(b), tap(b)) for b in range(start, L + 1)]
        with ctx, adapter.hooks(hooks):
            adapter.model(adapter.to_device(tokens), return_type=None)
            if on_block is not None:
                for layer in range(start, L):
                    on_block(layer, keys, taps[layer], taps[layer + 1], 0)
            if on_final is not None:
                on_final(keys, taps[L], 0)
