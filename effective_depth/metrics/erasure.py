"""Residual erasure (docs/methods.md §4; Csordás et al. 2025, "token skip").

Where, in depth and in position, is the information the answer needs? For every residual
boundary ``l`` (0..L) and position ``t``, overwrite ``h_l[t]`` with the mean residual ``μ_l``
(the mean of ``h_l`` over all tokens of a set of reference prompts), run the rest of the model,
and record the largest change ``‖p' − p‖₂`` among the distributions that predict the answer
tokens. The output is an ``(L+1) × T`` map per example, with the token strings as column labels.

By causality an erasure at position ``t`` changes nothing before ``t``, so each variant runs only
positions ``≥ t`` (the prefix's keys and values come from the clean pass) and only the blocks from
``l`` on. Erasures after the last answer-predicting position cannot change the answer and are
exactly 0 without running anything. The first ``skip_front`` positions are never erased (NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from ..engine.adapter import Adapter, get_adapter
from ..engine.batch import Batch, BatchLike, as_batch
from ..engine.interventions import ReplaceResidual, compile_plan
from ..engine.sweep import Chunk, Row, sweep
from ..errors import ConfigError
from ..progress import tqdm
from .base import CleanLensProbs, TokenMaps, check_skip_front, lens_prob_distance, prompt_chunks
from .costs import MeasurementCost, Workload
from .options import MetricOptions
from .registry import MetricSpec, register_metric

__all__ = ["Erasure", "erasure", "mean_residuals"]


@dataclass
class Erasure(TokenMaps):
    """One ``[L+1, T_b]`` map per example (``maps[b]``), its token strings, and the mean
    residuals ``μ_l`` that were written in."""

    name: ClassVar[str] = "erasure"
    mean_resid: Float[Tensor, "boundary d_model"]

    @property
    def n_layers(self) -> int:
        return int(self.mean_resid.shape[0]) - 1

    def tensors(self) -> dict[str, Tensor]:
        return {**super().tensors(), "mean_resid": self.mean_resid}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict[str, Any],
                     str_tokens: list[list[str]]) -> Erasure:
        return cls(cls.maps_from(tensors, str_tokens), str_tokens, tensors["mean_resid"], meta=meta)


@torch.no_grad()
def mean_residuals(model: Any, reference: Batch, batch_size: int = 8) -> Float[Tensor, "boundary d_model"]:
    """``μ_l``: the mean of ``h_l`` over all (non-padding) tokens of the reference prompts."""
    adapter = get_adapter(model)
    total = torch.zeros(adapter.n_layers + 1, adapter.d_model, dtype=torch.float64)
    count = 0
    for _, sub in prompt_chunks(reference, batch_size):
        clean = adapter.clean(sub.tokens)
        pos = torch.arange(sub.width)[None, :] < sub.lengths[:, None]
        pos = pos.to(clean.resid.device)
        total += (clean.resid.double() * pos[None, :, :, None]).sum((1, 2)).cpu()
        count += int(pos.sum())
    return (total / max(count, 1)).float()


def erasure(
    model: Any,
    batch: BatchLike,
    *,
    reference: Batch | None = None,
    mean_resid: Tensor | None = None,
    skip_front: int = 1,
    batch_size: int = 4,
    memory_budget: int | None = None,
    suffix: bool = True,
    progress: bool = False,
) -> Erasure:
    """The erasure map of every example in ``batch`` (the answer is each example's answer span).

    The mean residuals come from ``mean_resid`` or are computed from ``reference``; one of the
    two is required. (Csordás et al.'s scripts take the mean over 10 GSM8K prompts whatever the
    task; a study uses ``n_reference`` further examples of the analysed task.)
    """
    batch = as_batch(model, batch, what="erasure")
    check_skip_front(skip_front)
    batch.require_answers("residual erasure")
    adapter = get_adapter(model)
    if mean_resid is None:
        if reference is None:
            raise ConfigError("erasure needs reference prompts or mean residuals")
        mean_resid = mean_residuals(adapter, reference)
    L = adapter.n_layers
    if tuple(mean_resid.shape) != (L + 1, adapter.d_model):
        raise ConfigError(f"mean residuals must be [{L + 1}, {adapter.d_model}], got {tuple(mean_resid.shape)}")
    maps: list[Tensor] = [torch.zeros(0)] * batch.size
    # positions before skip_front are never erased, so they are not counted either
    total = sum((L + 1) * max(0, int(n) - skip_front) for n in batch.lengths)
    bar = tqdm(total=total, desc="residual erasure", disable=not progress)
    for rows, sub in prompt_chunks(batch, batch_size):
        for j, m in _erasure_chunk(adapter, sub, mean_resid, skip_front, memory_budget, suffix, bar):
            maps[rows[j]] = m
    bar.close()
    meta = {"n_prompts": batch.size, "n_layers": L, "skip_front": skip_front,
            "n_reference": None if reference is None else reference.size}
    return Erasure(maps, [list(s) for s in batch.str_tokens], mean_resid.float().cpu(), meta=meta)


def _erasure_chunk(
    adapter: Adapter,
    sub: Batch,
    mean_resid: Tensor,
    skip_front: int,
    memory_budget: int | None,
    suffix: bool,
    bar: Any,
) -> list[tuple[int, Tensor]]:
    L = adapter.n_layers
    clean = adapter.clean(sub.tokens, kv=suffix and adapter.can_run_suffix)
    device = clean.resid.device
    mu = mean_resid.to(device=device, dtype=clean.resid.dtype)
    maps = []
    rows: list[Row] = []
    predicting: dict[int, Tensor] = {}
    for j in range(sub.size):
        n = int(sub.lengths[j])
        m = torch.zeros(L + 1, n)
        m[:, :skip_front] = float("nan")
        maps.append(m)
        pred = torch.tensor(sub.answer_predicting_positions(j), dtype=torch.long)
        predicting[j] = pred
        last = int(pred.max()) if len(pred) else -1
        for t in range(skip_front, n):
            if t > last:
                bar.update(L + 1)  # cannot reach an answer-predicting position: exactly 0
                continue
            for boundary in range(L + 1):
                spec = ReplaceResidual(boundary, mu[boundary], positions=[t])
                rows.append(Row((j, boundary, t), j, compile_plan([spec], adapter, clean, j)))

    clean_probs = CleanLensProbs(adapter, clean.resid[-1])

    def on_final(chunk: Chunk, h_final: Tensor) -> None:
        sel_row, sel_prompt, sel_pos = [], [], []
        for r, (j, _boundary, t) in enumerate(chunk.keys):
            pred = predicting[j]
            pred = pred[pred >= max(t, chunk.start)]  # earlier positions are unchanged
            sel_row += [r] * len(pred)
            sel_prompt += [j] * len(pred)
            sel_pos += pred.tolist()
        if not sel_row:
            return
        r_idx = torch.tensor(sel_row, device=h_final.device)
        p_idx = torch.tensor(sel_prompt, device=device)
        t_idx = torch.tensor(sel_pos, device=device)
        ref = clean_probs.at(p_idx, t_idx)
        dist = lens_prob_distance(adapter, h_final[r_idx, chunk.columns(t_idx).to(h_final.device)], ref)
        best = torch.zeros(len(chunk), device=dist.device).scatter_reduce(
            0, r_idx, dist, reduce="amax", include_self=True
        ).cpu()
        for r, (j, boundary, t) in enumerate(chunk.keys):
            maps[j][boundary, t] = float(best[r])

    first_pred = min((int(p.min()) for p in predicting.values() if len(p)), default=None)
    sweep(adapter, clean, rows, on_final=on_final, suffix=suffix, memory_budget=memory_budget,
          final_from=first_pred, progress=bar)
    return list(enumerate(maps))


@dataclass(frozen=True)
class ErasureOptions(MetricOptions):
    """Residual erasure's options (``--set erasure.n_reference=20``); docs/methods.md §4."""

    n_reference: int = field(default=10, metadata={
        "help": "further examples of the task whose mean residual replaces the erased one"})
    map_examples: int = field(default=3, metadata={
        "help": "examples that get a map (the first ones analysed)"})

    def validate(self) -> None:
        self.require_positive("n_reference", "map_examples")


def reference_examples(task: Any, examples: Sequence[Any], config: Any
                       ) -> tuple[list[Any], dict[str, Any], list[str]]:
    """The reference prompts: ``n_reference`` further examples of the task; fewer (or the
    analysed ones) only with a warning, and what was used is recorded."""
    n, want = len(examples), config.options[Erasure.name].n_reference
    further = list(task.examples(n + want))[n:]
    if len(further) >= want:
        return further[:want], {"source": "task", "n": want,
                                "description": f"examples {n + 1}..{n + want} of the task"}, []
    if further:
        message = (f"erasure reference: the task supplies only {len(further)} examples beyond the "
                   f"{n} analysed (n_reference={want}); the mean residual uses those "
                   f"{len(further)}")
        info = {"source": "task", "n": len(further),
                "description": f"examples {n + 1}..{n + len(further)} of the task"}
        return further, info, [message]
    used = list(examples[:want])
    message = (f"erasure reference: the task supplies no examples beyond the {n} analysed; "
               f"the mean residual uses the first {len(used)} analysed prompts themselves. "
               "Lower n_examples to keep reference and analysed prompts apart")
    info = {"source": "analysed", "n": len(used),
            "description": f"analysed examples 1..{len(used)}"}
    return used, info, [message]


def _run(ctx: Any) -> Erasure:
    sub = ctx.map_batch()
    result = erasure(ctx.model, sub, reference=ctx.reference,
                              skip_front=ctx.config.skip_front, progress=ctx.progress)
    result.meta["reference"] = None if ctx.reference_info is None else dict(ctx.reference_info)
    return result


def _cost(w: Workload) -> MeasurementCost:
    """Clean passes of the mapped and the reference prompts; then for every position ``t`` up to
    the last answer-predicting one and every boundary ``l``, blocks ``l..L-1`` on the positions
    from ``t`` on (rows erased at the final residual share their chunk, so the last block runs
    every position from ``t``), and a lens row per answer-predicting position after ``t``, plus
    one per clean answer-predicting position (unembedded once: :class:`~.base.CleanLensProbs`)."""
    L, sf, opts = w.L, w.config.skip_front, w.options(Erasure.name)
    idx = w.first(opts.map_examples)
    ref = w.first(min(opts.n_reference, len(w.lengths)))
    m = MeasurementCost("erasure", block_tokens=w.clean(idx) + w.clean(ref), sweeps=True,
                        block_calls=w.clean_calls(idx) + w.clean_calls(ref))
    for c in w.chunks(w.config.batch_size, idx):
        width = w.width(c)
        groups: dict[int, list[int]] = {}
        for b in c:
            n, start = int(w.lengths[b]), int(w.answer_starts[b])
            for t in range(sf, n - 1):
                m.block_tokens += sum(L - bd for bd in range(L + 1)) * (width - t)
                m.lens_rows += (L + 1) * (n - 1 - max(t, start - 1))
                groups.setdefault(t, []).extend(range(L + 1))
            m.lens_rows += max(n - start, 0)
        # one sweep group per erased position: short suffix rows, many block calls
        for t, starts in groups.items():
            m.block_calls += w.sweep_calls(starts, width - t, t)
    return m


register_metric(MetricSpec(
    name=Erasure.name,
    cost=_cost,
    result_type=Erasure,
    options=ErasureOptions,
    description="residual erasure maps of the first map_examples examples",
    run=_run,
    needs_answers=True,
    reference=reference_examples,
))
