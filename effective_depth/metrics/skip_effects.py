"""Layer-skip effects (docs/methods.md §2; Csordás et al. 2025, "effect on future computation").

Skip block ``s`` (or only its attention, or only its MLP, or only its direct path to the output)
at positions ``P`` and measure what changes downstream:

* ``layer_effect[s, i] = ‖d_i' − d_i‖ / ‖d_i‖`` for every later block ``i > s`` (0 for
  ``i ≤ s`` by construction);
* ``output_effect[s] = ‖p' − p‖₂`` of the output distributions.

**Future effects** cut each prompt at positions ``t`` drawn from ``range(8, T − 4, 8)``
(shuffled with a fixed seed, ``n_cuts = 4`` kept), skip at ``[skip_front, t)`` and measure at
positions ``≥ t`` only: does an early token's computation get *used later*? **Current effects**
skip at every position from ``skip_front`` and measure everywhere.

Aggregation is ``max`` over positions, cuts and prompts (as published) or the token-weighted
``mean`` (which, unlike the max, does not grow with the number of prompts); both are kept.

The *depth score* (Csordás et al.'s difficulty analysis) is the centre of mass of the mean future
effect of each skipped block: ``m_s = Σ_{i>s} layer_effect[s, i] / (L − 1 − s)``, score
``Σ s·m_s / Σ m_s``; the same from ``output_effect``.

All rows (prompt × cut × skipped block) run through one :func:`~effective_depth.engine.sweep`:
each resumes at block ``s + 1`` from the cached residual, and the rows share batched forwards.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from ..engine.adapter import Adapter, get_adapter
from ..engine.batch import Batch, BatchLike, as_batch, measured_mask, query_starts
from ..engine.interventions import LocalSkip, PatchContribution, compile_plan
from ..engine.sweep import Chunk, Row, sweep
from ..errors import ConfigError
from ..progress import tqdm
from .base import (
    EPS,
    CleanLensProbs,
    MetricResult,
    check_skip_front,
    lens_prob_distance,
    prompt_chunks,
)
from .costs import MeasurementCost, Workload
from .options import MetricOptions
from .registry import EstimatorSpec, MetricSpec, ScoreSpec, register_metric
from .rules import ed_skip

__all__ = ["SkipEffects", "SkipEffectsOptions", "skip_effects", "draw_cuts", "study_cuts",
           "cut_rule", "depth_score", "SKIP_COMPONENTS"]

#: what a skip removes, how positions are chosen, how effects over positions are reduced
Component = Literal["block", "attn", "mlp", "local"]
Mode = Literal["future", "current"]
Aggregate = Literal["max", "mean"]
SKIP_COMPONENTS: tuple[str, ...] = get_args(Component)


#: the reference scripts' cut rule: ``range(8, T - 4, 8)`` (start, stride, margin)
METHODS_CUTS = (8, 8, 4)


def cut_rule(
    length: int,
    n_cuts: int = 4,
    start: int | None = None,
    stride: int | None = None,
    margin: int | None = None,
    skip_front: int = 1,
) -> tuple[int, int, int]:
    """``(start, stride, margin)`` of the cut range of a prompt of ``length`` tokens.

    Any value given is used as given (the others default to the papers' 8, 8, 4). With none given
    (the default), the rule fits the prompt: the papers' ``range(8, T − 4, 8)`` whenever it holds at
    least ``n_cuts`` positions (prompts of ``T ≥ 8·n_cuts + 5`` tokens), otherwise ``n_cuts``
    evenly spread cuts: ``margin = min(4, max(1, T // 8))``, ``start = min(8, max(skip_front + 1,
    T // 4))``, ``stride = max(1, (T − margin − start) // n_cuts)``.
    """
    if start is not None or stride is not None or margin is not None:
        d_start, d_stride, d_margin = METHODS_CUTS
        return (d_start if start is None else start, d_stride if stride is None else stride,
                d_margin if margin is None else margin)
    s, st, m = METHODS_CUTS
    if len(range(s, length - m, st)) >= n_cuts:
        return METHODS_CUTS
    margin = min(4, max(1, length // 8))
    start = min(8, max(skip_front + 1, length // 4))
    stride = max(1, (length - margin - start) // n_cuts)
    return start, stride, margin


def draw_cuts(
    length: int,
    n_cuts: int = 4,
    seed: int | str = 0,
    start: int | None = None,
    stride: int | None = None,
    margin: int | None = None,
    skip_front: int = 1,
) -> list[int]:
    """Cut positions for one prompt of ``length`` tokens: ``range(start, length − margin,
    stride)`` (see :func:`cut_rule`) shuffled with ``random.Random(seed)``, first ``n_cuts``
    kept."""
    start, stride, margin = cut_rule(length, n_cuts, start, stride, margin, skip_front)
    cuts = list(range(start, length - margin, stride))
    random.Random(seed).shuffle(cuts)
    return cuts[:n_cuts]


def depth_score(effect: Tensor) -> float:
    """Centre of mass over skipped blocks. ``effect`` is ``[L, L]`` (layer effects: the mean
    effect on later blocks is used) or ``[L]`` (output effects)."""
    effect = effect.float()
    if effect.dim() == 2:
        L = effect.shape[0]
        m = torch.stack([effect[s, s + 1 :].sum() / (L - 1 - s) for s in range(L - 1)])
    else:
        m = effect
    total = m.sum()
    if total <= 0:
        return float("nan")
    return float((torch.arange(len(m), dtype=torch.float32) * m).sum() / total)


@dataclass
class SkipEffects(MetricResult):
    """Per-prompt maxima and sums (with position counts) of the layer and output effects."""

    name: ClassVar[str] = "skip_effects"
    layer_max: Float[Tensor, "prompt layer layer2"]
    layer_sum: Float[Tensor, "prompt layer layer2"]
    output_max: Float[Tensor, "prompt layer"]
    output_sum: Float[Tensor, "prompt layer"]
    counts: Float[Tensor, "prompt layer"]
    cuts: list[list[int]]

    def __post_init__(self) -> None:
        P, L, L2 = self.layer_max.shape
        if L != L2 or tuple(self.output_max.shape) != (P, L) or len(self.cuts) != P:
            raise ValueError("inconsistent skip-effect shapes")
        if self.meta.get("aggregate", "max") not in ("max", "mean"):
            raise ValueError("aggregate must be max or mean")

    @property
    def n_layers(self) -> int:
        return int(self.layer_max.shape[1])

    @property
    def aggregate(self) -> str:
        return self.meta.get("aggregate", "max")

    def _valid(self, idx: Any) -> Tensor:
        if idx is None:
            idx = torch.arange(self.layer_max.shape[0])
        idx = torch.as_tensor(idx, dtype=torch.long)
        # prompts without a cut (too short for future effects) contribute nothing
        return idx[self.counts[idx].sum(1) > 0]

    def _aggregate(self, maxima: Tensor, sums: Tensor, idx: Any, aggregate: str | None) -> Tensor:
        """Max over prompts ``idx``, or the position-weighted mean (sums / counts)."""
        idx = self._valid(idx)
        if len(idx) == 0:
            return torch.full(maxima.shape[1:], float("nan"))
        if (aggregate or self.aggregate) == "max":
            return maxima[idx].amax(0)
        counts = self.counts[idx].sum(0).clamp(min=1)
        return sums[idx].sum(0) / counts.reshape(-1, *[1] * (sums.dim() - 2))

    def layer_effect_of(self, idx: Any = None, aggregate: str | None = None) -> Tensor:
        return self._aggregate(self.layer_max, self.layer_sum, idx, aggregate)

    def output_effect_of(self, idx: Any = None, aggregate: str | None = None) -> Tensor:
        return self._aggregate(self.output_max, self.output_sum, idx, aggregate)

    @property
    def layer_effect(self) -> Float[Tensor, "layer layer2"]:
        return self.layer_effect_of()

    @property
    def output_effect(self) -> Float[Tensor, " layer"]:
        return self.output_effect_of()

    @property
    def depth_score(self) -> float:
        return depth_score(self.layer_effect)

    @property
    def output_depth_score(self) -> float:
        return depth_score(self.output_effect)

    def curves(self) -> dict[str, Any]:
        return {
            "output_effect": self.output_effect.tolist(),
            "output_effect_mean": self.output_effect_of(aggregate="mean").tolist(),
            "output_effect_max": self.output_effect_of(aggregate="max").tolist(),
            "depth_score": _nan_to_none(self.depth_score),
            "output_depth_score": _nan_to_none(self.output_depth_score),
        }

    def curves_of(self, idx: Any = None) -> dict[str, Tensor]:
        return {"output_effect": self.output_effect_of(idx),
                "output_effect_mean": self.output_effect_of(idx, "mean"),
                "output_effect_max": self.output_effect_of(idx, "max")}

    def tensors(self) -> dict[str, Tensor]:
        return {
            "layer_effect": self.layer_effect,
            "layer_effect_max": self.layer_effect_of(aggregate="max"),
            "layer_effect_mean": self.layer_effect_of(aggregate="mean"),
            "layer_max": self.layer_max,
            "layer_sum": self.layer_sum,
            "output_max": self.output_max,
            "output_sum": self.output_sum,
            "counts": self.counts,
        }

    def entry(self) -> dict[str, Any]:
        return {**super().entry(), "cuts": self.cuts}

    @classmethod
    def from_entry(cls, tensors: dict[str, Tensor], entry: dict[str, Any]) -> SkipEffects:
        return cls.from_tensors(tensors, entry.get("meta", {}), entry.get("cuts", []))

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict[str, Any], cuts: list[list[int]]) -> SkipEffects:
        return cls(tensors["layer_max"], tensors["layer_sum"], tensors["output_max"],
                   tensors["output_sum"], tensors["counts"], cuts, meta=meta)


def _nan_to_none(x: float) -> float | None:
    return None if x != x else x


def _spec(component: str, layer: int, positions: Tensor) -> Any:
    if component == "local":
        return LocalSkip(layer, positions)
    return PatchContribution(layer, component, positions)  # type: ignore[arg-type]


def skip_effects(
    model: Any,
    batch: BatchLike,
    *,
    mode: Mode = "future",
    component: Component = "block",
    aggregate: Aggregate = "max",
    n_cuts: int = 4,
    cut_start: int | None = None,
    cut_stride: int | None = None,
    cut_margin: int | None = None,
    seed: int = 0,
    skip_front: int = 1,
    positions: str = "all",
    cuts: Sequence[Sequence[int]] | None = None,
    batch_size: int = 8,
    memory_budget: int | None = None,
    progress: bool = False,
) -> SkipEffects:
    """Skip every block in turn and measure the effect on later blocks and on the output.

    ``mode`` … ``cut_margin`` are :class:`SkipEffectsOptions`' fields, with its defaults and its
    checks (``skip_effects(model, batch, **options.to_dict())``); ``seed``, ``skip_front`` and
    ``positions`` are the study's (``positions="query"``: effects are measured at the asked
    example's positions only, :func:`~effective_depth.engine.batch.query_starts`; what is skipped
    is unchanged). ``cuts`` gives the cut positions (one list per prompt, as a study draws them
    before measuring: :func:`study_cuts`); by default they are drawn here the same way. Prompts
    too short to have a cut are left out of future effects (their counts stay 0).
    """
    opts = SkipEffectsOptions(mode=mode, component=component, aggregate=aggregate, n_cuts=n_cuts,
                              cut_start=cut_start, cut_stride=cut_stride, cut_margin=cut_margin)
    batch = as_batch(model, batch, what="skip_effects")
    check_skip_front(skip_front)
    opts.check_front(skip_front)
    query_starts(batch, positions)  # an error before any work when the prompts do not say
    adapter = get_adapter(model)
    L, P = adapter.n_layers, batch.size
    if mode == "future":
        if cuts is None:
            cuts = study_cuts(batch.lengths.tolist(), opts, seed, skip_front)
        cuts = [list(c) for c in cuts]
        if len(cuts) != P:
            raise ConfigError(f"cuts has {len(cuts)} lists for {P} prompts")
        for b, (c, n) in enumerate(zip(cuts, batch.lengths.tolist())):
            bad = [t for t in c if not skip_front < t < n]
            if bad:
                raise ConfigError(f"cut positions {bad} of prompt {b} outside {skip_front + 1}..{n - 1}")
        _require_a_cut(cuts, batch, skip_front)
    else:
        cuts = [[] for _ in range(P)]

    out = {
        "layer_max": torch.zeros(P, L, L),
        "layer_sum": torch.zeros(P, L, L),
        "output_max": torch.zeros(P, L),
        "output_sum": torch.zeros(P, L),
        "counts": torch.zeros(P, L),
    }
    total_rows = sum(max(1, len(c)) if mode == "current" else len(c) for c in cuts) * L
    bar = tqdm(total=total_rows, desc=f"skip effects ({mode}, {component})", disable=not progress)
    for rows, sub in prompt_chunks(batch, batch_size):
        _skip_chunk(adapter, sub, rows, cuts, mode, component, skip_front, out, memory_budget, bar,
                    query_starts(sub, positions))
    bar.close()
    meta = {
        "n_prompts": P,
        "n_layers": L,
        "mode": mode,
        "component": component,
        "aggregate": aggregate,
        "skip_front": skip_front,
        "positions": positions,
        "n_cuts": n_cuts,
        "seed": seed,
    }
    return SkipEffects(cuts=cuts, meta=meta, **out)


def _skip_chunk(
    adapter: Adapter,
    sub: Batch,
    rows: list[int],
    cuts: list[list[int]],
    mode: str,
    component: str,
    skip_front: int,
    out: dict[str, Tensor],
    memory_budget: int | None,
    bar: Any,
    query_start: Tensor | None = None,
) -> None:
    L, width = adapter.n_layers, sub.width
    clean = adapter.clean(sub.tokens, components=component in ("attn", "mlp"))
    device = clean.resid.device
    pos = torch.arange(width, device=device)
    real = measured_mask(sub.lengths, width, query_start=query_start).to(device)
    sweep_rows: list[Row] = []
    measure: dict[tuple[int, int, int], Tensor] = {}
    for j, b in enumerate(rows):
        cut_list: list[int | None] = list(cuts[b]) if mode == "future" else [None]
        for c, t in enumerate(cut_list):
            stop = width if t is None else t
            skipped = (pos >= skip_front) & (pos < stop)
            measured = real[j] if t is None else real[j] & (pos >= t)
            for s in range(L):
                key = (j, c, s)
                measure[key] = measured
                plan = compile_plan([_spec(component, s, skipped)], adapter, clean, j)
                sweep_rows.append(Row(key, j, plan))

    def on_block(layer: int, chunk: Chunk, x_in: Tensor, x_out: Tensor) -> None:
        active = [(r, k) for r, k in enumerate(chunk.keys) if k[2] < layer]
        if not active:
            return
        idx = torch.tensor([r for r, _ in active], device=x_in.device)
        d_new = (x_out[idx] - x_in[idx]).float()
        d_ref = chunk.take(clean.block_out(layer), idx).float().to(d_new.device)
        rel = (d_new - d_ref).norm(dim=-1) / d_ref.norm(dim=-1).clamp(min=EPS)
        mask = torch.stack([measure[k][chunk.positions] for _, k in active]).to(rel.device)
        _accumulate(out, "layer", [(rows[k[0]], k[2], layer) for _, k in active], rel, mask)

    clean_probs = CleanLensProbs(adapter, clean.resid[-1])

    def on_final(chunk: Chunk, h_final: Tensor) -> None:
        mask = torch.stack([measure[k][chunk.positions] for k in chunk.keys]).to(h_final.device)
        sel = mask.nonzero(as_tuple=True)
        ref = clean_probs.at(chunk.prompts[sel[0]], chunk.positions[sel[1]])
        dist = torch.zeros(mask.shape, device=h_final.device)
        dist[sel] = lens_prob_distance(adapter, h_final[sel], ref).to(dist.device)
        _accumulate(out, "output", [(rows[k[0]], k[2]) for k in chunk.keys], dist, mask)
        for (j, _c, s), m in zip(chunk.keys, mask):
            out["counts"][rows[j], s] += float(m.sum())

    sweep(adapter, clean, sweep_rows, on_block=on_block, on_final=on_final,
          memory_budget=memory_budget, progress=bar)


def _accumulate(out: dict[str, Tensor], kind: str, targets: list[tuple], values: Tensor, mask: Tensor) -> None:
    """Fold per-position ``values [rows, pos]`` into the per-prompt max and sum tensors (row ``i``
    into the entry ``targets[i]``; several rows may share one, e.g. two cuts of one prompt), with
    one scatter per tensor: a Python loop over the rows cost a third of a 64-wide model's skip
    effects."""
    masked = values.masked_fill(~mask, 0.0)
    row_max = masked.amax(dim=1).cpu()
    row_sum = masked.sum(dim=1).cpu()
    mx, sm = out[f"{kind}_max"], out[f"{kind}_sum"]
    flat = (torch.tensor(targets, dtype=torch.long) * torch.tensor(mx.stride())).sum(-1)
    mx.view(-1).scatter_reduce_(0, flat, row_max.to(mx.dtype), reduce="amax")
    sm.view(-1).index_add_(0, flat, row_sum.to(sm.dtype))


def _require_a_cut(cuts: Sequence[Sequence[int]], batch: Batch, skip_front: int) -> None:
    if not any(cuts):
        raise ConfigError(
            f"no example is long enough for future skip effects (the longest has "
            f"{int(batch.lengths.max())} tokens; a cut needs skip_front < t < T - cut_margin, "
            f"skip_front={skip_front}); use mode='current' (skip_effects.mode), longer prompts, or "
            "smaller cut_start / cut_stride / cut_margin"
        )


@dataclass(frozen=True)
class SkipEffectsOptions(MetricOptions):
    """Skip effects' options (``--set skip_effects.mode=current``); docs/methods.md §3."""

    mode: Mode = field(default="future", metadata={
        "help": "future: effects on positions after a random cut; current: on every position"})
    component: Component = field(default="block", metadata={
        "help": "what is skipped: the whole block, its attention, its MLP, or local attention"})
    aggregate: Aggregate = field(default="max", metadata={
        "help": "how a prompt's effects over positions are reduced"})
    n_cuts: int = field(default=4, metadata={"help": "cut positions per prompt (future mode)"})
    cut_start: int | None = field(default=None, metadata={
        "help": "first possible cut position; all three cut_* none: the rule fits "
                "each prompt (docs/methods.md §2)"})
    cut_stride: int | None = field(default=None, metadata={
        "help": "spacing of possible cut positions; none: 8"})
    cut_margin: int | None = field(default=None, metadata={
        "help": "tokens kept after the last possible cut; none: 4"})

    def validate(self) -> None:
        self.require_positive("n_cuts", "cut_stride", "cut_margin")

    def check(self, config: Any) -> None:
        self.check_front(config.skip_front)

    def check_front(self, skip_front: int) -> None:
        """A cut must leave a skipped block input before it: ``cut_start > skip_front``."""
        if self.cut_start is not None and self.cut_start <= skip_front:
            raise ConfigError(f"{self.qualified('cut_start')} must be > skip_front "
                              f"({skip_front}), got {self.cut_start}")


def study_cuts(lengths: Sequence[int], options: SkipEffectsOptions, seed: int,
               skip_front: int) -> list[list[int]]:
    """The cut positions of prompts of ``lengths`` tokens: prompt ``b``'s are
    ``draw_cuts(length, n_cuts, f"{seed}:{b}", cut_start, cut_stride, cut_margin, skip_front)``."""
    return [draw_cuts(int(n), options.n_cuts, f"{seed}:{b}", options.cut_start,
                      options.cut_stride, options.cut_margin, skip_front)
            for b, n in enumerate(lengths)]


def _study_cuts(batch: Batch, config: Any) -> dict[str, list[Any]]:
    """The cut positions of every prompt, drawn before anything runs (``inputs.json``): the ones
    the measurement uses."""
    opts = config.options[SkipEffects.name]
    if opts.mode == "current":
        return {"cuts": [[] for _ in range(batch.size)]}
    cuts = study_cuts(batch.lengths.tolist(), opts, config.seed, config.skip_front)
    _require_a_cut(cuts, batch, config.skip_front)  # before the study writes anything
    return {"cuts": cuts}


def _run(ctx: Any) -> SkipEffects:
    config, opts = ctx.config, ctx.options
    return skip_effects(ctx.model, ctx.batch, **opts.to_dict(), seed=config.seed,
                        skip_front=config.skip_front, positions=config.positions,
                        cuts=ctx.inputs["cuts"] if opts.mode == "future" else None,
                        batch_size=config.batch_size, progress=ctx.progress)


def _ed_skip(result: SkipEffects, tau: float | None, rules: str) -> Any:
    def apply(idx: Any) -> Any:
        effect = result.output_effect_of(idx)
        if bool(torch.isnan(effect).any()):
            return None, "no prompt in the sample has a cut position"
        return ed_skip(effect, tau)

    return apply


#: stored in ``ed_skip``'s notes for future-mode effects (docs/methods.md §6)
FUTURE_CEILING = ("future mode: the last block's future effect is zero by construction (no later "
                  "block reads its output before the cut), so ed_skip is at most block L-2 = {top}; "
                  "current mode (--skip-mode current) can reach every block")


def _ed_skip_notes(result: SkipEffects) -> list[str]:
    if result.meta.get("mode") != "future":
        return []
    return [FUTURE_CEILING.format(top=result.n_layers - 2)]


def _few_cuts(result: SkipEffects, tau: float | None, d_vocab: int | None) -> list[tuple[str, str]]:
    if result.meta.get("mode") != "future":
        return []
    with_cut = sum(1 for c in result.cuts if c)
    if with_cut >= result.n_prompts / 2:
        return []
    return [("few_cuts", f"future skip effects: only {with_cut} of {result.n_prompts} prompts are "
             "long enough for a cut position; ed_skip and the depth score rest on those")]


def _cost(w: Workload) -> MeasurementCost:
    """A clean pass; then for every prompt, cut (or once, in "all" mode) and skipped block ``s``
    the blocks ``s+1..L-1`` on the batch's padded width, and a lens row per block and position
    from the cut on (with the skip), plus one per clean position from the first cut on (the
    reference side, unembedded once: :class:`~.base.CleanLensProbs`)."""
    L, front = w.L, w.config.skip_front
    m = MeasurementCost("skip_effects", block_tokens=w.clean(w.every), sweeps=True,
                        block_calls=w.clean_calls(w.every))
    for c in w.chunks(w.config.batch_size, w.every):
        width = w.width(c)
        starts = []
        for b in c:
            cuts = w.cuts[b] if w.options(SkipEffects.name).mode == "future" else [None]
            for t in cuts:
                m.block_tokens += L * (L - 1) // 2 * width
                m.lens_rows += L * (int(w.lengths[b]) - (t or 0))
                starts += [s + 1 for s in range(L)]
            if cuts:
                m.lens_rows += int(w.lengths[b]) - min(t or 0 for t in cuts)
        # every row changes positions from skip_front on: one sweep group per prompt chunk
        m.block_calls += w.sweep_calls(starts, width - front, front)
    return m


#: how the depth score is computed from a sample and shown: a centre of mass over the skipped
#: blocks 0..L-2 (the last block has no later block to affect), so also a share of that range
DEPTH_SCORE = ScoreSpec(
    "depth_score", lambda result, idx: depth_score(result.layer_effect_of(idx)),
    title="depth score", source="Csordás", unit="block", span=lambda L: (0, L - 2),
    description="centre of mass of the mean future effect of each skipped block "
                "(Csordás et al.)")


register_metric(MetricSpec(
    name=SkipEffects.name,
    cost=_cost,
    result_type=SkipEffects,
    options=SkipEffectsOptions,
    description="layer-skip effects on later blocks and on the output (future or current)",
    run=_run,
    inputs=_study_cuts,
    estimators=(EstimatorSpec("ed_skip", SkipEffects.name, _ed_skip, 0.1,
                              "the last block whose skip changes the output by more than tau "
                              "x the largest output effect", checks=_few_cuts,
                              notes=_ed_skip_notes),),
    scores=(DEPTH_SCORE,),
))
