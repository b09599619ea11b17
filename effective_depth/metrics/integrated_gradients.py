"""Integrated gradients over the residual stream (docs/methods.md §5; Csordás et al. 2025).

Which (layer, token) residuals does the answer depend on? For each block ``l`` take its output
``x = h_{l+1}`` and the baseline ``x̄`` = the mean of ``x`` over this prompt's positions (per
feature). The target is the sum of the teacher-forced probabilities of the answer tokens. The
path integral is computed by a quadrature rule with nodes ``α_k`` and weights ``w_k`` on [0, 1]
(:mod:`.quadrature`; ``riemann_left`` with ``α_k = k/N``, ``w_k = 1/N`` is the reference
implementation's scheme, reproduced bit for bit; the default ``adaptive`` chooses the nodes per
(example, block) where the integrand is sharp, :mod:`.adaptive_quadrature`),

    attribution[l, t] = Σ_features (x − x̄)[t] · Σ_k w_k ∂target/∂x[t] |_{x̄ + α_k (x − x̄)}

The interpolations are created *at* block ``l``: every row of the sweep starts from the cached
residual ``h_{l+1}`` and runs only blocks ``l+1..L−1``, so the blocks below run once (in the clean
pass); the output distribution is computed only at the answer-predicting positions, and gradients
are taken with respect to activations only (parameters stay frozen).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..engine.adapter import get_adapter
from ..engine.batch import Batch, BatchLike, as_batch
from ..engine.interventions import ResumePlan
from ..engine.sweep import Chunk, Row, sweep
from ..errors import ConfigError
from ..progress import tqdm
from .adaptive_quadrature import ADAPTIVE_TOL, adaptive_quadrature, coarse_nodes
from .base import TokenMaps
from .costs import MeasurementCost, Workload
from .options import MetricOptions
from .quadrature import ADAPTIVE, RULES, check_rule, quadrature
from .registry import MetricSpec, register_metric

__all__ = ["IntegratedGradients", "integrated_gradients", "DEFAULT_RULE", "DEFAULT_STEPS", "GAP_TOL"]

#: the default rule and its budget: adaptive quadrature (tolerance ADAPTIVE_TOL) is more accurate
#: than left-Riemann-256 on the trained models with at least 4x fewer evaluations (measured:
#: docs/methods.md, benchmarks/ig_accuracy.py --equal-accuracy)
DEFAULT_RULE = "adaptive"
DEFAULT_STEPS = 256
#: a completeness gap |F(x) − F(x̄) − Σ_t A[l, t]| above this (target units: summed answer
#: probability) is a warning
GAP_TOL = 0.01
#: the cost model's evaluations per (example, block) for ``adaptive`` (measured mean on the
#: trained models, benchmarks/ig_accuracy_zoo_quick.json ``equal_accuracy_trained``)
ADAPTIVE_TYPICAL_EVALS = 64


@dataclass
class IntegratedGradients(TokenMaps):
    """One ``[L, T_b]`` attribution map per example, its token strings, the target value
    (summed answer probability) of each example, and per (example, block) the number of
    integrand evaluations and the completeness gap ``F(x) − F(x̄) − Σ_t A[l, t]``."""

    name: ClassVar[str] = "integrated_gradients"
    targets: Float[Tensor, " prompt"]
    evals: Tensor | None = None
    gaps: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.targets) != len(self.maps):
            raise ValueError("one target per example")
        for name in ("evals", "gaps"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (len(self.maps), self.n_layers):
                raise ValueError(f"{name} must be [example, block], got {tuple(value.shape)}")

    @property
    def n_layers(self) -> int:
        return int(self.maps[0].shape[0]) if self.maps else 0

    def curves(self) -> dict[str, Any]:
        out = {**super().curves(), "target": self.targets.tolist()}
        if self.evals is not None and self.gaps is not None:
            out.update(evals=self.evals.tolist(), completeness_gap=self.gaps.tolist())
        return out

    def tensors(self) -> dict[str, Tensor]:
        extra = {k: v for k, v in (("evals", self.evals), ("gaps", self.gaps)) if v is not None}
        return {**super().tensors(), "targets": self.targets, **extra}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict[str, Any],
                     str_tokens: list[list[str]]) -> IntegratedGradients:
        return cls(cls.maps_from(tensors, str_tokens), str_tokens, tensors["targets"],
                   tensors.get("evals"), tensors.get("gaps"), meta=meta)


def integrated_gradients(
    model: Any,
    batch: BatchLike,
    *,
    steps: int = DEFAULT_STEPS,
    rule: str = DEFAULT_RULE,
    tol: float = ADAPTIVE_TOL,
    memory_budget: int | None = None,
    max_rows: int | None = None,
    progress: bool = False,
) -> IntegratedGradients:
    """Integrated-gradient attribution of the answer probability to every (block output, token),
    the path integral taken by ``rule`` with ``steps`` nodes (gradient evaluations) per
    (example, block) — for ``rule="adaptive"`` at most ``steps``, placed until the error
    estimate is below ``tol`` (:mod:`.adaptive_quadrature`). ``steps`` and ``rule`` are
    :class:`IntegratedGradientsOptions`' fields, with its defaults and its check."""
    batch = as_batch(model, batch, what="integrated_gradients")
    batch.require_answers("integrated gradients")
    check_rule(rule, steps)
    adapter = get_adapter(model)
    # the whole path under the policy of differentiated passes (ComputePolicy.for_grad): the
    # forward values F(x), F(x̄) and the gradients in one precision, so that the completeness
    # gap measures the quadrature and not rounding
    adapter = adapter.with_policy(adapter.policy.for_grad())
    L = adapter.n_layers
    maps, targets, evals, gaps = [], [], [], []
    total = None if rule == ADAPTIVE else batch.size * L * steps
    bar = tqdm(total=total, desc="integrated gradients", disable=not progress)
    for b in range(batch.size):
        path = _Paths(adapter, batch.select([b]), memory_budget, max_rows, bar)
        if rule == ADAPTIVE:
            m, n, f0 = path.adaptive(steps, tol)
        else:
            m, n, f0 = path.fixed(*quadrature(rule, steps))
        maps.append(m)
        targets.append(path.target)
        evals.append(n)
        gaps.append(path.target - f0 - m.double().sum(-1))
        del path
    bar.close()
    gap = torch.stack(gaps).float()
    meta: dict[str, Any] = {"n_prompts": batch.size, "n_layers": L, "n_steps": steps,
                            "rule": rule, "baseline": "mean over positions", "gap_tol": GAP_TOL}
    if rule == ADAPTIVE:
        meta["tol"] = tol
    meta["warnings"] = gap_warnings(gap, rule, steps)
    return IntegratedGradients(maps, [list(s) for s in batch.str_tokens], torch.tensor(targets),
                               torch.stack(evals), gap, meta=meta)


def gap_warnings(gap: Tensor, rule: str, n_steps: int) -> list[dict[str, Any]]:
    """A warning when some (example, block) has a completeness gap above :data:`GAP_TOL`."""
    worst = float(gap.abs().max()) if gap.numel() else 0.0
    if worst <= GAP_TOL:
        return []
    b, layer = divmod(int(gap.abs().argmax()), gap.shape[1])
    n_bad = int((gap.abs() > GAP_TOL).sum())
    fix = ("raise integrated_gradients.steps (the adaptive rule's node budget per path)"
           if rule == ADAPTIVE else
           "raise integrated_gradients.steps or use integrated_gradients.rule=adaptive")
    return [{"code": "ig_completeness_gap", "message": (
        f"integrated gradients: the attributions of {n_bad} of {gap.numel()} (example, block) "
        f"maps do not sum to F(x) - F(baseline) within {GAP_TOL} (worst {worst:.3g}, example "
        f"{b}, block {layer}): the quadrature ({rule}, {n_steps} nodes) has not resolved the "
        f"integrand; {fix}")}]


def answer_probability(adapter: Any, h: Tensor, ids: Tensor, chunk: int = 256) -> Tensor:
    """``p_lens(h_i)[ids_i]`` for every row ``i``, differentiable in ``h``, ``chunk`` rows at a
    time. Under autograd each chunk is checkpointed (recomputed in the backward pass), so the
    graph never holds more than one ``chunk × vocab`` block of log-probabilities."""

    def part(x: Tensor, y: Tensor) -> Tensor:
        return adapter.lens_log_probs(x).gather(-1, y[:, None]).exp()[:, 0].float()

    out = []
    for i in range(0, h.shape[0], chunk):
        x, y = h[i : i + chunk], ids[i : i + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            out.append(checkpoint(part, x, y, use_reentrant=False))
        else:
            out.append(part(x, y))
    return torch.cat(out) if out else h.new_zeros(0, dtype=torch.float32)


class _Paths:
    """The straight paths of one example, one per block ``l``: from the baseline ``x̄`` (the mean
    of the block's output over positions) to the output ``x``. :meth:`evaluate` runs any set of
    (block, α) nodes as one engine sweep and returns ``F(α)`` and the per-token integrand
    ``g(α)[t] = Σ_features (x − x̄)[t] · ∂F/∂x[t]`` at each."""

    def __init__(self, adapter: Any, sub: Batch, memory_budget: int | None,
                 max_rows: int | None, bar: Any) -> None:
        self.adapter, self.memory_budget, self.max_rows, self.bar = adapter, memory_budget, max_rows, bar
        n = int(sub.lengths[0])
        self.clean = clean = adapter.clean(sub.tokens[:, :n])
        device = clean.resid.device
        self.pred = torch.tensor(sub.answer_predicting_positions(0), device=device)
        if len(self.pred) == 0:
            raise ConfigError("integrated gradients need an answer (the example's answer is empty)")
        self.answer_ids = sub.tokens[0, self.pred + 1].to(device)
        self.L, self.n = adapter.n_layers, n
        self.base, self.diffs = [], []
        for layer in range(self.L):
            x = clean.resid[layer + 1, 0].float()
            self.base.append(x.mean(0, keepdim=True))
            self.diffs.append(x - self.base[-1])
        with torch.no_grad():
            p = adapter.lens_log_probs(clean.resid[-1, 0, self.pred])
            self.target = float(p.gather(-1, self.answer_ids[:, None]).exp().sum())

    def rows(self, nodes: list[tuple[int, float]]) -> list[Row]:
        dtype = self.clean.resid.dtype
        return [Row(i, 0, ResumePlan(layer + 1, (self.base[layer] + alpha * self.diffs[layer]).to(dtype),
                               first_pos=0)) for i, (layer, alpha) in enumerate(nodes)]

    def evaluate(self, nodes: list[tuple[int, float]]) -> list[tuple[float, Tensor]]:
        out: list[Any] = [None] * len(nodes)
        pred, n_ans = self.pred, len(self.pred)

        def on_final(chunk: Chunk, h_final: Tensor) -> None:
            h = h_final[:, chunk.columns(pred)]  # [rows, answer, d_model]
            ids = self.answer_ids[None, :].expand(len(chunk), -1)
            probs = answer_probability(self.adapter, h.reshape(-1, h.shape[-1]), ids.reshape(-1))
            grads = torch.autograd.grad(probs.sum(), chunk.leaves)
            f = probs.detach().view(len(chunk), n_ans).double().sum(-1).tolist()
            for key, g, fk in zip(chunk.keys, grads, f):
                term = (g.float() * self.diffs[nodes[key][0]]).sum(-1)
                out[key] = (fk, term.cpu())
            self.bar.update(len(chunk))

        with self.adapter.grad_enabled_inputs():
            sweep(self.adapter, self.clean, self.rows(nodes), on_final=on_final, grad=True,
                  suffix=False, memory_budget=self.memory_budget, max_rows=self.max_rows,
                  final_from=int(pred.min()))
        return out

    def baseline_targets(self) -> list[float]:
        """``F(x̄)`` of every block, by one forward (no gradient) of the blocks above it."""
        out = [0.0] * self.L
        pred, n_ans = self.pred, len(self.pred)

        def on_final(chunk: Chunk, h_final: Tensor) -> None:
            h = h_final[:, chunk.columns(pred)]
            ids = self.answer_ids[None, :].expand(len(chunk), -1)
            probs = answer_probability(self.adapter, h.reshape(-1, h.shape[-1]), ids.reshape(-1))
            for key, fk in zip(chunk.keys, probs.view(len(chunk), n_ans).double().sum(-1).tolist()):
                out[key] = fk

        sweep(self.adapter, self.clean, self.rows([(layer, 0.0) for layer in range(self.L)]),
              on_final=on_final, memory_budget=self.memory_budget, max_rows=self.max_rows)
        return out

    def fixed(self, alphas: tuple[float, ...], weights: tuple[float, ...]
              ) -> tuple[Tensor, Tensor, Tensor]:
        """The map by a fixed rule, the evaluations per block, and ``F(x̄)`` per block."""
        nodes = [(layer, a) for layer in range(self.L) for a in alphas]
        values = self.evaluate(nodes)
        N = len(alphas)
        # equal weights: sum, then divide by the count (the reference implementation's arithmetic)
        uniform = len(set(weights)) == 1
        acc = torch.zeros(self.L, self.n, dtype=torch.float32)
        for (layer, _), (_, term), k in zip(nodes, values, [k for _ in range(self.L) for k in range(N)]):
            acc[layer] += term if uniform else weights[k] * term
        if 0.0 in alphas:
            k0 = alphas.index(0.0)
            f0 = [values[layer * N + k0][0] for layer in range(self.L)]
        else:
            f0 = self.baseline_targets()
        m = acc / N if uniform else acc
        return m, torch.full((self.L,), N), torch.tensor(f0, dtype=torch.float64)

    def adaptive(self, max_evals: int, tol: float) -> tuple[Tensor, Tensor, Tensor]:
        """The map by adaptive quadrature (:func:`.adaptive_quadrature.adaptive_quadrature`)."""
        paths = adaptive_quadrature(self.evaluate, self.L, max_evals=max_evals, tol=tol)
        m = torch.stack([p.integral for p in paths])
        return m, torch.tensor([p.evals for p in paths]), torch.tensor([p.f0 for p in paths],
                                                                       dtype=torch.float64)


@dataclass(frozen=True)
class IntegratedGradientsOptions(MetricOptions):
    """Integrated gradients' options (``--set integrated_gradients.steps=64``);
    docs/methods.md §5."""

    steps: int = field(default=DEFAULT_STEPS, metadata={
        "help": "quadrature nodes on the path (adaptive: at most this many)"})
    rule: str = field(default=DEFAULT_RULE, metadata={
        "help": "quadrature rule: " + ", ".join(sorted([*RULES, ADAPTIVE]))})
    map_examples: int = field(default=3, metadata={
        "help": "examples that get a map (the first ones analysed)"})

    def validate(self) -> None:
        check_rule(self.rule, self.steps)
        self.require_positive("map_examples")


def _run(ctx: Any) -> IntegratedGradients:
    sub = ctx.map_batch()
    return integrated_gradients(ctx.model, sub, steps=ctx.options.steps, rule=ctx.options.rule,
                                progress=ctx.progress)


def _observe(result: IntegratedGradients) -> dict[str, float]:
    """The evaluations per path the run used, for the next plan: ``evals``, the mean over
    (example, block), which the lens rows and block calls scale with; ``depth_evals``, the mean
    weighted by the blocks each path runs (block ``l``'s path runs the ``L − 1 − l`` blocks above
    it), which the block-tokens scale with. The rule places more nodes on the early blocks' paths
    (``zoo/add-12l``: ~150 on block 0, ~35 on the last), the longest ones, so the plain mean
    undercounts the work."""
    evals = result.evals
    if evals is None or evals.numel() == 0:
        return {}
    evals = evals.double().reshape(-1, evals.shape[-1])
    L = evals.shape[-1]
    above = torch.arange(L - 1, -1, -1, dtype=torch.float64)  # blocks each path runs
    out = {"evals": float(evals.mean())}
    if L > 1:
        out["depth_evals"] = float((evals @ above).mean() / above.sum())
    return out


def _cost(w: Workload) -> MeasurementCost:
    """A clean pass per mapped prompt; ``N`` rows per block ``l`` run blocks ``l+1..L-1`` on every
    position forward and backward (an upper bound: where the engine runs the last block only on
    the answer-predicting positions the count is a few percent lower). ``N`` is ``ig_steps`` for
    a fixed rule; for ``adaptive`` (whose count depends on the integrand) the counts that
    earlier runs of this model with these options recorded (``Workload.observed``: the mean per
    path for calls and lens rows, the mean weighted by the blocks each path runs for the
    block-tokens), else :data:`ADAPTIVE_TYPICAL_EVALS`; at most ``ig_steps`` (exact below 5
    nodes). A rule without the node ``α = 0`` (``gauss_legendre``) adds one forward per block
    for ``F(x̄)``."""
    opts = w.options(IntegratedGradients.name)
    L, steps, rule = w.L, opts.steps, opts.rule
    m = MeasurementCost("integrated_gradients", sweeps=True)
    seen = w.observed.get(IntegratedGradients.name, {})
    path_steps: float | None = None  # the block-tokens' count (see _observe), where not ``steps``
    if rule == ADAPTIVE and steps < 5:  # the coarse pass alone, exactly
        steps = len(coarse_nodes(steps))
    elif rule == ADAPTIVE and "evals" in seen:  # calls and lens rows at the mean
        (n, runs), budget = seen["evals"], steps
        steps = min(budget, max(1, round(n)))
        path_steps = max(1.0, min(budget, seen.get("depth_evals", seen["evals"])[0]))
        m.note = (f"adaptive rule: {steps} evaluations per path ({path_steps:.0f} weighted by the "
                  f"blocks each path runs), the mean of {runs} earlier run(s) of this model "
                  "with these options")
    elif rule == ADAPTIVE:
        steps = min(steps, ADAPTIVE_TYPICAL_EVALS)
        m.note = (f"adaptive rule: {steps} evaluations per path assumed (the trained zoo's "
                  "mean); a run of this model records its own for the next plan")
    for b in w.first(opts.map_examples):
        T = int(w.lengths[b])
        m.block_tokens += L * T
        m.block_calls += L
        if rule == "gauss_legendre":
            m.block_tokens += L * (L - 1) // 2 * T
            m.block_calls += L
        m.grad_block_tokens += round((steps if path_steps is None else path_steps)
                                     * L * (L - 1) / 2 * T)
        m.grad_block_calls += w.sweep_calls([layer + 1 for layer in range(L)
                                             for _ in range(steps)], T, grad=True)
        m.lens_rows += 3 * steps * L * w.answer_tokens(b)
    return m


register_metric(MetricSpec(
    name=IntegratedGradients.name,
    cost=_cost,
    result_type=IntegratedGradients,
    options=IntegratedGradientsOptions,
    description="integrated-gradient maps of the answer probability over every block output",
    run=_run,
    needs_answers=True,
    observe=_observe,
))
