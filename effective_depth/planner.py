"""What a study will cost, before it runs: block-forwards, FLOPs, memory and a projected time.

``plan_study(config)`` builds the study's prompts exactly as ``run_study`` would (same task, same
tokenizer, same cuts), counts the work each measurement does with the engine's own rules, and
turns it into time with a short *calibration pass* on the current device: one clean forward of a
real prompt (seconds per block-token) and one logit-lens chunk (seconds per vocabulary row). The
counts follow the engine (``engine/sweep.py``) and the metrics:

* a *block-token* is one block applied to one position of one row; a clean pass of a prompt of
  ``T`` tokens is ``L·T`` of them;
* skip effects: for every prompt, cut and block ``s``, the blocks ``s+1..L-1`` run on every
  position of the batch's padded width;
* behaviour: early exit reads the clean pass; pruning the first ``k`` blocks of the order
  resumes at the lowest of them (``L·(L+1)/2`` rows' worth of blocks at most per prompt);
* residual erasure: for every position ``t`` up to the last answer-predicting one and every
  boundary ``l``, the blocks ``l..L-1`` run on the positions from ``t`` on;
* integrated gradients: ``n_steps`` rows per block ``l`` run blocks ``l+1..L-1`` on every position,
  forward and backward (a backward costs two forwards) — an upper bound: where the engine runs the
  last block only on the answer-predicting positions the count is a few percent lower.

FLOPs per block-token are ``2 × (block parameters) + 4 × d_head × heads × context`` (matrix
multiplies plus attention scores and values over the causal context); a lens row is
``2 × d_model × d_vocab``. Peak activation memory is the clean cache of one prompt chunk plus the
sweep's memory budget (which chunking keeps) plus a few ``chunk × d_vocab`` float32 tensors.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["Plan", "MeasurementCost", "plan_study", "count_work", "calibrate"]

log = logging.getLogger(__name__)


@dataclass
class MeasurementCost:
    """Work of one measurement. ``block_tokens`` counts forward block-token applications;
    ``grad_block_tokens`` those that also run backward; ``lens_rows`` vocabulary projections."""

    name: str
    block_tokens: int = 0
    grad_block_tokens: int = 0
    lens_rows: int = 0
    flops: float = 0.0
    peak_bytes: int = 0
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Plan:
    model: str
    n_layers: int
    d_model: int
    d_vocab: int
    n_prompts: int
    mean_tokens: float
    weights_bytes: int
    device: str
    dtype: str
    calibration: dict[str, float]
    measurements: list[MeasurementCost] = field(default_factory=list)

    @property
    def total(self) -> MeasurementCost:
        t = MeasurementCost("total")
        for m in self.measurements:
            t.block_tokens += m.block_tokens
            t.grad_block_tokens += m.grad_block_tokens
            t.lens_rows += m.lens_rows
            t.flops += m.flops
            t.seconds += m.seconds
            t.peak_bytes = max(t.peak_bytes, m.peak_bytes)
        return t

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "measurements"}
        d["measurements"] = [m.to_dict() for m in self.measurements]
        d["total"] = self.total.to_dict()
        return d


def _shape(cfg: Any) -> dict[str, int]:
    d, heads = int(cfg.d_model), int(cfg.n_heads)
    d_head = int(getattr(cfg, "d_head", d // heads))
    kv = int(getattr(cfg, "n_key_value_heads", None) or heads)
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d)
    gated = bool(getattr(cfg, "gated_mlp", False))
    block_params = d * heads * d_head * 2 + 2 * d * kv * d_head + (3 if gated else 2) * d * d_mlp
    return {"L": int(cfg.n_layers), "d": d, "heads": heads, "d_head": d_head,
            "V": int(getattr(cfg, "d_vocab_out", None) or cfg.d_vocab), "block_params": block_params,
            "d_mlp": d_mlp}


def count_work(cfg: Any, lengths: list[int], answer_starts: list[int], cuts: list[list[int]],
               config: Any, width: int | None = None) -> dict[str, MeasurementCost]:
    """Block-tokens and lens rows of every measurement of ``config`` (no model needed)."""
    s = _shape(cfg)
    L = s["L"]
    P = len(lengths)
    sf = config.skip_front
    out: dict[str, MeasurementCost] = {}

    def chunks(size: int, idx: list[int]) -> list[list[int]]:
        return [idx[i:i + size] for i in range(0, len(idx), max(1, size))]

    def clean(idx: list[int]) -> int:
        return sum(L * max(lengths[i] for i in c) * len(c) for c in chunks(config.batch_size, idx))

    every = list(range(P))
    answers = [lengths[b] - answer_starts[b] for b in every]
    measured = [lengths[b] - (0 if config.include_front else sf) for b in every]
    for name in config.metrics:
        m = MeasurementCost(name)
        if name == "contributions":
            m.block_tokens = clean(every)
        elif name == "logit_lens":
            m.block_tokens = clean(every)
            m.lens_rows = sum((L + 1) * measured[b] for b in every)
        elif name == "skip_effects":
            m.block_tokens = clean(every)
            for c in chunks(config.batch_size, every):
                w = max(lengths[b] for b in c)
                for b in c:
                    cut_list = cuts[b] if config.skip_mode == "future" else [None]
                    for t in cut_list:
                        m.block_tokens += L * (L - 1) // 2 * w  # no suffix runs here
                        m.lens_rows += L * 2 * (lengths[b] - (t or 0))
        elif name == "behaviour":
            m.block_tokens = sum(L * max(lengths[b] for b in c) * len(c) for c in chunks(16, every))
            for c in chunks(16, every):
                w = max(lengths[b] for b in c)
                for b in c:
                    # pruning k blocks resumes at the lowest; at most sum_k (L - k + 1)
                    m.block_tokens += L * (L + 1) // 2 * w
                    m.lens_rows += (2 * L + 1) * answers[b]
            m.note = "pruning rows bounded above (the order is known only after skip effects)"
        elif name == "erasure":
            idx = every[: config.map_examples]
            ref = list(range(min(config.n_reference, P)))
            m.block_tokens = clean(idx) + clean(ref)
            for c in chunks(config.batch_size, idx):
                w = max(lengths[b] for b in c)
                for b in c:
                    last = lengths[b] - 2
                    for t in range(sf, last + 1):
                        for bd in range(L + 1):
                            # rows erased at the final residual share their chunk, so the last
                            # block runs every position from t (no truncation)
                            m.block_tokens += (L - bd) * (w - t)
                            m.lens_rows += 2 * (lengths[b] - 1 - max(t, answer_starts[b] - 1))
        elif name == "integrated_gradients":
            idx = every[: config.map_examples]
            for b in idx:
                T = lengths[b]
                m.block_tokens += L * T
                m.grad_block_tokens += config.ig_steps * L * (L - 1) // 2 * T
                m.lens_rows += 3 * config.ig_steps * L * answers[b]
        else:  # a measurement registered by the user: say so rather than project zero
            m.note = "not modelled: the planner has no cost model for this measurement"
        out[name] = m
    return out


def calibrate(model: Any, tokens: torch.Tensor, lens_rows: int = 256, repeats: int = 2) -> dict[str, float]:
    """Seconds per block-token (a clean forward of ``tokens``) and per lens row, on the model's
    own device and dtype; the best of ``repeats`` after one warm-up."""
    from .engine.adapter import get_adapter

    adapter = get_adapter(model)
    L = adapter.n_layers

    def sync() -> None:
        if adapter.device.type == "cuda":
            torch.cuda.synchronize(adapter.device)

    best_fwd = best_lens = float("inf")
    x = None
    for i in range(repeats + 1):
        sync()
        t0 = time.perf_counter()
        clean = adapter.clean(tokens)
        sync()
        t1 = time.perf_counter()
        x = clean.resid[L // 2].reshape(-1, adapter.d_model)[:lens_rows]
        with torch.no_grad():
            adapter.lens_probs(x)
        sync()
        t2 = time.perf_counter()
        if i:
            best_fwd = min(best_fwd, t1 - t0)
            best_lens = min(best_lens, t2 - t1)
    assert x is not None
    return {"s_per_block_token": best_fwd / (L * tokens.numel()),
            "s_per_lens_row": best_lens / x.shape[0], "calibration_tokens": int(tokens.numel())}


def plan_study(config: Any, calibration: bool = True) -> Plan:
    """The cost plan of ``config``: load the model, build the prompts, count, calibrate."""
    from .engine.batch import encode_batch
    from .metrics.skip_effects import draw_cuts
    from .models.loading import load_model
    from .study import resolve_task
    from .tasks import get_task

    task_name, task_params = resolve_task(config)
    task = get_task(task_name, **task_params)
    examples = task.examples(config.n_examples)
    if not examples:
        raise ConfigError(f"task {task_name} with {task_params} produced no examples")
    model = load_model(config.model, device=config.device, dtype=config.dtype,
                       backend=config.backend, process_weights=config.process_weights)
    if model.tokenizer is None:
        raise ConfigError(f"model {config.model!r} has no tokenizer; studies need one")
    batch = encode_batch(model.tokenizer, examples, allow_lossy=config.allow_lossy_tokenization)
    lengths = batch.lengths.tolist()
    cuts = [draw_cuts(int(n), config.n_cuts, f"{config.seed}:{b}", config.cut_start,
                      config.cut_stride, config.cut_margin, config.skip_front)
            for b, n in enumerate(lengths)]
    calib = calibrate(model, batch.tokens[:1, : lengths[0]]) if calibration else {}
    return plan_from(model, config, lengths, batch.answer_start.tolist(), cuts, calib)


def plan_from(model: Any, config: Any, lengths: list[int], answer_starts: list[int],
              cuts: list[list[int]], calib: dict[str, float]) -> Plan:
    """The plan for prompts of the given lengths (used by :func:`plan_study` and benchmarks)."""
    from .engine.sweep import default_memory_budget

    cfg = model.cfg
    s = _shape(cfg)
    param = next(model.parameters())
    itemsize = param.element_size()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    work = count_work(cfg, lengths, answer_starts, cuts, config)
    mean_T = sum(lengths) / max(1, len(lengths))
    budget = default_memory_budget(param.device)
    plan = Plan(str(config.model), s["L"], s["d"], s["V"], len(lengths), mean_T, weights,
                str(param.device), str(param.dtype).removeprefix("torch."), calib)
    chunk_T = max(lengths) * min(config.batch_size, len(lengths))
    clean_cache = (s["L"] + 1) * chunk_T * s["d"] * itemsize
    lens_bytes = 4 * 256 * s["V"] * 4
    for name, m in work.items():
        ctx = mean_T / 2
        per_bt = 2 * s["block_params"] + 4 * s["heads"] * s["d_head"] * ctx
        m.flops = per_bt * (m.block_tokens + 3 * m.grad_block_tokens) + 2 * s["d"] * s["V"] * m.lens_rows
        sweeps = name in ("skip_effects", "behaviour", "erasure", "integrated_gradients")
        components = 2 * s["L"] * chunk_T * s["d"] * itemsize if name == "contributions" else 0
        m.peak_bytes = int(clean_cache + components + lens_bytes + (budget if sweeps else 0))
        if calib:
            m.seconds = (calib["s_per_block_token"] * (m.block_tokens + 3 * m.grad_block_tokens)
                         + calib["s_per_lens_row"] * m.lens_rows)
        plan.measurements.append(m)
    return plan
