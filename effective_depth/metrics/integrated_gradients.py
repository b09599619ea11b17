"""Integrated gradients over the residual stream (docs/methods.md §5; Csordás et al. 2025).

Which (layer, token) residuals does the answer depend on? For each block ``l`` take its output
``x = h_{l+1}`` and the baseline ``x̄`` = the mean of ``x`` over this prompt's positions (per
feature). The target is the sum of the teacher-forced probabilities of the answer tokens. The
path integral is computed by a quadrature rule with nodes ``α_k`` and weights ``w_k`` on [0, 1]
(:mod:`.quadrature`; ``riemann_left`` with ``α_k = k/N``, ``w_k = 1/N`` is the reference
implementation's scheme, reproduced bit for bit),

    attribution[l, t] = Σ_features (x − x̄)[t] · Σ_k w_k ∂target/∂x[t] |_{x̄ + α_k (x − x̄)}

The interpolations are created *at* block ``l``: every row of the sweep starts from the cached
residual ``h_{l+1}`` and runs only blocks ``l+1..L−1``, so the blocks below run once (in the clean
pass); the output distribution is computed only at the answer-predicting positions, and gradients
are taken with respect to activations only (parameters stay frozen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..costs import MeasurementCost, Workload
from ..engine.adapter import get_adapter
from ..engine.batch import Batch, BatchLike, as_batch
from ..engine.interventions import Plan
from ..engine.sweep import Chunk, Row, sweep
from ..errors import ConfigError
from ..progress import tqdm
from ..registry import MetricSpec, register_metric
from .base import TokenMaps
from .quadrature import quadrature

__all__ = ["IntegratedGradients", "integrated_gradients", "DEFAULT_RULE", "DEFAULT_STEPS"]

#: the default rule and node count: no cheaper rule reaches left-Riemann-256's accuracy on the
#: trained zoo models (measured: docs/methods.md, benchmarks/ig_accuracy.py)
DEFAULT_RULE = "riemann_left"
DEFAULT_STEPS = 256


@dataclass
class IntegratedGradients(TokenMaps):
    """One ``[L, T_b]`` attribution map per example, its token strings, and the target value
    (summed answer probability) of each example."""

    name: ClassVar[str] = "integrated_gradients"
    targets: Float[Tensor, " prompt"]

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.targets) != len(self.maps):
            raise ValueError("one target per example")

    @property
    def n_layers(self) -> int:
        return int(self.maps[0].shape[0]) if self.maps else 0

    def curves(self) -> dict[str, Any]:
        return {**super().curves(), "target": self.targets.tolist()}

    def tensors(self) -> dict[str, Tensor]:
        return {**super().tensors(), "targets": self.targets}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict[str, Any],
                     str_tokens: list[list[str]]) -> IntegratedGradients:
        return cls(cls.maps_from(tensors, str_tokens), str_tokens, tensors["targets"], meta=meta)


def integrated_gradients(
    model: Any,
    batch: BatchLike,
    *,
    n_steps: int = DEFAULT_STEPS,
    rule: str = DEFAULT_RULE,
    memory_budget: int | None = None,
    max_rows: int | None = None,
    progress: bool = False,
) -> IntegratedGradients:
    """Integrated-gradient attribution of the answer probability to every (block output, token),
    the path integral taken by ``rule`` with ``n_steps`` nodes (gradient evaluations)."""
    batch = as_batch(model, batch, what="integrated_gradients")
    batch.require_answers("integrated gradients")
    alphas, weights = quadrature(rule, n_steps)
    adapter = get_adapter(model)
    L = adapter.n_layers
    maps, targets = [], []
    bar = tqdm(total=batch.size * L * n_steps, desc="integrated gradients", disable=not progress)
    for b in range(batch.size):
        sub = batch.select([b])
        m, target = _one_example(adapter, sub, alphas, weights, memory_budget, max_rows, bar)
        maps.append(m)
        targets.append(target)
    bar.close()
    meta = {"n_prompts": batch.size, "n_layers": L, "n_steps": n_steps, "rule": rule,
            "baseline": "mean over positions"}
    return IntegratedGradients(maps, [list(s) for s in batch.str_tokens], torch.tensor(targets), meta=meta)


def answer_probability(adapter: Any, h: Tensor, ids: Tensor, chunk: int = 256) -> Tensor:
    """``Σ_i p_lens(h_i)[ids_i]``, differentiable in ``h``, ``chunk`` rows at a time. Under
    autograd each chunk is checkpointed (recomputed in the backward pass), so the graph never
    holds more than one ``chunk × vocab`` block of log-probabilities."""

    def part(x: Tensor, y: Tensor) -> Tensor:
        return adapter.lens_log_probs(x).gather(-1, y[:, None]).exp().sum()

    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk):
        x, y = h[i : i + chunk], ids[i : i + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(part, x, y, use_reentrant=False)
        else:
            total = total + part(x, y)
    return total


def _one_example(adapter: Any, sub: Batch, alphas: tuple[float, ...], weights: tuple[float, ...],
                 memory_budget: int | None, max_rows: int | None, bar: Any) -> tuple[Tensor, float]:
    L = adapter.n_layers
    n = int(sub.lengths[0])
    clean = adapter.clean(sub.tokens[:, :n])
    device = clean.resid.device
    pred = torch.tensor(sub.answer_predicting_positions(0), device=device)
    if len(pred) == 0:
        raise ConfigError("integrated gradients need an answer (the example's answer is empty)")
    answer_ids = sub.tokens[0, pred + 1].to(device)
    acc = torch.zeros(L, n, dtype=torch.float32, device=device)
    rows: list[Row] = []
    diffs: dict[int, Tensor] = {}
    for layer in range(L):
        x = clean.resid[layer + 1, 0].float()
        base = x.mean(0, keepdim=True)
        diffs[layer] = x - base
        for k, alpha in enumerate(alphas):
            start = (base + alpha * (x - base)).to(clean.resid.dtype)
            rows.append(Row((layer, k), 0, Plan(layer + 1, start, first_pos=0)))
    # equal weights: sum, then divide by the count (the reference implementation's arithmetic)
    uniform = len(set(weights)) == 1

    def on_final(chunk: Chunk, h_final: Tensor) -> None:
        h = h_final[:, chunk.columns(pred)]  # [rows, answer, d_model]
        ids = answer_ids[None, :].expand(len(chunk), -1)
        target = answer_probability(adapter, h.reshape(-1, h.shape[-1]), ids.reshape(-1))
        grads = torch.autograd.grad(target, chunk.leaves)
        for key, g in zip(chunk.keys, grads):
            layer = key[0]
            term = (g.float() * diffs[layer]).sum(-1)
            acc[layer] += term if uniform else weights[key[1]] * term
        bar.update(len(chunk))

    with adapter.grad_enabled_inputs():
        sweep(adapter, clean, rows, on_final=on_final, grad=True, suffix=False,
              memory_budget=memory_budget, max_rows=max_rows, final_from=int(pred.min()))
    with torch.no_grad():
        p = adapter.lens_log_probs(clean.resid[-1, 0, pred])
        target = float(p.gather(-1, answer_ids[:, None]).exp().sum())
    return (acc / len(alphas) if uniform else acc).cpu(), target


def _run(ctx: Any) -> IntegratedGradients:
    sub = ctx.map_batch()
    return integrated_gradients(ctx.model, sub, n_steps=ctx.config.ig_steps,
                                rule=ctx.config.ig_rule, progress=ctx.progress)


def _cost(w: Workload) -> MeasurementCost:
    """A clean pass per mapped prompt; ``n_steps`` rows per block ``l`` run blocks ``l+1..L-1`` on
    every position forward and backward (an upper bound: where the engine runs the last block
    only on the answer-predicting positions the count is a few percent lower)."""
    L, steps = w.L, w.config.ig_steps
    m = MeasurementCost("integrated_gradients", sweeps=True)
    for b in w.first(w.config.map_examples):
        T = int(w.lengths[b])
        m.block_tokens += L * T
        m.grad_block_tokens += steps * L * (L - 1) // 2 * T
        m.lens_rows += 3 * steps * L * w.answer_tokens(b)
    return m


register_metric(MetricSpec(
    name=IntegratedGradients.name,
    cost=_cost,
    result_type=IntegratedGradients,
    order=60,
    description="integrated-gradient maps of the answer probability over every block output",
    run=_run,
    needs_answers=True,
))
