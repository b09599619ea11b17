"""Pruning criteria side by side (docs/methods.md, "Pruning criteria").

Each criterion says which blocks to remove when ``k`` of the model's ``L`` blocks go, for
``k = 1 … k_max`` (``k_max = L // 2`` by default); every removal set is then evaluated on
held-out examples by the engine's pruned forward (every block of the set skipped at every
position, ``h_{s+1} := h_s``: exactly the model with those blocks deleted). The criteria are
measured on *calibration* examples, never on the evaluation ones:

============  ================================================================================
``angular``   Gromov et al. 2024: for each ``n = k``, the contiguous run ``l … l+n−1`` whose
              boundary residuals are closest, ``argmin_l d(h_l, h_{l+n})`` with ``d`` the mean
              angular distance ``arccos(cos(h_l, h_{l+n})) / π`` over tokens (the
              ``contributions`` measurement's matrix); sets need not nest
``influence`` ShortGPT (Men et al. 2024): block influence ``BI_l = 1 − cos(h_l, h_{l+1})``, token
              mean; the ``k`` lowest go
``output``    current-mode output effect of skipping the block alone (``skip_effects``, mode
              current, mean; the order of ``ed_prune``); the ``k`` lowest go
``future``    future-mode output effect (``skip_effects``, mode future, mean): the effect of
              skipping the block before a cut on the output after it; zero for the last block by
              construction, so it goes first
``greedy``    SLEB-style (Song et al. 2024): starting from the full model, repeatedly remove
              the block whose removal (together with those already removed) loses the least
              mean log-likelihood of the calibration answers; sets nest
``random``    a seeded random order (``random.Random(seed)``): the floor
============  ================================================================================

Per removal set and evaluation prompt: exact match (teacher-forced argmax of every answer token
equals it: the same as greedy decoding, :mod:`effective_depth.metrics.behaviour`) and the mean
log-probability of the answer tokens. Curves over ``k`` are means over prompts with pointwise
percentile bootstrap bands over prompts (:func:`effective_depth.stats.curve_bands`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..engine.adapter import get_adapter
from ..engine.batch import Batch, BatchLike, as_batch
from ..engine.interventions import compile_plan, skip_block
from ..engine.sweep import Chunk, Row, sweep
from ..errors import ConfigError, close_matches
from ..metrics.base import prompt_chunks
from ..metrics.behaviour import prune_order
from ..progress import tqdm
from ..stats import curve_bands

__all__ = ["CRITERIA", "CRITERION_DEFINITIONS", "Ranking", "PruningComparison", "SetEvaluator",
           "check_criteria", "check_k_max", "rank_blocks", "angular_sets", "order_sets",
           "greedy_sets", "compare_criteria", "pruned_logits"]

#: the criteria, in the order tables and figures list them
CRITERIA = ("angular", "influence", "output", "future", "greedy", "random")

CRITERION_DEFINITIONS = {
    "angular": "Gromov et al. 2024: the contiguous run of k blocks whose boundary residuals "
               "h_l, h_{l+k} have the least mean angular distance arccos(cos)/pi",
    "influence": "ShortGPT block influence 1 - cos(h_l, h_{l+1}), token mean; lowest first",
    "output": "current-mode output effect ||p' - p||_2 of skipping the block alone, mean; "
              "lowest first (ed_prune's order)",
    "future": "future-mode output effect of skipping the block before a cut, mean; lowest "
              "first (the last block's is 0 by construction)",
    "greedy": "SLEB-style: repeatedly remove the block whose removal loses the least mean "
              "answer log-likelihood on the calibration examples",
    "random": "a seeded random order (the floor)",
}


def check_criteria(names: str | Sequence[str] | None) -> list[str]:
    """The criteria asked for (a comma-separated string or a list; None: all), each known."""
    if names is None:
        return list(CRITERIA)
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    out = []
    for n in (x.strip() for x in names):
        if not n:
            continue
        if n not in CRITERIA:
            raise ConfigError(f"unknown pruning criterion {n!r}{close_matches(n, CRITERIA)} "
                              f"Valid criteria: {', '.join(CRITERIA)}")
        if n not in out:
            out.append(n)
    if not out:
        raise ConfigError(f"no pruning criterion given; choose from {', '.join(CRITERIA)}")
    return out


def check_k_max(k_max: int | None, n_layers: int) -> int:
    """The most blocks removed (default ``L // 2``), within ``1 … L − 1``."""
    if k_max is None:
        return max(1, n_layers // 2)
    if not 1 <= int(k_max) <= n_layers - 1:
        raise ConfigError(f"blocks to remove must be within 1..{n_layers - 1} for a model of "
                          f"{n_layers} blocks, got {k_max}")
    return int(k_max)


@dataclass
class Ranking:
    """What one criterion removes: ``sets[k-1]`` are the blocks removed when ``k`` go (sorted);
    ``scores`` the per-block quantity it ranks by (None for ``angular``, whose score is per run:
    ``scores_by_k``), ``order`` the blocks in removal order when the sets nest."""

    criterion: str
    sets: list[list[int]]
    scores: list[float] | None = None
    order: list[int] | None = None
    source: str = ""
    #: per k: the quantity the k-th choice minimised (angular: d(h_l, h_{l+k}); greedy: the
    #: calibration loss after the k-th removal)
    scores_by_k: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "definition": CRITERION_DEFINITIONS[self.criterion],
                "sets": self.sets, "scores": self.scores, "order": self.order,
                "scores_by_k": self.scores_by_k, "source": self.source}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ranking:
        return cls(data["criterion"], [list(s) for s in data["sets"]], data.get("scores"),
                   data.get("order"), data.get("source", ""), data.get("scores_by_k"))


def order_sets(order: Sequence[int], k_max: int) -> list[list[int]]:
    """The nested sets of the first ``k`` blocks of ``order``, ``k = 1 … k_max``."""
    return [sorted(int(b) for b in order[:k]) for k in range(1, k_max + 1)]


def angular_sets(distance: Tensor, k_max: int) -> tuple[list[list[int]], list[float]]:
    """Gromov et al.'s choice for every ``n = 1 … k_max``: the run ``l … l+n−1`` with the least
    ``distance[l, l+n]`` (``distance`` is the ``[L+1, L+1]`` mean angular distance between
    boundaries; ties to the lower ``l``), and that distance."""
    L = int(distance.shape[0]) - 1
    sets, best = [], []
    for n in range(1, k_max + 1):
        d = torch.stack([distance[b, b + n] for b in range(L - n + 1)]).float()
        l_star = int(torch.argmin(d))  # the first minimum: the lower block on a tie
        sets.append(list(range(l_star, l_star + n)))
        best.append(float(d[l_star]))
    return sets, best


class SetEvaluator:
    """Exact match and answer log-likelihood of a batch under any set of removed blocks.

    The clean pass of every chunk of prompts is made once and kept; each call of :meth:`run`
    resumes every (set, prompt) row from it at the lowest removed block (the engine's sweep:
    rows share batched forwards, chunked to a memory budget)."""

    def __init__(self, model: Any, batch: BatchLike, *, batch_size: int = 16,
                 memory_budget: int | None = None) -> None:
        self.batch = as_batch(model, batch, what="pruning")
        self.batch.require_answers("pruning (exact match and answer log-likelihood)")
        self.adapter = get_adapter(model)
        self.memory_budget = memory_budget
        self.chunks: list[tuple[list[int], Batch, Any]] = []
        for rows, sub in prompt_chunks(self.batch, batch_size):
            self.chunks.append((rows, sub, self.adapter.clean(sub.tokens)))

    @property
    def n_prompts(self) -> int:
        return self.batch.size

    @torch.no_grad()
    def run(self, sets: Sequence[Sequence[int]], progress: Any = None
            ) -> tuple[Tensor, Tensor]:
        """``correct [set, prompt]`` (bool) and ``loglik [set, prompt]``: the mean log-probability
        of the prompt's answer tokens, each read from the position before it."""
        adapter = self.adapter
        L = adapter.n_layers
        for s in sets:
            bad = [b for b in s if not 0 <= int(b) < L]
            if bad:
                raise ConfigError(f"blocks {bad} outside 0..{L - 1}")
        S, P = len(sets), self.batch.size
        correct = torch.zeros(S, P, dtype=torch.bool)
        loglik = torch.zeros(S, P, dtype=torch.float64)
        for rows, sub, clean in self.chunks:
            device = clean.resid.device
            preds = [torch.tensor(sub.answer_predicting_positions(j), device=device)
                     for j in range(sub.size)]
            plan_rows = []
            for i, s in enumerate(sets):
                specs = [skip_block(int(b)) for b in sorted(set(int(b) for b in s))]
                for j in range(sub.size):
                    plan_rows.append(Row((i, j), j, compile_plan(specs, adapter, clean, j)))

            def on_final(chunk: Chunk, h: Tensor, rows: list[int] = rows,
                         preds: list[Tensor] = preds, sub: Batch = sub) -> None:
                for r, (i, j) in enumerate(chunk.keys):
                    pred = preds[j]
                    answer = sub.tokens[j, pred + 1].to(h.device)
                    logp = adapter.lens_log_probs(h[r, chunk.columns(pred)])  # [n_answer, V]
                    correct[i, rows[j]] = bool((logp.argmax(-1) == answer).all())
                    loglik[i, rows[j]] = float(logp.gather(-1, answer[:, None]).mean())

            sweep(adapter, clean, plan_rows, on_final=on_final, memory_budget=self.memory_budget,
                  progress=progress)
        return correct, loglik


@torch.no_grad()
def pruned_logits(model: Any, tokens: Tensor, removed: Sequence[int]) -> Tensor:
    """The toolkit's own forward of ``model`` with the blocks ``removed`` skipped at every
    position (``h_{s+1} := h_s``): logits ``[batch, pos, vocab]`` in float32. It equals the
    forward of the checkpoint exported without those blocks
    (:func:`effective_depth.models.export.export_pruned`)."""
    adapter = get_adapter(model)
    clean = adapter.clean(tokens)
    specs = [skip_block(int(b)) for b in sorted(set(int(b) for b in removed))]
    rows = [Row(j, j, compile_plan(specs, adapter, clean, j)) for j in range(tokens.shape[0])]
    finals: dict[int, Tensor] = {}

    def on_final(chunk: Chunk, h: Tensor) -> None:
        for r, j in enumerate(chunk.keys):
            finals[int(j)] = h[r]

    sweep(adapter, clean, rows, on_final=on_final)
    h = torch.stack([finals[j] for j in range(tokens.shape[0])])
    return adapter.lens_logits(h).float()


def _unique(sets: Sequence[Sequence[int]]) -> tuple[list[tuple[int, ...]], list[int]]:
    """The distinct sets (as sorted tuples) and each set's index among them."""
    keys: dict[tuple[int, ...], int] = {}
    index = []
    for s in sets:
        key = tuple(sorted(int(b) for b in s))
        index.append(keys.setdefault(key, len(keys)))
    return list(keys), index


def greedy_sets(evaluator: SetEvaluator, k_max: int, progress: bool = False
                ) -> tuple[list[list[int]], list[float], list[int]]:
    """SLEB-style greedy removal on the calibration examples of ``evaluator``: at step ``k`` every
    remaining block is tried with the ``k − 1`` already removed, and the one whose set keeps the
    highest mean answer log-likelihood goes (ties to the lower block). Returns the nested sets,
    the calibration loss (minus that log-likelihood) after each step, and the removal order."""
    L = evaluator.adapter.n_layers
    removed: list[int] = []
    losses: list[float] = []
    total = sum(L - k for k in range(k_max)) * evaluator.n_prompts
    bar = tqdm(total=total, desc="greedy removal", disable=not progress)
    for _ in range(k_max):
        candidates = [b for b in range(L) if b not in removed]
        _, ll = evaluator.run([removed + [b] for b in candidates], progress=bar)
        loss = -ll.mean(1)
        best = int(torch.argmin(loss))  # first minimum: the lower block on a tie
        removed.append(candidates[best])
        losses.append(float(loss[best]))
    bar.close()
    return order_sets(removed, k_max), losses, removed


def rank_blocks(model: Any, calib: BatchLike, criteria: Sequence[str], k_max: int, *,
                seed: int = 0, batch_size: int = 8, evaluator: SetEvaluator | None = None,
                progress: bool = False) -> tuple[dict[str, Ranking], dict[str, str]]:
    """Every criterion's removal sets for ``k = 1 … k_max``, measured on the calibration batch.
    A criterion that cannot be measured on it (future effects need prompts long enough for a
    cut) is left out with the reason (the second mapping)."""
    from ..metrics.contributions import contributions
    from ..metrics.skip_effects import skip_effects

    calib = as_batch(model, calib, what="pruning criteria")
    L = get_adapter(model).n_layers
    out: dict[str, Ranking] = {}
    skipped: dict[str, str] = {}
    if "angular" in criteria or "influence" in criteria:
        contrib = contributions(model, calib, batch_size=batch_size, progress=progress)
        if "angular" in criteria:
            sets, best = angular_sets(contrib.angular_distance, k_max)
            out["angular"] = Ranking("angular", sets, None, None,
                                     "contributions.angular_distance (every token)", best)
        if "influence" in criteria:
            bi = torch.nan_to_num(contrib.curve("block_influence"), nan=0.0)
            order = prune_order(bi)
            out["influence"] = Ranking("influence", order_sets(order, k_max),
                                       [float(x) for x in bi], order,
                                       "contributions.block_influence (every token)")
    if "output" in criteria:
        effect = skip_effects(model, calib, mode="current", aggregate="mean", skip_front=0,
                              batch_size=batch_size, progress=progress).output_effect
        effect = torch.nan_to_num(effect, nan=0.0)
        order = prune_order(effect)
        out["output"] = Ranking("output", order_sets(order, k_max), [float(x) for x in effect],
                                order, "skip_effects (current mode, block, mean, skip_front=0)")
    if "future" in criteria:
        try:
            effect = skip_effects(model, calib, mode="future", aggregate="mean",
                                  batch_size=batch_size, progress=progress).output_effect
        except ConfigError as exc:
            skipped["future"] = str(exc)
        else:
            effect = torch.nan_to_num(effect, nan=0.0)
            order = prune_order(effect)
            out["future"] = Ranking("future", order_sets(order, k_max),
                                    [float(x) for x in effect], order,
                                    "skip_effects (future mode, block, mean, the cut rule's cuts)")
    if "greedy" in criteria:
        ev = evaluator or SetEvaluator(model, calib)
        sets, losses, order = greedy_sets(ev, k_max, progress=progress)
        out["greedy"] = Ranking("greedy", sets, None, order,
                                f"calibration answer log-likelihood ({ev.n_prompts} prompts)",
                                losses)
    if "random" in criteria:
        order = list(range(L))
        random.Random(seed).shuffle(order)
        out["random"] = Ranking("random", order_sets(order, k_max), None, order,
                                f"random.Random({seed}).shuffle")
    return {c: out[c] for c in criteria if c in out}, skipped


@dataclass
class PruningComparison:
    """Per criterion and ``k = 0 … k_max``: the removal sets and, per evaluation prompt, exact
    match (``correct [criterion, k, prompt]``) and answer log-likelihood (``loglik``). Row
    ``k = 0`` is the full model."""

    rankings: dict[str, Ranking]
    correct: Tensor
    loglik: Tensor
    skipped: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        C, K1, P = self.correct.shape
        if len(self.rankings) != C or tuple(self.loglik.shape) != (C, K1, P):
            raise ValueError("correct / loglik do not match the criteria")
        for r in self.rankings.values():
            if len(r.sets) != K1 - 1:
                raise ValueError(f"{r.criterion} has {len(r.sets)} sets for k = 1..{K1 - 1}")

    @property
    def criteria(self) -> list[str]:
        return list(self.rankings)

    @property
    def k_max(self) -> int:
        return int(self.correct.shape[1]) - 1

    @property
    def n_prompts(self) -> int:
        return int(self.correct.shape[2])

    @property
    def n_layers(self) -> int:
        return int(self.meta["n_layers"])

    def _row(self, criterion: str) -> int:
        if criterion not in self.rankings:
            raise ConfigError(f"no criterion {criterion!r} in this comparison (it has "
                              f"{', '.join(self.rankings)})")
        return self.criteria.index(criterion)

    def accuracy(self, criterion: str, idx: Any = None) -> Tensor:
        """Exact-match accuracy for ``k = 0 … k_max`` over prompts ``idx`` (all by default)."""
        c = self.correct[self._row(criterion)]
        if idx is not None:
            c = c[:, torch.as_tensor(idx, dtype=torch.long)]
        return c.float().mean(-1)

    def mean_loglik(self, criterion: str, idx: Any = None) -> Tensor:
        v = self.loglik[self._row(criterion)]
        if idx is not None:
            v = v[:, torch.as_tensor(idx, dtype=torch.long)]
        return v.mean(-1)

    def removed(self, criterion: str, k: int) -> list[int]:
        """The blocks ``criterion`` removes when ``k`` go."""
        if not 1 <= k <= self.k_max:
            raise ConfigError(f"blocks to remove must be within 1..{self.k_max} (the comparison "
                              f"went to {self.k_max} of {self.n_layers} blocks), got {k}")
        return list(self.rankings[self._checked(criterion)].sets[k - 1])

    def _checked(self, criterion: str) -> str:
        self._row(criterion)
        return criterion

    def curves_of(self, idx: Any = None) -> dict[str, Tensor]:
        out = {}
        for c in self.criteria:
            out[f"{c}.accuracy"] = self.accuracy(c, idx)
            out[f"{c}.loglik"] = self.mean_loglik(c, idx)
        return out

    def bands(self, n_boot: int = 1000, seed: int = 0, level: float = 0.95
              ) -> dict[str, tuple[Any, Any]] | None:
        """Pointwise percentile bootstrap bands over prompts of every curve of :meth:`curves_of`."""
        return curve_bands(self.curves_of, self.n_prompts, n_boot=n_boot, seed=seed, level=level)

    def curves(self, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
        """Per criterion: ``k``, ``accuracy``, ``loglik`` and their CI bounds, as lists."""
        bands = self.bands(n_boot, seed) or {}
        out: dict[str, Any] = {}
        for c in self.criteria:
            entry: dict[str, Any] = {"k": list(range(self.k_max + 1))}
            for what in ("accuracy", "loglik"):
                curve = self.curves_of()[f"{c}.{what}"]
                entry[what] = [float(x) for x in curve]
                band = bands.get(f"{c}.{what}")
                entry[f"{what}_ci"] = (None if band is None else
                                       [[float(lo), float(hi)] for lo, hi in zip(*band)])
            out[c] = entry
        return out

    def best_at(self, k: int) -> list[str]:
        """The criteria with the highest accuracy at ``k`` removed (ties all listed)."""
        acc = {c: float(self.accuracy(c)[k]) for c in self.criteria}
        top = max(acc.values())
        return [c for c, a in acc.items() if a == top]

    def tensors(self) -> dict[str, Tensor]:
        return {"correct": self.correct, "loglik": self.loglik}

    def to_json(self) -> dict[str, Any]:
        return {"rankings": {c: r.to_json() for c, r in self.rankings.items()},
                "skipped": dict(self.skipped), "meta": dict(self.meta)}

    @classmethod
    def from_store(cls, data: dict[str, Any], tensors: dict[str, Tensor]) -> PruningComparison:
        rankings = {c: Ranking.from_json(r) for c, r in data["rankings"].items()}
        return cls(rankings, tensors["correct"].bool(), tensors["loglik"],
                   dict(data.get("skipped", {})), dict(data.get("meta", {})))


def compare_criteria(model: Any, batch: BatchLike, calib: BatchLike, *,
                     criteria: Sequence[str] | str | None = None, k_max: int | None = None,
                     seed: int = 0, batch_size: int = 16, memory_budget: int | None = None,
                     progress: bool = False) -> PruningComparison:
    """Rank the blocks by every criterion on ``calib`` and evaluate each criterion's removal
    sets for ``k = 0 … k_max`` on ``batch`` (the held-out examples)."""
    names = check_criteria(criteria)
    L = get_adapter(model).n_layers
    k_max = check_k_max(k_max, L)
    calib_eval = (SetEvaluator(model, calib, batch_size=batch_size, memory_budget=memory_budget)
                  if "greedy" in names else None)
    rankings, skipped = rank_blocks(model, calib, names, k_max, seed=seed,
                                    evaluator=calib_eval, progress=progress)
    if not rankings:
        raise ConfigError("no criterion could be measured: " + "; ".join(
            f"{c}: {why}" for c, why in skipped.items()))
    evaluator = SetEvaluator(model, batch, batch_size=batch_size, memory_budget=memory_budget)
    all_sets = [[]] + [s for r in rankings.values() for s in r.sets]
    unique, index = _unique(all_sets)
    bar = tqdm(total=len(unique) * evaluator.n_prompts, desc="pruned accuracy",
               disable=not progress)
    correct_u, loglik_u = evaluator.run([list(u) for u in unique], progress=bar)
    bar.close()
    C, P = len(rankings), evaluator.n_prompts
    correct = torch.zeros(C, k_max + 1, P, dtype=torch.bool)
    loglik = torch.zeros(C, k_max + 1, P, dtype=torch.float64)
    for ci in range(C):
        correct[ci, 0], loglik[ci, 0] = correct_u[index[0]], loglik_u[index[0]]
        for k in range(1, k_max + 1):
            u = index[1 + ci * k_max + (k - 1)]
            correct[ci, k], loglik[ci, k] = correct_u[u], loglik_u[u]
    calib_b = as_batch(model, calib, what="pruning criteria")
    meta = {"n_layers": L, "k_max": k_max, "seed": seed, "n_prompts": P,
            "n_calib": calib_b.size, "distinct_sets": len(unique),
            "method": "every removed block skipped at every position (h_{s+1} := h_s); exact "
                      "match teacher-forced (equals greedy decoding); log-likelihood: mean "
                      "log-probability of the answer tokens per prompt"}
    return PruningComparison(rankings, correct, loglik.float(), skipped, meta)
