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
4. calls the metric's callbacks: ``on_block(layer, chunk, x_in, x_out)`` after every block
   with the rows that ran it, and ``on_final(chunk, h_L)`` with the final residuals. The
   :class:`Chunk` says which plan and prompt each row is and which absolute positions the columns
   are (a suffix run covers only the later ones), and holds the gradient leaves of a
   ``grad=True`` sweep; plans are never changed.

With the bridge backend (no direct block calls) each resume boundary becomes one full forward
with the residual overwritten at that boundary; the callbacks receive the same values.

The measurements that intervene (skip effects, erasure, integrated gradients, behaviour) run on
:func:`sweep`; contributions and the logit lens need only the clean pass.
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
from .interventions import ResumePlan, patch_hooks

__all__ = ["Chunk", "Row", "sweep", "default_memory_budget", "rows_per_chunk", "chunk_rows"]

log = logging.getLogger(__name__)


@dataclass
class Row:
    """One plan on one prompt (``prompt`` indexes the clean batch); ``key`` names it for the
    callbacks."""

    key: Hashable
    prompt: int
    plan: ResumePlan


@dataclass(frozen=True)
class Chunk:
    """The rows of the residuals a callback receives: row ``i`` is plan ``keys[i]`` on prompt
    ``prompts[i]`` of the clean batch, and column ``j`` is the absolute position
    ``positions[j]`` of the sequence (a run may cover only a suffix). In a ``grad=True`` sweep,
    ``leaves[i]`` is row ``i``'s starting residual (over the same positions), a leaf that
    requires grad."""

    keys: list[Hashable]
    prompts: Tensor
    positions: Tensor
    leaves: tuple[Tensor, ...] = ()

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def start(self) -> int:
        """The first absolute position the residuals cover."""
        return int(self.positions[0]) if len(self.positions) else 0

    def columns(self, positions: Tensor) -> Tensor:
        """The columns of absolute ``positions`` (each must be one the chunk covers)."""
        positions = torch.as_tensor(positions)
        if len(positions) and int(positions.min()) < self.start:
            raise IndexError(f"positions before {self.start} are not in this chunk")
        return positions - self.start

    def take(self, clean: Tensor, rows: Tensor | None = None) -> Tensor:
        """``clean[prompt, position]`` for the chunk's rows (or ``rows`` of them) and columns:
        the clean-pass counterpart of what the callback received (``clean`` is ``[batch, pos,
        ...]``)."""
        prompts = self.prompts if rows is None else self.prompts[rows.to(self.prompts.device)]
        prompts = prompts.to(clean.device)
        return clean[prompts[:, None], self.positions.to(clean.device)[None, :]]

    def head(self, n: int) -> Chunk:
        """The first ``n`` rows."""
        return Chunk(self.keys[:n], self.prompts[:n], self.positions, self.leaves[:n])


OnBlock = Callable[[int, Chunk, Tensor, Tensor], None]
OnFinal = Callable[[Chunk, Tensor], None]


def default_memory_budget(device: torch.device) -> int:
    """Bytes the sweep may use for activations: half the free GPU memory, or 1 GiB on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return 1 << 30


def chunk_rows(*, d_model: int, d_mlp: int, n_heads: int, n_layers: int, itemsize: int,
               positions: int, prefix: int, budget: int, grad: bool) -> int:
    """The memory rule of the sweep, on a model's shape: how many rows of ``positions`` tokens
    (resuming after ``prefix`` cached ones) fit in ``budget`` bytes of activations. The engine
    (:func:`rows_per_chunk`) and the planner (``metrics.costs.Workload``) both call it."""
    per_token = 6 * d_model + 3 * d_mlp + 2 * n_heads * (positions + prefix)
    per_row = per_token * positions * max(itemsize, 4)
    if grad:
        per_row *= 2 * n_layers  # activations kept for the backward pass
    return max(1, budget // max(1, per_row))


def rows_per_chunk(adapter: Adapter, positions: int, prefix: int, budget: int, grad: bool) -> int:
    """How many rows of ``positions`` tokens fit in ``budget`` bytes of activations
    (:func:`chunk_rows` on the adapter's model)."""
    cfg = adapter.cfg
    d_mlp = int(getattr(cfg, "d_mlp", 4 * adapter.d_model) or 4 * adapter.d_model)
    return chunk_rows(d_model=adapter.d_model, d_mlp=d_mlp, n_heads=int(cfg.n_heads),
                      n_layers=adapter.n_layers, itemsize=torch.finfo(adapter.dtype).bits // 8,
                      positions=positions, prefix=prefix, budget=budget, grad=grad)


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
    values are computed from the rows' own residual. ``on_final``'s chunk then starts there.

    ``grad=True`` makes each row's starting residual a leaf that requires grad (``chunk.leaves``);
    ``on_final`` then receives a graph it can differentiate with respect to those leaves.
    ``progress`` is an optional ``tqdm`` bar updated per row.
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
    return x.detach().clone().requires_grad_(True) if grad else x


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
    L, width = adapter.n_layers, int(clean.tokens.shape[1])
    patches = [(p, i) for i, r in enumerate(chunk) for p in r.plan.patches]
    if final_from is not None and (final_from <= offset or any(p.index >= L - 1 for p, _ in patches)):
        final_from = None  # nothing to save, or a patch inside the last block needs every position
    starts = [r.plan.start for r in chunk]
    device = clean.resid.device
    prompts = torch.tensor([r.prompt for r in chunk], device=device)
    starting = [_start_resid(r, offset, grad) for r in chunk]
    info = Chunk([r.key for r in chunk], prompts, torch.arange(offset, width, device=device),
                 tuple(starting) if grad else ())
    x: Tensor | None = None
    n_active = 0
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx, adapter.hooks(patch_hooks(adapter, patches, offset)):
        for layer in range(min(starts), L):
            joining = [i for i in range(n_active, len(chunk)) if starts[i] == layer]
            if joining:
                new = torch.stack([starting[i] for i in joining])
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
                info = Chunk(info.keys, prompts, torch.arange(final_from, width, device=device),
                             info.leaves)
                break
            x_out = adapter.block(layer, x, prefix_kv)
            if on_block is not None:
                on_block(layer, info.head(n_active), x, x_out)
            x = x_out
        # rows that start at the final residual (local skips, erasure at boundary L) join here;
        # their plans hold no patches (everything at boundary L is folded into the residual)
        late = list(range(n_active, len(chunk)))
        if late:
            new = torch.stack([starting[i] for i in late])
            x = new if x is None else torch.cat([x, new.to(x.device)], dim=0)
        assert x is not None
        if on_final is not None:
            on_final(info, x)


def _bridge_chunk(
    adapter: Adapter,
    clean: Clean,
    chunk: list[Row],
    on_block: OnBlock | None,
    on_final: OnFinal | None,
    grad: bool,
) -> None:
    """Fallback without direct block calls: one full forward per resume boundary."""
    L, width = adapter.n_layers, int(clean.tokens.shape[1])
    device = clean.resid.device
    by_start: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(chunk):
        by_start[r.plan.start].append(i)
    ctx = torch.enable_grad() if grad else torch.no_grad()
    for start, idx in sorted(by_start.items()):
        sub = [chunk[i] for i in idx]
        starting = [_start_resid(r, 0, grad) for r in sub]
        info = Chunk([r.key for r in sub], torch.tensor([r.prompt for r in sub], device=device),
                     torch.arange(width, device=device), tuple(starting) if grad else ())
        x0 = torch.stack(starting)
        if start == L:
            if on_final is not None:
                with ctx:
                    on_final(info, x0)
            continue
        taps: dict[int, Tensor] = {}

        def tap(b: int, taps: dict[int, Tensor] = taps) -> HookFn:
            def hook(act: Tensor, hook: Any) -> None:
                taps[b] = act

            return hook

        def setter(act: Tensor, hook: Any, x0: Tensor = x0) -> Tensor:
            return x0.to(act.dtype).to(act.device)

        hooks = [(adapter.resid_hook(start), setter)]
        hooks += patch_hooks(adapter, [(p, j) for j, r in enumerate(sub) for p in r.plan.patches])
        hooks += [(adapter.resid_hook(b), tap(b)) for b in range(start, L + 1)]
        with ctx, adapter.hooks(hooks), adapter.compute():
            adapter.model(adapter.to_device(clean.tokens[info.prompts]), return_type=None)
            if on_block is not None:
                for layer in range(start, L):
                    on_block(layer, info, taps[layer], taps[layer + 1])
            if on_final is not None:
                on_final(info, taps[L])
