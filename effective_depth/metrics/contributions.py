"""Residual contributions (docs/methods.md §1; Csordás et al. 2025, "relative contribution").

How much does each block write into the residual stream, relative to what is already there, and
does it add to the stream (cosine > 0) or erase it (cosine < 0)? Per block ``l``:

* ``rel_attn = ‖a_l‖ / ‖h_l‖``, ``rel_mlp = ‖m_l‖ / ‖h_l + a_l‖``, ``rel_block = ‖d_l‖ / ‖h_l‖``
* ``cos_attn = cos(a_l, h_l)``, ``cos_mlp = cos(m_l, h_l + a_l)``, ``cos_block = cos(d_l, h_l)``
* ``cos_resid = cos(h_{l+1}, h_l)``; ``block_influence = 1 - cos_resid`` (ShortGPT, Men et al.
  2024)

each a token-weighted mean over every measured token of every prompt, computed in float32 with
denominators clamped at 1e-6. ``d_l = h_{l+1} - h_l`` is read from the stream, so parallel blocks
(GPT-J, NeoX) are handled without assuming ``d_l = a_l + m_l``.

Also the mean *angular distance* ``arccos(cos(h_i, h_j)) / π`` between every pair of residual
boundaries (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from ..engine.adapter import get_adapter
from ..engine.batch import BatchLike, as_batch, measured_mask, query_starts
from ..progress import tqdm
from .base import EPS, MetricResult, check_skip_front, prompt_chunks, token_mean
from .costs import MeasurementCost, Workload
from .registry import EstimatorSpec, MetricSpec, register_metric
from .rules import ed_cos

__all__ = ["Contributions", "contributions", "CONTRIBUTION_CURVES"]

CONTRIBUTION_CURVES = (
    "rel_attn",
    "rel_mlp",
    "rel_block",
    "cos_attn",
    "cos_mlp",
    "cos_block",
    "cos_resid",
)


@dataclass
class Contributions(MetricResult):
    """Per-prompt sums of every curve (``sums[name]``: ``[prompt, layer]``), token counts, and
    the per-prompt summed angular-distance matrices ``[prompt, L+1, L+1]``."""

    name: ClassVar[str] = "contributions"
    sums: dict[str, Float[Tensor, "prompt layer"]]
    counts: Float[Tensor, " prompt"]
    angular_sums: Float[Tensor, "prompt boundary boundary2"]

    def __post_init__(self) -> None:
        missing = set(CONTRIBUTION_CURVES) - set(self.sums)
        if missing:
            raise ValueError(f"missing contribution curves {sorted(missing)}")
        P, L = self.sums["rel_attn"].shape
        for k, v in self.sums.items():
            if tuple(v.shape) != (P, L):
                raise ValueError(f"{k} has shape {tuple(v.shape)}, expected {(P, L)}")
        if tuple(self.counts.shape) != (P,) or tuple(self.angular_sums.shape) != (P, L + 1, L + 1):
            raise ValueError("counts / angular_sums do not match the number of prompts and layers")

    @property
    def n_layers(self) -> int:
        return int(self.sums["rel_attn"].shape[1])

    def curve(self, key: str, idx: Any = None) -> Float[Tensor, " layer"]:
        """The token-weighted mean curve ``key`` over prompts ``idx`` (all by default)."""
        if key == "block_influence":
            return 1.0 - self.curve("cos_resid", idx)
        return token_mean(self.sums[key], self.counts, idx)

    def __getattr__(self, item: str) -> Any:
        if item in CONTRIBUTION_CURVES or item == "block_influence":
            return self.curve(item)
        raise AttributeError(item)

    @property
    def angular_distance(self) -> Float[Tensor, "boundary boundary2"]:
        """Mean ``arccos(cos(h_i, h_j)) / π`` over measured tokens, for boundaries i, j in 0..L."""
        return token_mean(self.angular_sums, self.counts)

    def curves(self) -> dict[str, Any]:
        out = {k: self.curve(k).tolist() for k in CONTRIBUTION_CURVES}
        out["block_influence"] = self.curve("block_influence").tolist()
        return out

    def curves_of(self, idx: Any = None) -> dict[str, Tensor]:
        return {k: self.curve(k, idx) for k in (*CONTRIBUTION_CURVES, "block_influence")}

    def tensors(self) -> dict[str, Tensor]:
        out = {f"sums.{k}": v for k, v in self.sums.items()}
        out["counts"] = self.counts
        out["angular_sums"] = self.angular_sums
        out["angular_distance"] = self.angular_distance
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Contributions:
        sums = {k.removeprefix("sums."): v for k, v in tensors.items() if k.startswith("sums.")}
        return cls(meta=meta, sums=sums, counts=tensors["counts"], angular_sums=tensors["angular_sums"])


def _cos(x: Tensor, y: Tensor) -> Tensor:
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp(min=EPS)


def _rel(x: Tensor, y: Tensor) -> Tensor:
    return x.norm(dim=-1) / y.norm(dim=-1).clamp(min=EPS)


@torch.no_grad()
def contributions(
    model: Any,
    batch: BatchLike,
    *,
    skip_front: int = 1,
    include_front: bool = True,
    positions: str = "all",
    batch_size: int = 8,
    progress: bool = False,
) -> Contributions:
    """Residual contributions and cosines of every block, from one clean pass per prompt chunk.

    ``include_front`` (default True, as in the reference papers) measures the first
    ``skip_front`` positions too (the BOS attention sink). ``positions="query"`` averages over
    the asked example's positions only (:func:`~effective_depth.engine.batch.query_starts`).
    """
    batch = as_batch(model, batch, what="contributions")
    check_skip_front(skip_front)
    query_starts(batch, positions)  # an error before any work when the prompts do not say
    adapter = get_adapter(model)
    L = adapter.n_layers
    sums = {k: torch.zeros(batch.size, L) for k in CONTRIBUTION_CURVES}
    counts = torch.zeros(batch.size)
    angular = torch.zeros(batch.size, L + 1, L + 1)
    chunks = list(prompt_chunks(batch, batch_size))
    for rows, sub in tqdm(chunks, desc="contributions", disable=not progress):
        clean = adapter.clean(sub.tokens, components=True)
        mask = measured_mask(sub.lengths, sub.width, skip_front, include_front,
                             query_starts(sub, positions)).to(clean.resid.device)
        w = mask.float()
        idx = torch.tensor(rows)
        counts[idx] = w.sum(1).cpu()
        resid = clean.resid.float()
        assert clean.attn is not None and clean.mlp is not None
        for layer in range(L):
            h, a, m = resid[layer], clean.attn[layer].float(), clean.mlp[layer].float()
            d = resid[layer + 1] - h
            values = {
                "rel_attn": _rel(a, h),
                "rel_mlp": _rel(m, h + a),
                "rel_block": _rel(d, h),
                "cos_attn": _cos(a, h),
                "cos_mlp": _cos(m, h + a),
                "cos_block": _cos(d, h),
                "cos_resid": _cos(resid[layer + 1], h),
            }
            for k, v in values.items():
                sums[k][idx, layer] = (v * w).sum(1).cpu()
        unit = resid / resid.norm(dim=-1, keepdim=True).clamp(min=EPS)  # [L+1, B, T, D]
        for j, row in enumerate(rows):
            u = unit[:, j][:, mask[j]]  # [L+1, n, D]
            cos = torch.einsum("ind,jnd->ijn", u, u).clamp(-1.0, 1.0)
            angular[row] = (torch.arccos(cos) / math.pi).sum(-1).cpu()
    meta = {
        "n_prompts": batch.size,
        "n_layers": L,
        "skip_front": skip_front,
        "include_front": include_front,
        "positions": positions,
        "parallel_blocks": adapter.parallel,
    }
    return Contributions(meta=meta, sums=sums, counts=counts, angular_sums=angular)


def _ed_cos(result: Contributions, tau: float | None, rules: str) -> Any:
    return lambda idx: ed_cos(result.curve("cos_attn", idx), result.curve("cos_mlp", idx),
                              result.curve("cos_block", idx))


def _cost(w: Workload) -> MeasurementCost:
    """One clean pass over every prompt, keeping each block's attention and MLP outputs."""
    s = w.shape
    width = max(w.lengths) * min(w.config.batch_size, len(w.lengths))
    return MeasurementCost("contributions", block_tokens=w.clean(w.every),
                           block_calls=w.clean_calls(w.every),
                           extra_bytes=2 * s.n_layers * width * s.d_model * s.itemsize)


register_metric(MetricSpec(
    name=Contributions.name,
    cost=_cost,
    result_type=Contributions,
    description="relative norms and cosines of every block's writes to the residual stream",
    run=lambda ctx: contributions(ctx.model, ctx.batch, skip_front=ctx.config.skip_front,
                                  include_front=ctx.config.include_front,
                                  positions=ctx.config.positions,
                                  batch_size=ctx.config.batch_size, progress=ctx.progress),
    estimators=(EstimatorSpec("ed_cos", Contributions.name, _ed_cos,
                              description="the last block where the mean cosine turns "
                                          "non-negative"),),
))
