"""What every measurement shares: result objects, per-prompt reductions, lens distances.

Results keep *per-prompt* reductions (sums and token counts for means, maxima for maxes) next to
the aggregate, because the effective-depth confidence intervals resample prompts: a token-weighted
mean over a bootstrap sample is ``sum(sums[idx]) / sum(counts[idx])``, which needs both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from ..engine.adapter import Adapter
from ..engine.batch import Batch

__all__ = [
    "MetricResult",
    "token_mean",
    "prompt_chunks",
    "lens_prob_distance",
    "lens_rows",
    "CleanLensProbs",
    "EPS",
    "check_skip_front",
    "TokenMaps",
]

#: denominators of relative norms and cosines are clamped here (docs/methods.md §1)
EPS = 1e-6


def token_mean(sums: Tensor, counts: Tensor, idx: Tensor | Sequence[int] | None = None) -> Tensor:
    """Token-weighted mean over prompts ``idx`` (all by default): ``sum(sums) / sum(counts)``."""
    if idx is not None:
        idx = torch.as_tensor(idx, dtype=torch.long)
        sums, counts = sums[idx], counts[idx]
    total = counts.sum().clamp(min=1)
    return sums.sum(0) / total


def check_skip_front(skip_front: int) -> None:
    from ..errors import ConfigError

    if skip_front < 0:
        raise ConfigError(f"skip_front must be >= 0, got {skip_front}")


def prompt_chunks(batch: Batch, size: int) -> Iterator[tuple[list[int], Batch]]:
    """Consecutive groups of at most ``size`` prompts (row indices, sub-batch)."""
    size = max(1, size)
    for start in range(0, batch.size, size):
        rows = list(range(start, min(start + size, batch.size)))
        yield rows, batch.select(rows) if len(rows) < batch.size else batch


def lens_prob_distance(
    adapter: Adapter,
    h_new: Float[Tensor, "n d_model"],
    h_ref: Float[Tensor, "n d_model"] | Any,
    chunk: int = 256,
) -> Float[Tensor, " n"]:
    """``‖softmax(lens(h_new)) − softmax(lens(h_ref))‖₂`` per row, in float32, chunked so that
    only ``chunk × vocab`` probabilities exist at a time. ``h_ref`` is the reference residuals, or
    a callable ``rows -> probabilities`` (a :class:`CleanLensProbs` bound to the rows'
    positions), so that a clean position compared with many intervened rows is unembedded
    once."""
    out = []
    for i in range(0, h_new.shape[0], chunk):
        p_new = adapter.lens_probs(h_new[i : i + chunk])
        if callable(h_ref):
            p_ref = h_ref(slice(i, i + chunk)).to(p_new.device)
        else:
            p_ref = adapter.lens_probs(h_ref[i : i + chunk].to(h_new.device))
        out.append((p_new - p_ref).norm(dim=-1))
    if not out:
        return torch.zeros(0, device=h_new.device)
    return torch.cat(out)


#: the bytes of one ``[rows, vocab]`` float32 block of lens log-probabilities (:func:`lens_rows`)
LENS_BLOCK_BYTES = 64 << 20


def lens_rows(d_vocab: int, budget: int = LENS_BLOCK_BYTES) -> int:
    """How many rows to unembed at a time: as many as keep one ``[rows, vocab]`` float32 block
    within ``budget`` bytes, between 16 and 512 (341 rows for a 49,152-token vocabulary, 64 for
    262,144). Few rows leave the unembedding matrix memory-bound: on a 2-core CPU, 32 rows of
    SmolLM2's vocabulary cost 1.9 ms each, 256 rows 0.8 ms (``lens_logits``)."""
    return int(min(512, max(16, budget // (4 * max(int(d_vocab), 1)))))


#: the most memory :class:`CleanLensProbs` keeps (bytes); beyond it rows are recomputed
CLEAN_PROBS_BUDGET = 512 << 20


class CleanLensProbs:
    """``softmax(lens(h_L))`` of a clean pass's (prompt, position)s, each computed on first use
    and kept (when the whole ``[prompt, position, vocab]`` table fits in ``budget`` bytes; else
    recomputed per request). A sweep compares every intervened row with the same clean
    positions: with the table, the reference side of :func:`lens_prob_distance` costs one
    unembedding per position instead of one per row."""

    def __init__(self, adapter: Adapter, h_final: Float[Tensor, "prompt pos d_model"],
                 budget: int = CLEAN_PROBS_BUDGET, chunk: int = 256) -> None:
        self.adapter, self.h, self.chunk = adapter, h_final, chunk
        B, T = int(h_final.shape[0]), int(h_final.shape[1])
        self.width = T
        self.table: Tensor | None = None
        if B * T * int(adapter.d_vocab) * 4 <= budget:
            self.table = torch.empty(B, T, int(adapter.d_vocab), dtype=torch.float32,
                                     device=h_final.device)
            self.done = torch.zeros(B, T, dtype=torch.bool, device=h_final.device)

    def rows(self, prompts: Tensor, positions: Tensor) -> Tensor:
        """The probabilities ``[n, vocab]`` at ``(prompts[i], positions[i])``."""
        prompts, positions = (x.to(self.h.device) for x in (prompts, positions))
        if self.table is None:
            return self.adapter.lens_probs(self.h[prompts, positions])
        need = ~self.done[prompts, positions]
        if bool(need.any()):
            keys = torch.unique(prompts[need] * self.width + positions[need])
            for i in range(0, len(keys), self.chunk):
                k = keys[i : i + self.chunk]
                p, t = k // self.width, k % self.width
                self.table[p, t] = self.adapter.lens_probs(self.h[p, t])
                self.done[p, t] = True
        return self.table[prompts, positions]

    def at(self, prompts: Tensor, positions: Tensor) -> Any:
        """The reference of :func:`lens_prob_distance` for rows at ``(prompts, positions)``."""
        return lambda sl: self.rows(prompts[sl], positions[sl])


def lens_argmax(adapter: Adapter, h: Float[Tensor, "... d_model"], chunk: int = 256) -> Tensor:
    """The logit lens's top token of every residual in ``h`` (any leading shape), ``chunk`` rows
    at a time: never ``rows × vocab`` logits for more than ``chunk`` rows (early exit on a
    151,936-token vocabulary would otherwise hold ``(L+1) × answer × vocab`` logits at once)."""
    flat = h.reshape(-1, h.shape[-1])
    out = [adapter.lens_logits(flat[i : i + chunk]).argmax(-1) for i in range(0, flat.shape[0], chunk)]
    if not out:
        return torch.zeros(h.shape[:-1], dtype=torch.long, device=h.device)
    return torch.cat(out).reshape(h.shape[:-1])


@dataclass
class MetricResult:
    """Base of the typed results: tensors + metadata, no plotting code, no files.

    ``curves()`` are the small per-layer arrays that go to ``results.json``; ``tensors()`` the
    larger matrices and maps for ``tensors.safetensors``. Figures live in
    :mod:`effective_depth.viz` (``figure_for(result)`` dispatches on the result's type): metrics
    never import viz or plotly.
    """

    name: ClassVar[str] = "metric"
    meta: dict[str, Any] = field(default_factory=dict, kw_only=True)

    def curves(self) -> dict[str, Any]:
        raise NotImplementedError

    def tensors(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def curves_of(self, idx: Sequence[int] | None = None) -> dict[str, Tensor] | None:
        """The per-layer curves recomputed over the prompts ``idx`` (all by default), or None
        when the result cannot: what a bootstrap over prompts resamples for the curves'
        confidence bands (``effective_depth.store.frames``).

        Results that keep per-prompt data override this. The default offers, for ``idx=None``
        only, every list of numbers in :meth:`curves` (so a new measurement's curves appear in
        tables without a band until it overrides this).
        """
        if idx is not None:
            return None
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in self.curves().items()
                if isinstance(v, list) and v and all(isinstance(x, (int, float)) and
                                                     not isinstance(x, bool) for x in v)}

    def entry(self) -> dict[str, Any]:
        """This result's ``results.json`` entry (``meta``, ``curves``; subclasses add keys)."""
        return {"meta": self.meta, "curves": self.curves()}

    @classmethod
    def from_entry(cls, tensors: dict[str, Tensor], entry: dict[str, Any]) -> MetricResult:
        """The result rebuilt from its tensors and its ``results.json`` entry."""
        return cls.from_tensors(tensors, entry.get("meta", {}))  # type: ignore[attr-defined]

    @property
    def n_prompts(self) -> int:
        return int(self.meta.get("n_prompts", 0))

    def _repr_html_(self) -> str:
        """A compact table in notebooks: the parameters and one row per curve."""
        from ..display import render_html

        return render_html("result", self)


@dataclass
class TokenMaps(MetricResult):
    """Per-example maps: rows are layers (or residual boundaries), columns the example's tokens,
    labelled by ``str_tokens``. Subclasses add their own fields."""

    maps: list[Tensor]
    str_tokens: list[list[str]]

    def __post_init__(self) -> None:
        if len(self.maps) != len(self.str_tokens):
            raise ValueError(f"{len(self.maps)} maps for {len(self.str_tokens)} token lists")
        for i, (m, toks) in enumerate(zip(self.maps, self.str_tokens)):
            if m.dim() != 2 or m.shape[1] != len(toks):
                raise ValueError(f"map {i} has shape {tuple(m.shape)} for {len(toks)} tokens")

    def curves(self) -> dict[str, Any]:
        return {"str_tokens": self.str_tokens}

    def curves_of(self, idx: Sequence[int] | None = None) -> dict[str, Tensor] | None:
        """Maps have no per-layer curve over prompts."""
        return {}

    def tensors(self) -> dict[str, Tensor]:
        return {f"map.{i}": m for i, m in enumerate(self.maps)}

    @classmethod
    def from_entry(cls, tensors: dict[str, Tensor], entry: dict[str, Any]) -> MetricResult:
        str_tokens = entry.get("curves", {}).get("str_tokens", [])
        return cls.from_tensors(tensors, entry.get("meta", {}), str_tokens)  # type: ignore[attr-defined]

    @staticmethod
    def maps_from(tensors: dict[str, Tensor], str_tokens: list[list[str]]) -> list[Tensor]:
        return [tensors[f"map.{i}"] for i in range(len(str_tokens))]
