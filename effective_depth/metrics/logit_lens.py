"""The logit lens (docs/methods.md §3; nostalgebraist 2020, used by both reference papers).

Decode the residual stream *entering* every block with the model's own final norm and unembedding,
``lens(h) = softmax(unembed(ln_final(h)))`` — the norm's scale recomputed from ``h`` itself — and
compare it with the output distribution ``p = lens(h_L)``:

* ``kl[l] = KL(lens(h_l) ‖ p)``, mean over measured tokens;
* ``overlap[l] = |top_k(lens(h_l)) ∩ top_k(p)| / k`` (``k = 5``), mean over measured tokens.

Layer 0 is the embedding. The vocabulary-sized softmax is the memory hot spot, so positions are
processed in chunks of ``chunk`` tokens: peak memory is a few ``chunk × vocab`` tensors, never
``layers × positions × vocab``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from ..engine.adapter import get_adapter
from ..engine.batch import BatchLike, as_batch, measured_mask, query_starts
from ..errors import ConfigError
from ..progress import tqdm
from .base import MetricResult, check_skip_front, lens_rows, prompt_chunks, token_mean
from .costs import MeasurementCost, Workload
from .options import MetricOptions
from .registry import EstimatorSpec, MetricSpec, register_metric
from .rules import ed_kl, ed_overlap, first_hit_reference

__all__ = ["LogitLensResult", "logit_lens"]


@dataclass
class LogitLensResult(MetricResult):
    """Per-prompt sums of KL and overlap at every tapped layer, and token counts."""

    name: ClassVar[str] = "logit_lens"
    kl_sums: Float[Tensor, "prompt layer"]
    overlap_sums: Float[Tensor, "prompt layer"]
    counts: Float[Tensor, " prompt"]

    def __post_init__(self) -> None:
        if self.kl_sums.shape != self.overlap_sums.shape or self.kl_sums.shape[0] != self.counts.shape[0]:
            raise ValueError("inconsistent logit-lens shapes")

    @property
    def n_layers(self) -> int:
        return int(self.kl_sums.shape[1])

    def kl_of(self, idx: Any = None) -> Tensor:
        return token_mean(self.kl_sums, self.counts, idx)

    def overlap_of(self, idx: Any = None) -> Tensor:
        return token_mean(self.overlap_sums, self.counts, idx)

    @property
    def kl(self) -> Float[Tensor, " layer"]:
        return self.kl_of()

    @property
    def overlap(self) -> Float[Tensor, " layer"]:
        return self.overlap_of()

    def curves(self) -> dict[str, Any]:
        return {"kl": self.kl.tolist(), "overlap": self.overlap.tolist()}

    def curves_of(self, idx: Any = None) -> dict[str, Tensor]:
        return {"kl": self.kl_of(idx), "overlap": self.overlap_of(idx)}

    def tensors(self) -> dict[str, Tensor]:
        return {"kl_sums": self.kl_sums, "overlap_sums": self.overlap_sums, "counts": self.counts}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> LogitLensResult:
        return cls(tensors["kl_sums"], tensors["overlap_sums"], tensors["counts"], meta=meta)


@torch.no_grad()
def logit_lens(
    model: Any,
    batch: BatchLike,
    *,
    k: int | None = None,
    skip_front: int = 1,
    include_front: bool = True,
    positions: str = "all",
    chunk: int | None = None,
    batch_size: int = 8,
    include_final: bool = False,
    progress: bool = False,
    translate: Callable[[int, Tensor], Tensor] | None = None,
    desc: str = "logit lens",
) -> LogitLensResult:
    """KL to the output and top-``k`` overlap of the lens at every block input.

    ``k`` is :class:`LogitLensOptions`' field, with its default (None: :func:`default_lens_k` of
    the vocabulary) and its check (:func:`resolve_lens_k`); ``skip_front``, ``include_front``
    ``positions`` and ``batch_size`` are the study's (``positions="query"``: the asked example's
    positions only, :func:`~effective_depth.engine.batch.query_starts`).

    ``include_final`` also taps ``h_L`` (a sanity row: KL 0, overlap 1). ``translate(l, h)``, when
    given, maps each block input ``h_l`` (l < L) before the lens: the tuned lens's translators.
    ``chunk``: (prompt, position)s unembedded at a time (default: :func:`.base.lens_rows`).
    """
    batch = as_batch(model, batch, what="logit_lens")
    check_skip_front(skip_front)
    query_starts(batch, positions)  # an error before any work when the prompts do not say
    adapter = get_adapter(model)
    opts = LogitLensOptions(k=k)  # the options' own checks
    k = resolve_lens_k(opts.k, int(adapter.d_vocab))
    L = adapter.n_layers
    taps = L + 1 if include_final else L
    chunk = lens_rows(adapter.d_vocab) if chunk is None else max(1, int(chunk))
    # sums stay on the model's device until the end: no host sync inside the loops
    kl_sums = torch.zeros(taps, batch.size, device=adapter.device)
    overlap_sums = torch.zeros(taps, batch.size, device=adapter.device)
    counts = torch.zeros(batch.size)
    bar = tqdm(total=batch.size, desc=desc, disable=not progress)
    for rows, sub in prompt_chunks(batch, batch_size):
        clean = adapter.clean(sub.tokens)
        mask = measured_mask(sub.lengths, sub.width, skip_front, include_front,
                             query_starts(sub, positions))
        counts[rows] = mask.sum(1).float()
        # every measured (prompt, position) of the chunk, processed `chunk` at a time
        j_all, pos_all = (t.to(clean.resid.device) for t in mask.nonzero(as_tuple=True))
        row_all = torch.as_tensor(rows, device=clean.resid.device)[j_all]
        for start in range(0, len(j_all), chunk):
            j, pos, row = j_all[start : start + chunk], pos_all[start : start + chunk], row_all[start : start + chunk]
            log_p = adapter.lens_log_probs(clean.resid[-1, j, pos])  # [c, V]
            top_p = log_p.topk(k, dim=-1).indices
            for layer in range(taps):
                h = clean.resid[layer, j, pos]
                if translate is not None and layer < L:
                    h = translate(layer, h)
                kl, overlap = lens_row_statistics(adapter.lens_log_probs(h), log_p, top_p)
                kl_sums[layer].index_add_(0, row, kl.to(kl_sums.dtype))
                overlap_sums[layer].index_add_(0, row, overlap.to(overlap_sums.dtype))
        bar.update(len(rows))
    bar.close()
    kl_sums, overlap_sums = (rearrange(t, "layer prompt -> prompt layer").contiguous().cpu()
                             for t in (kl_sums, overlap_sums))
    meta = {"n_prompts": batch.size, "n_layers": L, "k": k, "skip_front": skip_front,
            "include_front": include_front, "positions": positions, "include_final": include_final}
    return LogitLensResult(kl_sums, overlap_sums, counts, meta=meta)


def default_lens_k(d_vocab: int) -> int:
    """The top-k of the overlap when none is given: ``min(5, max(1, V // 50))`` — the papers' 5 for
    real vocabularies, and small enough that unrelated top-k sets overlap by at most 2% (k / V)
    otherwise (1 for a 24-token vocabulary, where top-5 would sit at chance)."""
    return min(5, max(1, d_vocab // 50))


@dataclass(frozen=True)
class LogitLensOptions(MetricOptions):
    """The logit lens's options (``--set logit_lens.k=1``)."""

    k: int | None = field(default=None, metadata={
        "help": "top-k of the overlap curve; none: min(5, max(1, vocabulary // 50))"})

    def validate(self) -> None:
        self.require_positive("k")


def lens_row_statistics(log_q: Tensor, log_p: Tensor, top_p: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: ``KL(q ‖ p)`` from log-probabilities, and the top-k overlap, the share of the
    lens's top-``k`` tokens among the output's (``top_p``: the output's top-k ids, ``k`` its
    width). The statistic of every lens row (the planner times this very function)."""
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    k = int(top_p.shape[-1])
    top_q = log_q.topk(k, dim=-1).indices
    hits = (top_q[:, :, None] == top_p[:, None, :]).any(-1).sum(-1)
    return kl, hits / k


def resolve_lens_k(k: int | None, d_vocab: int) -> int:
    """The top-k of the overlap on a vocabulary of ``d_vocab``: ``k``, or
    :func:`default_lens_k` when None; one above the vocabulary is an error."""
    if k is None:
        return default_lens_k(d_vocab)
    if k > d_vocab:
        raise ConfigError(f"logit_lens.k={k} exceeds the model's vocabulary ({d_vocab})")
    return k


def _run(ctx: Any) -> LogitLensResult:
    return logit_lens(ctx.model, ctx.batch, **ctx.options.to_dict(), skip_front=ctx.config.skip_front,
                      include_front=ctx.config.include_front, positions=ctx.config.positions,
                      batch_size=ctx.config.batch_size,
                      progress=ctx.progress)


def lens_rule(kind: str, curve_of: str) -> Any:
    """The rule of ``ed_kl``/``ed_overlap`` on a lens result's ``curve_of`` curve (taps 0..L-1)."""
    toolkit = {"ed_kl": ed_kl, "ed_overlap": ed_overlap}[kind]

    def rule(result: LogitLensResult, tau: float | None, rules: str) -> Any:
        L = result.meta["n_layers"]

        def apply(idx: Any) -> Any:
            curve = getattr(result, curve_of)(idx)[:L]  # the block inputs h_0..h_{L-1}
            if rules == "reference":
                return first_hit_reference(curve, tau, kind)
            return toolkit(curve, tau)

        return apply

    return rule


def overlap_at_chance(estimator: str) -> Any:
    """The reliability check of an overlap estimator: a threshold below twice the chance overlap."""

    def check(result: LogitLensResult, tau: float | None, d_vocab: int | None) -> list[tuple[str, str]]:
        if not d_vocab or tau is None:
            return []
        k = int(result.meta.get("k", 5))
        chance = k / d_vocab
        if tau >= 2 * chance:
            return []
        return [("overlap_at_chance",
                 f"{estimator}: threshold {tau} is below twice the chance overlap of unrelated "
                 f"top-{k} sets ({k}/{d_vocab} = {chance:.3f}); use a smaller lens_k")]

    return check


def _cost(w: Workload) -> MeasurementCost:
    """One clean pass; every boundary ``0..L`` of every measured position projected (and the
    output once more as the reference), each with its log-softmax, KL and top-k over the
    vocabulary (lens statistics rows)."""
    rows = sum((w.L + 2) * w.measured_tokens(b) for b in w.every)
    return MeasurementCost("logit_lens", block_tokens=w.clean(w.every),
                           block_calls=w.clean_calls(w.every), lens_rows=rows,
                           lens_stat_rows=rows)


register_metric(MetricSpec(
    name=LogitLensResult.name,
    cost=_cost,
    result_type=LogitLensResult,
    options=LogitLensOptions,
    description="the logit lens: KL to the output and top-k overlap at every block input",
    run=_run,
    estimators=(
        EstimatorSpec("ed_kl", LogitLensResult.name, lens_rule("ed_kl", "kl_of"), 0.5,
                      "the first block input whose lens KL falls below tau x its maximum",
                      reference_rules=True),
        EstimatorSpec("ed_overlap", LogitLensResult.name, lens_rule("ed_overlap", "overlap_of"), 0.3,
                      "the first block input whose top-k overlap exceeds tau",
                      checks=overlap_at_chance("ed_overlap"), reference_rules=True),
    ),
))
