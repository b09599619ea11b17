"""Behavioural measurements for the ``ed_task`` and ``ed_prune`` estimators (docs/methods.md §6).

Exact match by greedy decoding equals *teacher-forced* exact match: greedy decoding reproduces the
answer if and only if, fed the correct prefix, the model's argmax is the next answer token at
every answer position. So one forward pass per variant tells whether an example is solved:

* **early exit**: for ``n = 0..L``, is the example solved when the answer is read from the logit
  lens after the first ``n`` blocks (the model truncated there)? ``n = L`` is the full model.
* **pruning**: with the blocks sorted by increasing *current-mode* output effect (docs/methods.md
  §2: each block skipped alone at every position; defined for every block, unlike the future
  effect, which is zero for the last block by construction), is the example solved when the
  first ``k`` blocks of that order are skipped together (``k = 0..L``)?

Per-example results are kept so the estimators can be bootstrapped over prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Bool
from torch import Tensor

from ..engine.adapter import get_adapter
from ..engine.batch import Batch, BatchLike, as_batch
from ..engine.interventions import compile_plan, skip_block
from ..engine.sweep import Chunk, Row, sweep
from ..errors import ConfigError
from ..progress import tqdm
from .base import MetricResult, lens_argmax, prompt_chunks
from .costs import MeasurementCost, Workload
from .registry import EstimatorSpec, MetricSpec, register_metric
from .rules import ed_prune, ed_task

__all__ = ["Behaviour", "behaviour", "prune_order"]


@dataclass
class Behaviour(MetricResult):
    name: ClassVar[str] = "behaviour"
    correct_by_exit: Bool[Tensor, "prompt exits"]
    correct_by_prune: Bool[Tensor, "prompt exits"]
    prune_order: list[int]

    def __post_init__(self) -> None:
        if len(self.prune_order) != self.correct_by_exit.shape[1] - 1:
            raise ValueError("prune_order must list every block once")

    @property
    def correct_full(self) -> Tensor:
        return self.correct_by_exit[:, -1]

    def accuracy(self, idx: Any = None) -> float:
        return float(self._rows(self.correct_full, idx).float().mean())

    def accuracy_by_exit(self, idx: Any = None) -> Tensor:
        return self._rows(self.correct_by_exit, idx).float().mean(0)

    def accuracy_by_prune(self, idx: Any = None) -> Tensor:
        return self._rows(self.correct_by_prune, idx).float().mean(0)

    @staticmethod
    def _rows(t: Tensor, idx: Any) -> Tensor:
        return t if idx is None else t[torch.as_tensor(idx, dtype=torch.long)]

    def curves(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy(),
            "accuracy_by_exit": self.accuracy_by_exit().tolist(),
            "accuracy_by_prune": self.accuracy_by_prune().tolist(),
            "prune_order": list(self.prune_order),
        }

    def curves_of(self, idx: Any = None) -> dict[str, Tensor]:
        return {"accuracy_by_exit": self.accuracy_by_exit(idx),
                "accuracy_by_prune": self.accuracy_by_prune(idx)}

    def tensors(self) -> dict[str, Tensor]:
        return {"correct_by_exit": self.correct_by_exit, "correct_by_prune": self.correct_by_prune}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Behaviour:
        return cls(tensors["correct_by_exit"].bool(), tensors["correct_by_prune"].bool(),
                   list(meta["prune_order"]), meta=meta)


def prune_order(output_effect: Tensor) -> list[int]:
    """Blocks by increasing output effect (ties: lower block first)."""
    effect = output_effect.float().tolist()
    return sorted(range(len(effect)), key=lambda s: (effect[s], s))


@torch.no_grad()
def behaviour(
    model: Any,
    batch: BatchLike,
    *,
    order: Sequence[int],
    batch_size: int = 16,
    memory_budget: int | None = None,
    progress: bool = False,
) -> Behaviour:
    """Per-example exact match for every early-exit depth and every pruning prefix of ``order``."""
    batch = as_batch(model, batch, what="behaviour")
    batch.require_answers("task behaviour (exact match)")
    adapter = get_adapter(model)
    L = adapter.n_layers
    order = [int(s) for s in order]
    if sorted(order) != list(range(L)):
        raise ConfigError(f"the pruning order must list blocks 0..{L - 1} once each, got {order}")
    exit_ok = torch.zeros(batch.size, L + 1, dtype=torch.bool)
    prune_ok = torch.zeros(batch.size, L + 1, dtype=torch.bool)
    bar = tqdm(total=batch.size * (L + 1), desc="task behaviour", disable=not progress)
    for rows, sub in prompt_chunks(batch, batch_size):
        clean = adapter.clean(sub.tokens)
        device = clean.resid.device
        preds = [torch.tensor(sub.answer_predicting_positions(j), device=device) for j in range(sub.size)]
        for j, row in enumerate(rows):
            answer = sub.tokens[j, preds[j] + 1].to(device)
            guess = lens_argmax(adapter, clean.resid[:, j, preds[j]])  # [L+1, n_answer]
            exit_ok[row] = (guess == answer[None]).all(-1).cpu()
        plan_rows = []
        for j in range(sub.size):
            for k in range(1, L + 1):
                specs = [skip_block(s) for s in order[:k]]
                plan_rows.append(Row((j, k), j, compile_plan(specs, adapter, clean, j)))

        def on_final(chunk: Chunk, h: Tensor, rows: list[int] = rows,
                     preds: list[Tensor] = preds, sub: Batch = sub) -> None:
            for r, (j, k) in enumerate(chunk.keys):
                pred = preds[j]
                answer = sub.tokens[j, pred + 1].to(h.device)
                guess = lens_argmax(adapter, h[r, chunk.columns(pred)])
                prune_ok[rows[j], k] = bool((guess == answer).all())

        sweep(adapter, clean, plan_rows, on_final=on_final, memory_budget=memory_budget,
              progress=bar)
        prune_ok[rows, 0] = exit_ok[rows, L]
        bar.update(len(rows))
    bar.close()
    meta = {"n_prompts": batch.size, "n_layers": L, "prune_order": order,
            "method": "teacher-forced exact match (equals greedy decoding)"}
    return Behaviour(exit_ok, prune_ok, order, meta=meta)


#: what the pruning order is sorted by (stored in the result's meta as ``prune_order_by``)
ORDER_BASIS = ("current-mode output effect: each block skipped alone at every position from "
               "skip_front, ||p' - p||_2 of the output distributions, mean over measured "
               "positions and prompts; ascending, ties to the lower block")


def order_effect(ctx: Any) -> tuple[Tensor, str]:
    """The per-block effect the pruning order sorts by, and where it came from.

    It must be defined for every block: the *current*-mode output effect (skip block ``s`` at
    every position, measure everywhere). Future-mode effects cannot order blocks: skipping the
    last block before the cut changes nothing at or after the cut, so its future effect is zero
    by construction and it would always be pruned first. The study's own skip effects are reused
    when they are current-mode whole-block effects; otherwise they are measured here."""
    skips = ctx.done.get("skip_effects")
    if (skips is not None and skips.meta.get("component") == "block"
            and skips.meta.get("mode") == "current"):
        front = int(skips.meta.get("skip_front", 1))
        return (skips.output_effect_of(aggregate="mean"),
                f"the study's skip_effects (current mode, block, skip_front={front})")
    from .skip_effects import skip_effects

    effect = skip_effects(ctx.model, ctx.batch, mode="current", aggregate="mean",
                          skip_front=0).output_effect
    return effect, "measured for the order (current mode, block, skip_front=0)"


def _run(ctx: Any) -> Behaviour:
    effect, source = order_effect(ctx)
    effect = torch.nan_to_num(effect, nan=0.0)
    result = behaviour(ctx.model, ctx.batch, order=prune_order(effect), progress=ctx.progress)
    result.meta.update({"prune_order_by": ORDER_BASIS, "prune_order_source": source,
                        "prune_order_effect": [float(x) for x in effect.tolist()]})
    return result


def _cost(w: Workload) -> MeasurementCost:
    """Early exit reads a clean pass (batches of 16). Pruning the first ``k`` blocks of the order
    resumes at the lowest of them; the order is known only when measured, so the count takes
    its expectation for an order drawn at random, ``(L − k)/(k + 1)`` (the expected least of
    ``k`` of ``L`` blocks): about ``L·(L − H_L)`` blocks per prompt rather than the bound
    ``L(L+1)/2``. Unless the study's skip effects are current-mode whole-block ones, the order's
    current-mode output effects are measured first (batches of 8: a clean pass, then
    ``L(L−1)/2`` resumed blocks and ``2L·T`` lens rows per prompt)."""
    L = w.L
    lowest = [(L - k) / (k + 1) for k in range(1, L + 1)]
    per_prompt = sum(L - s for s in lowest)
    m = MeasurementCost("behaviour", block_tokens=w.clean(w.every, batch_size=16), sweeps=True,
                        block_calls=w.clean_calls(w.every, batch_size=16),
                        note="pruning rows counted for a random order (the order is known only "
                             "when measured)")
    for c in w.chunks(16, w.every):
        starts = []
        for b in c:
            m.block_tokens += int(per_prompt * w.width(c))
            m.lens_rows += (2 * L + 1) * w.answer_tokens(b)
            starts += [int(s) for s in lowest]
        m.block_calls += w.sweep_calls(starts, w.width(c))
    skips = w.options("skip_effects")
    reused = ("skip_effects" in w.config.metrics and skips.mode == "current"
              and skips.component == "block")
    if not reused:
        m.block_tokens += w.clean(w.every, batch_size=8)
        m.block_calls += w.clean_calls(w.every, batch_size=8)
        for c in w.chunks(8, w.every):
            starts = []
            for b in c:
                m.block_tokens += L * (L - 1) // 2 * w.width(c)
                m.lens_rows += 2 * L * int(w.lengths[b])
                starts += [s + 1 for s in range(L)]
            m.block_calls += w.sweep_calls(starts, w.width(c))
    return m


def _one_prompt(rule: Any) -> Any:
    """Per prompt, the accuracies are 0 or 1: a prompt the full model gets wrong has no depth."""
    def per_prompt(r: Behaviour, eps: float | None, rules: str) -> Any:
        def apply(i: int) -> Any:
            if not bool(r.correct_full[i]):
                return None, "the full model answers this prompt wrongly"
            return rule(r, eps, rules)([i])

        return apply

    return per_prompt


def _ed_task(r: Behaviour, eps: float | None, rules: str) -> Any:
    return lambda idx: ed_task(r.accuracy_by_exit(idx), r.accuracy(idx), eps)


def _ed_prune(r: Behaviour, eps: float | None, rules: str) -> Any:
    return lambda idx: ed_prune(r.accuracy_by_prune(idx), r.accuracy(idx), eps)


register_metric(MetricSpec(
    name=Behaviour.name,
    cost=_cost,
    result_type=Behaviour,
    requires=("skip_effects",),
    description="exact-match accuracy after every early exit and every pruning prefix",
    run=_run,
    needs_answers=True,
    estimators=(
        EstimatorSpec("ed_task", Behaviour.name, _ed_task,
                      0.01, "early exit: the fewest blocks that keep the accuracy within eps",
                      per_prompt=_one_prompt(_ed_task)),
        EstimatorSpec("ed_prune", Behaviour.name, _ed_prune,
                      0.01, "the fewest blocks left when the most skippable ones are pruned",
                      per_prompt=_one_prompt(_ed_prune)),
    ),
    summaries=lambda result, config: {"accuracy": result.accuracy()},
    correctness=lambda result: result.correct_full.tolist(),
))
