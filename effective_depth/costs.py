"""Cost models: what one measurement of a study will compute, counted before it runs.

Each measurement declares its own cost model as ``MetricSpec.cost``, a function of a
:class:`Workload` (the model's shape, the prompts' lengths, answer starts and cut positions, the
study's config) that returns a :class:`MeasurementCost`. The planner (``effective_depth.planner``)
adds FLOPs, memory and a projected time; a measurement without a cost model is reported as "not
modelled" rather than as free.

The unit of work is the *block-token*: one block applied to one position of one row. A clean pass
of a prompt of ``T`` tokens is ``L·T`` of them. A *lens row* is one projection of a residual onto
the vocabulary (``2·d_model·d_vocab`` FLOPs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MeasurementCost", "ModelShape", "Workload"]


@dataclass
class MeasurementCost:
    """Work of one measurement. ``block_tokens`` counts forward block-token applications;
    ``grad_block_tokens`` those that also run backward; ``lens_rows`` vocabulary projections.
    ``sweeps``: it runs the ablation sweep, whose activations the memory budget bounds;
    ``extra_bytes``: memory it holds beyond the clean cache (e.g. per-component outputs)."""

    name: str
    block_tokens: int = 0
    grad_block_tokens: int = 0
    lens_rows: int = 0
    flops: float = 0.0
    peak_bytes: int = 0
    seconds: float = 0.0
    note: str = ""
    sweeps: bool = False
    extra_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelShape:
    """The dimensions a cost model needs, read from a TransformerLens config."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_vocab: int
    d_mlp: int
    block_params: int
    itemsize: int = 4

    @classmethod
    def of(cls, cfg: Any, itemsize: int = 4) -> ModelShape:
        d, heads = int(cfg.d_model), int(cfg.n_heads)
        d_head = int(getattr(cfg, "d_head", None) or d // heads)
        kv = int(getattr(cfg, "n_key_value_heads", None) or heads)
        d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d)
        gated = bool(getattr(cfg, "gated_mlp", False))
        block_params = d * heads * d_head * 2 + 2 * d * kv * d_head + (3 if gated else 2) * d * d_mlp
        vocab = int(getattr(cfg, "d_vocab_out", None) or cfg.d_vocab)
        return cls(int(cfg.n_layers), d, heads, d_head, vocab, d_mlp, block_params, itemsize)


@dataclass(frozen=True)
class Workload:
    """The prompts a study will measure, as a cost model sees them."""

    shape: ModelShape
    lengths: Sequence[int]
    answer_starts: Sequence[int]
    cuts: Sequence[Sequence[int]]
    config: Any

    @property
    def L(self) -> int:  # noqa: N802 - the papers' symbol
        return self.shape.n_layers

    @property
    def every(self) -> list[int]:
        return list(range(len(self.lengths)))

    def answer_tokens(self, b: int) -> int:
        return int(self.lengths[b]) - int(self.answer_starts[b])

    def measured_tokens(self, b: int) -> int:
        """Positions a per-position measurement reads (the front tokens skipped unless
        ``include_front``)."""
        return int(self.lengths[b]) - (0 if self.config.include_front else self.config.skip_front)

    @staticmethod
    def chunks(size: int, idx: Sequence[int]) -> list[list[int]]:
        idx = list(idx)
        return [idx[i:i + size] for i in range(0, len(idx), max(1, size))]

    def width(self, chunk: Sequence[int]) -> int:
        """The padded width of a chunk of prompts."""
        return max(int(self.lengths[b]) for b in chunk)

    def clean(self, idx: Sequence[int], batch_size: int | None = None) -> int:
        """Block-tokens of clean passes over ``idx`` in batches of ``batch_size`` (padded)."""
        size = batch_size or self.config.batch_size
        return sum(self.shape.n_layers * self.width(c) * len(c) for c in self.chunks(size, idx))

    def first(self, n: int) -> list[int]:
        return self.every[: max(0, n)]
