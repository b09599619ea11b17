"""Cost models: what one measurement of a study will compute, counted before it runs.

Each measurement declares its own cost model as ``MetricSpec.cost``, a function of a
:class:`Workload` (the model's shape, the prompts' lengths, answer starts and the inputs the
measurements drew (cut positions), the study's config) that returns a :class:`MeasurementCost`. The planner (``effective_depth.study.planner``)
adds FLOPs, memory and a projected time; a measurement without a cost model is reported as "not
modelled" rather than as free.

The unit of work is the *block-token*: one block applied to one position of one row. A clean pass
of a prompt of ``T`` tokens is ``L·T`` of them. A *block call* is one invocation of a block on a
batch of rows, whatever its size: short rows (erasure's suffixes, integrated gradients' chunks
on a small model) cost mostly calls, not tokens. A *lens row* is one projection of a residual onto
the vocabulary (``2·d_model·d_vocab`` FLOPs, and a softmax); a *lens statistics row* is the
logit lens's own work on a projected row beyond that: log-softmax, the KL to the output and the
top-k over the vocabulary, which on a large vocabulary costs as much as the projection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MeasurementCost", "ModelShape", "Workload"]


@dataclass
class MeasurementCost:
    """Work of one measurement. ``block_tokens`` counts forward block-token applications;
    ``grad_block_tokens`` those that also run backward; ``lens_rows`` vocabulary projections;
    ``lens_stat_rows`` projected rows that also get the logit lens's KL and top-k;
    ``block_calls`` (``grad_block_calls``) block invocations, forward (and backward).
    ``sweeps``: it runs the ablation sweep, whose activations the memory budget bounds;
    ``extra_bytes``: memory it holds beyond the clean cache (e.g. per-component outputs);
    ``skipped``: the study will not run it (``note`` says why), so it counts nothing."""

    name: str
    block_tokens: int = 0
    grad_block_tokens: int = 0
    lens_rows: int = 0
    lens_stat_rows: int = 0
    block_calls: int = 0
    grad_block_calls: int = 0
    flops: float = 0.0
    peak_bytes: int = 0
    seconds: float = 0.0
    note: str = ""
    sweeps: bool = False
    extra_bytes: int = 0
    skipped: bool = False

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
    #: the per-example inputs the measurements draw (``effective_depth.study.prepare.draw_inputs``)
    inputs: Mapping[str, Sequence[Any]]
    config: Any
    #: the sweep's activation budget in bytes (the engine's default on CPU: 1 GiB)
    budget: int = 1 << 30
    #: measurements whose fit is stored for this model, data and settings (read, not trained)
    reused_fits: frozenset[str] = frozenset()
    #: measurement -> what earlier runs of this model observed (store.observed): value -> (mean,
    #: runs)
    observed: Mapping[str, Mapping[str, tuple[float, int]]] = field(default_factory=dict)
    #: where each prompt's asked example starts, when the study measures ``positions="query"``
    query_starts: Sequence[int] | None = None

    @property
    def L(self) -> int:  # noqa: N802 - the papers' symbol
        return self.shape.n_layers

    @property
    def cuts(self) -> Sequence[Sequence[int]]:
        """The skip-effect cut positions of every prompt (none when not drawn)."""
        return self.inputs.get("cuts") or [[] for _ in self.lengths]

    def options(self, measurement: str) -> Any:
        """A measurement's options in the study's config."""
        return self.config.options[measurement]

    @property
    def every(self) -> list[int]:
        return list(range(len(self.lengths)))

    def answer_tokens(self, b: int) -> int:
        return int(self.lengths[b]) - int(self.answer_starts[b])

    def measured_tokens(self, b: int) -> int:
        """Positions a per-position measurement reads (the front tokens skipped unless
        ``include_front``; from the query on under ``positions="query"``: the engine's
        ``measured_mask``)."""
        start = 0 if self.config.include_front else self.config.skip_front
        if self.query_starts is not None:
            start = max(start, int(self.query_starts[b]))
        return max(0, int(self.lengths[b]) - start)

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

    def clean_calls(self, idx: Sequence[int], batch_size: int | None = None) -> int:
        """Block calls of clean passes over ``idx`` in batches of ``batch_size``."""
        size = batch_size or self.config.batch_size
        return self.shape.n_layers * len(self.chunks(size, idx))

    def rows_per_chunk(self, positions: int, prefix: int, grad: bool) -> int:
        """How many sweep rows of ``positions`` tokens the engine puts in one chunk: the
        engine's own rule (:func:`~effective_depth.engine.sweep.chunk_rows`) on the model's
        shape."""
        from ..engine.sweep import chunk_rows

        s = self.shape
        return chunk_rows(d_model=s.d_model, d_mlp=s.d_mlp, n_heads=s.n_heads,
                          n_layers=s.n_layers, itemsize=s.itemsize, positions=positions,
                          prefix=prefix, budget=self.budget, grad=grad)

    def sweep_calls(self, starts: Sequence[int], positions: int, prefix: int = 0,
                    grad: bool = False) -> int:
        """Block calls of one sweep group (rows that resume at ``starts``, over ``positions``
        tokens after ``prefix``): the engine sorts the rows by resume block, cuts them into
        chunks, and runs each chunk from its lowest resume block to the last block."""
        order = sorted(starts)
        n = self.rows_per_chunk(positions, prefix, grad)
        return sum(self.shape.n_layers - order[i] for i in range(0, len(order), n))
