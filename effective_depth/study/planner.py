"""What a study will cost, before it runs: block-forwards, FLOPs, memory and a projected time.

``plan_study(config)`` builds the study's prompts exactly as ``run_study`` would (same task, same
tokenizer, and the same :func:`effective_depth.study.prepare.prepare_study` and
:func:`~effective_depth.study.prepare.draw_inputs`: the measurements the study skips are not counted, and
the cut positions are the study's), asks each measurement's cost model (``MetricSpec.cost``, see
:mod:`effective_depth.metrics.costs`) for the work it will do, and turns that into time with a short
*calibration pass* on the current device: clean forwards of a real prompt, batched as wide as
the sweep batches its rows (seconds per block-token), one block on one token (seconds per block
call: what a short row costs beyond its tokens), one block with its backward, as wide and on one
token (seconds per backward block-token and per backward block call: a differentiated pass runs
under the policy of differentiated passes, float32 under ``bf16-mixed``, and autograd's cost per
call is 4-6x a forward call's on a small model), one lens chunk (seconds per vocabulary row) and
the logit lens's statistics on it (log-softmax, KL and top-k over the vocabulary: seconds per
lens statistics row).

FLOPs per block-token are ``2 × (block parameters) + 4 × d_head × heads × context`` (matrix
multiplies plus attention scores and values over the causal context); a lens row is
``2 × d_model × d_vocab``; a backward block-token costs two forwards. Peak activation memory is
the clean cache of one prompt chunk, plus what the measurement keeps beyond it, plus the
sweep's memory budget for measurements that sweep, plus a few ``chunk × d_vocab`` float32
tensors.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from ..metrics.costs import MeasurementCost, ModelShape, Workload

__all__ = ["CostPlan", "MeasurementCost", "plan_study", "count_work", "calibrate", "busy_note"]

log = logging.getLogger(__name__)

#: ready tasks beside the calibration from which the CPU counts as busy (timed in CPU time)
BUSY_BESIDE = 0.5


@dataclass
class CostPlan:
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
    #: the compute policy the calibration ran under (docs/methods.md, "Precision")
    precision: str = "fp32"

    @property
    def total(self) -> MeasurementCost:
        t = MeasurementCost("total")
        for m in self.measurements:
            t.block_tokens += m.block_tokens
            t.grad_block_tokens += m.grad_block_tokens
            t.lens_rows += m.lens_rows
            t.lens_stat_rows += m.lens_stat_rows
            t.block_calls += m.block_calls
            t.grad_block_calls += m.grad_block_calls
            t.flops += m.flops
            t.seconds += m.seconds
            t.peak_bytes = max(t.peak_bytes, m.peak_bytes)
        return t

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "measurements"}
        d["measurements"] = [m.to_dict() for m in self.measurements]
        d["total"] = self.total.to_dict()
        return d


def count_work(cfg: Any, lengths: list[int], answer_starts: list[int],
               inputs: Mapping[str, Sequence[Any]] | Sequence[Sequence[int]], config: Any,
               itemsize: int = 4, budget: int = 1 << 30, skipped: Mapping[str, str] | None = None,
               reused_fits: Sequence[str] = (),
               observed: Mapping[str, Mapping[str, tuple[float, int]]] | None = None,
               query_starts: Sequence[int] | None = None) -> dict[str, MeasurementCost]:
    """Block-tokens, block calls and lens rows of every measurement of ``config`` (no model
    needed), from each measurement's own cost model; ``budget`` is the sweep's memory budget.
    ``inputs`` are the drawn per-example inputs (a list is taken as the cut positions); a
    measurement in ``skipped`` (``name -> reason``) counts nothing and says why; one in
    ``reused_fits`` reads its stored fit instead of training it; ``observed`` holds what earlier
    runs of the model recorded (``store.observed``); ``query_starts`` where each prompt's query
    starts (read under ``positions="query"``)."""
    from ..metrics.registry import get_metric

    if not isinstance(inputs, Mapping):
        inputs = {"cuts": list(inputs)}
    work = Workload(ModelShape.of(cfg, itemsize), lengths, answer_starts, inputs, config, budget,
                    frozenset(reused_fits), dict(observed or {}),
                    None if getattr(config, "positions", "all") == "all" else query_starts)
    out: dict[str, MeasurementCost] = {}
    for name in config.metrics:
        spec = get_metric(name)
        if skipped and name in skipped:
            out[name] = MeasurementCost(name, skipped=True,
                                        note=f"skipped by the study: {skipped[name]}")
        elif spec.cost is None:  # say so rather than project zero
            out[name] = MeasurementCost(name, note="not modelled: this measurement declares no cost model")
        else:
            out[name] = spec.cost(work)
    return out


def calibrate(model: Any, tokens: torch.Tensor, lens_rows: int = 256, repeats: int = 5,
              wide_tokens: int = 4096, wide_s: float = 2.0, budget_s: float = 2.0
              ) -> dict[str, float]:
    """Seconds per block-token, per block call and per lens row, on the model's own device and
    dtype: each the median of ``repeats`` timings (at least 3, fewer beyond ``budget_s`` seconds
    of one timing's repeats) after two warm-ups.

    The block-token time is the *marginal* cost: the difference between a clean forward of the
    prompt repeated over ``k`` rows (about ``wide_tokens`` tokens, or as many as one pass of about
    ``wide_s`` seconds holds) and of the prompt alone, divided by the extra block-tokens. The
    sweeps run chunks of thousands of rows, so on a small model a single prompt's pass measures
    per-call overhead (and, for a big model on a CPU, reading the weights), not what the work
    counts multiply; and a pass whose activations stay in the CPU's cache runs faster per token
    than a sweep's chunk (``zoo/add-12l``, one thread: 7 us per block-token at 1,024 tokens, 10-13
    at 4,096-16,384). When one pass already takes over a second, the wide pass is at most 4 rows.
    (Sizing the wide pass by a 4-row probe's cost per row instead, 341 rows on ``zoo/add-12l``
    and 44 on SmolLM2 where this rule gives ~110 and 19, priced SmolLM2's study 31% low where
    this rule prices it 5% low, and left ``zoo/add-12l`` as low: the wider pass runs faster per
    token than the sweeps do.)

    On a quiet CPU every quantity is the wall time, timed on the study's threads and again on
    one thread, the smaller kept (a multi-thread timing that waits for a descheduled thread can
    measure many times the cost: 232 against 6 us per block-token at load 2.4). On a CPU busy
    with other work (at least :data:`BUSY_BESIDE` ready tasks beside this process,
    :func:`runnable_beside`, sampled before and after the timings) short wall timings say more
    about the scheduler than about the work (a one-prompt pass on two threads took 583 ms, a
    112-row pass 324 ms, beside two busy processes with OpenMP's default wait policy). Every
    quantity is then the process's CPU time, which the other work does not change, divided by
    the CPUs this process gets beside it (:func:`cpus_available`): the projection is for a
    study that runs beside the same work. CPU time counts threads that spin while they wait, so
    this holds with ``OMP_WAIT_POLICY=PASSIVE`` in the environment before torch loads (the
    benchmarks set it; without it :func:`busy_note` says the projection is high)."""
    from ..engine.adapter import get_adapter
    from ..metrics.logit_lens import lens_row_statistics

    adapter = get_adapter(model)
    L = adapter.n_layers
    tokens = tokens[:1]
    T = int(tokens.shape[1])
    cuda = adapter.device.type == "cuda"

    clock = time.perf_counter  # the process's CPU time on a busy CPU (see below)

    def typical(fn: Any) -> float:
        for _ in range(2):
            fn()
        times: list[float] = []
        while len(times) < max(3, repeats) and (len(times) < 3 or sum(times) < budget_s):
            if cuda:
                torch.cuda.synchronize(adapter.device)
            t0 = clock()
            fn()
            if cuda:
                torch.cuda.synchronize(adapter.device)
            times.append(clock() - t0)
        return sorted(times)[len(times) // 2]

    threads = torch.get_num_threads()
    resid = adapter.clean(tokens).resid
    x = resid[L // 2].reshape(-1, adapter.d_model)
    x = x.repeat(-(-lens_rows // x.shape[0]), 1)[:lens_rows]
    one_token = resid[L // 2, :, :1]
    calls = 8
    with torch.no_grad():
        log_p = adapter.lens_log_probs(x.flip(0))
        top_p = log_p.topk(5, dim=-1).indices

    def marginal(one: float, wide: float, rows: int, tokens_per_row: int) -> float:
        """Seconds per token added by the wide pass's rows beyond the first; a difference below a
        quarter of the wide pass's average is noise (see above), and the average, an upper bound
        on the marginal, stands for it."""
        average = wide / (rows * tokens_per_row)
        extra = (wide - one) / ((rows - 1) * tokens_per_row)
        return extra if extra >= average / 4 else average

    def measure() -> dict[str, float]:
        one = typical(lambda: adapter.clean(tokens))
        per_token = one / (L * T)
        k = max(1, min(wide_tokens // T, max(2, int(wide_s / max(one, 1e-9)))))
        if one >= 1.0:  # a slow device or a big model: a short wide pass is enough (and affordable)
            k = min(k, 4)
        if k > 1:
            per_token = marginal(one, typical(lambda: adapter.clean(tokens.expand(k, -1))), k, L * T)
        with torch.no_grad():
            lens = typical(lambda: adapter.lens_probs(x))
            # the logit lens's row: log-softmax, KL, top-k overlap
            stats = typical(lambda: lens_row_statistics(adapter.lens_log_probs(x), log_p, top_p))
            call = 0.0
            if adapter.can_resume:  # one block on one token: a block call's cost beyond its tokens
                call = typical(lambda: [adapter.block(L // 2, one_token) for _ in range(calls)])
                call = max(0.0, call / calls - per_token)
        grad_token, grad_call = 3 * per_token, 3 * call
        if adapter.can_resume:
            # a differentiated pass runs under the policy of differentiated passes (float32 under
            # bf16-mixed): its forward and backward per token, on one block as wide as the clean
            # pass, then autograd's own cost per call (one token, ``calls`` times)
            def backward(h0: torch.Tensor, times: int = 1) -> Any:
                def run() -> None:
                    for _ in range(times):
                        h = h0.detach().requires_grad_(True)
                        adapter.block(L // 2, h).float().sum().backward()
                return run

            middle = resid[L // 2]
            one_g = typical(backward(middle))
            grad_token = one_g / T
            if k > 1:
                wide_g = typical(backward(middle.expand(k, -1, -1).contiguous()))
                grad_token = marginal(one_g, wide_g, k, T)
            grad_call = max(0.0, typical(backward(one_token, calls)) / calls - grad_token)
        return {"s_per_block_token": per_token, "s_per_lens_row": lens / x.shape[0],
                "s_per_lens_stat_row": max(0.0, stats - lens) / x.shape[0],
                "s_per_block_call": call, "s_per_grad_block_token": grad_token,
                "s_per_grad_block_call": grad_call, "calibration_rows": k}

    rates = ("s_per_block_token", "s_per_lens_row", "s_per_lens_stat_row", "s_per_block_call",
             "s_per_grad_block_token", "s_per_grad_block_call")
    load = _machine_load()
    beside = None if cuda else runnable_beside()
    if beside is not None and beside >= BUSY_BESIDE:  # CPU time over the CPUs this process gets
        clock = time.process_time
        out = measure()
        cpus = load.get("cpus", float(threads))
        beside = (beside + (runnable_beside() or 0.0)) / 2  # before and after the timings
        out["cpus_available"] = cpus_available(beside, threads, cpus)
        for key in rates:
            out[key] /= out["cpus_available"]
    else:
        out = measure()
        if not cuda and threads > 1:  # the single-thread bound (see above)
            torch.set_num_threads(1)
            try:
                single = measure()
            finally:
                torch.set_num_threads(threads)
            for key in rates:
                out[key] = min(out[key], single[key])
    if beside is not None:
        load["runnable_beside"] = round(beside, 2)
    return {**out, "calibration_tokens": T, "torch_threads": threads, **load}


def runnable_beside(samples: int = 20, gap_s: float = 0.005) -> float | None:
    """Tasks other than this one that are ready to run (``procs_running`` of ``/proc/stat`` less
    the reading thread), the mean of ``samples`` reads ``gap_s`` apart; None where the OS does not
    say. Unlike the load average, it is not a minute late."""
    seen: list[int] = []
    for _ in range(samples):
        try:
            with open("/proc/stat") as f:
                line = next((x for x in f if x.startswith("procs_running")), "")
            seen.append(max(0, int(line.split()[1]) - 1))
        except (OSError, IndexError, ValueError):  # no such file, or not a count: not said
            return None
        time.sleep(gap_s)
    return sum(seen) / len(seen)


def cpus_available(beside: float, threads: int, cpus: float) -> float:
    """The CPUs a process of ``threads`` busy threads gets beside ``beside`` other ready tasks on
    ``cpus`` CPUs, every ready task getting an equal share: ``min(threads, cpus × threads /
    (beside + threads))`` (2 threads beside 2 other tasks on 2 CPUs: 1)."""
    return max(1e-3, min(float(threads), cpus * threads / max(beside + threads, 1e-9)))


def _machine_load() -> dict[str, float]:
    """The 1-minute load average and the CPUs this process may use, when the OS tells."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        return {"load_average": os.getloadavg()[0], "cpus": float(cpus)}
    except (AttributeError, OSError):
        return {}


def busy_note(calibration: dict[str, float], device: str) -> str:
    """A warning when the CPU calibration ran beside other work: at least :data:`BUSY_BESIDE`
    other ready tasks (``runnable_beside``), or, where the OS did not say, a 1-minute load average
    of at least the CPUs + 1. The projection is then for a study that runs beside the same work
    (the calibration's rates are CPU time over the CPUs this process gets), and it changes when
    that work does. "" otherwise (and on a GPU, whose kernels the CPU load barely slows)."""
    if not str(device).startswith("cpu"):
        return ""
    beside, cpus = calibration.get("runnable_beside"), calibration.get("cpus")
    if beside is not None:
        if beside < BUSY_BESIDE:
            return ""
        share = calibration.get("cpus_available")
        gets = ("" if share is None else
                f"; its {calibration.get('torch_threads', 0):.0f} threads get about {share:.1f}")
        if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
            gets += ("; OMP_WAIT_POLICY is not PASSIVE, so waiting threads spin and the CPU "
                     "time, and with it the projection, is high (start with "
                     "OMP_WAIT_POLICY=PASSIVE for both)")
        return (f"calibrated beside {beside:.1f} other ready tasks on {cpus or 0:.0f} CPUs{gets}: "
                "the projection is for a study beside the same work; plan again when it has "
                "finished for the time on a quiet machine")
    load = calibration.get("load_average")
    if load is None or cpus is None or load < cpus + 1:
        return ""
    return (f"calibrated while the machine was busy (load average {load:.1f} on {cpus:.0f} CPUs): "
            "the projection is for a study beside the same load, and less sure; "
            "plan again on a quiet machine for the quiet time")


def plan_study(config: Any, calibration: bool = True) -> CostPlan:
    """The cost plan of ``config``: load the model, build the prompts, count, calibrate."""
    from ..engine.batch import encode_batch, query_starts
    from ..models.chat import chat_format
    from ..models.loading import load_model
    from ..tasks import get_task
    from .prepare import draw_inputs, prepare_study
    from .run import resolve_task

    task_name, task_params = resolve_task(config)
    task = get_task(task_name, **task_params)
    examples = task.examples(config.n_examples)
    if not examples:
        raise ConfigError(f"task {task_name} with {task_params} produced no examples")
    prep = prepare_study(config, task, examples)  # the study's own decisions
    model = load_model(config.model, device=config.device, dtype=config.dtype,
                       backend=config.backend, process_weights=config.process_weights,
                       precision=config.precision)
    if model.tokenizer is None:
        raise ConfigError(f"model {config.model!r} has no tokenizer; studies need one")
    chat = chat_format(config.chat_template, config.system_prompt)
    batch = encode_batch(model.tokenizer, examples, allow_lossy=config.allow_lossy_tokenization,
                         chat=chat)
    lengths = batch.lengths.tolist()
    inputs = draw_inputs(prep.specs, batch, config)
    reused = stored_fits(model, config, prep, chat)
    calib = calibrate(model, batch.tokens[:1, : lengths[0]]) if calibration else {}
    starts = query_starts(batch, config.positions)  # an error when the prompts do not say
    return plan_from(model, config, lengths, batch.answer_start.tolist(), inputs, calib,
                     skipped=prep.skipped, reused_fits=reused,
                     query_starts=None if starts is None else starts.tolist())


def recorded_observations(model: Any, config: Any) -> dict[str, dict[str, tuple[float, int]]]:
    """Measurement -> what earlier runs of this model with the study's options recorded
    (``MetricSpec.observe``, ``store.observed``)."""
    from ..metrics.registry import get_metric
    from ..store.fingerprint import loaded_model_fingerprint
    from ..store.observed import observed

    model_fp = loaded_model_fingerprint(model)
    out: dict[str, dict[str, tuple[float, int]]] = {}
    for name in config.metrics:
        spec = get_metric(name)
        if spec.observe is None:
            continue
        seen = observed(model_fp, name, spec.options_dict(config))
        if seen:
            out[name] = seen
    return out


def stored_fits(model: Any, config: Any, prep: Any, chat: Any) -> dict[str, str]:
    """Measurement -> the folder of its stored fit, for each fit the study will read instead of
    training (same model files, training token ids and settings: ``store.fitted.find_fit``, in the
    study's default run directory or the shared cache). Text the model samples
    (``tuned_lens.fit_on=sampled``) is known only once sampled: such a fit is priced as trained."""
    from ..engine.batch import encode_batch
    from ..store.fingerprint import inputs_fingerprint, loaded_model_fingerprint
    from ..store.fitted import find_fit
    from .run import default_out_dir, fit_want

    model_fp = loaded_model_fingerprint(model)
    out: dict[str, str] = {}
    for spec in prep.specs:
        if spec.fit is None or spec.name not in prep.train:
            continue
        train_list, info = prep.train[spec.name]
        if train_list or spec.fit.text is None:
            encoded = encode_batch(model.tokenizer, train_list,
                                   allow_lossy=config.allow_lossy_tokenization, chat=chat)
        elif info.get("fit_on") == "sampled":
            continue
        else:  # a text file cut into the model's tokens: cheap to make again
            encoded, info = spec.fit.text(model, info, config, False)
        ids = [encoded.token_ids(b) for b in range(encoded.size)]
        want = fit_want(model_fp, inputs_fingerprint(ids, encoded.answer_start.tolist()), spec,
                        config)
        where = find_fit(spec.name, want, default_out_dir(config))
        if where is not None:
            out[spec.name] = str(where)
    return out


def plan_from(model: Any, config: Any, lengths: list[int], answer_starts: list[int],
              inputs: Mapping[str, Sequence[Any]] | Sequence[Sequence[int]],
              calib: dict[str, float], skipped: Mapping[str, str] | None = None,
              reused_fits: Mapping[str, str] | Sequence[str] = (),
              query_starts: Sequence[int] | None = None) -> CostPlan:
    """The plan for prompts of the given lengths (used by :func:`plan_study` and benchmarks);
    ``inputs``, ``skipped``, ``reused_fits`` and ``query_starts`` as in :func:`count_work`."""
    from ..engine.sweep import default_memory_budget
    from ..models.precision import get_policy

    cfg = model.cfg
    param = next(model.parameters())
    itemsize = param.element_size()
    s = ModelShape.of(cfg, itemsize)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    budget = getattr(config, "memory_budget", None) or default_memory_budget(param.device)
    work = count_work(cfg, lengths, answer_starts, inputs, config, itemsize, budget, skipped,
                      list(reused_fits), recorded_observations(model, config), query_starts)
    mean_T = sum(lengths) / max(1, len(lengths))
    plan = CostPlan(str(config.model), s.n_layers, s.d_model, s.d_vocab, len(lengths), mean_T, weights,
                str(param.device), str(param.dtype).removeprefix("torch."), calib,
                precision=get_policy(model).name)
    chunk_T = max(lengths) * min(config.batch_size, len(lengths))
    clean_cache = (s.n_layers + 1) * chunk_T * s.d_model * itemsize
    lens_bytes = 4 * 256 * s.d_vocab * 4
    per_bt = 2 * s.block_params + 4 * s.n_heads * s.d_head * mean_T / 2
    for m in work.values():
        if m.skipped:  # the study will not run it: no work, no memory, no time
            plan.measurements.append(m)
            continue
        m.flops = per_bt * (m.block_tokens + 3 * m.grad_block_tokens) + 2 * s.d_model * s.d_vocab * m.lens_rows
        m.peak_bytes = int(clean_cache + m.extra_bytes + lens_bytes + (budget if m.sweeps else 0))
        if calib:
            call = calib.get("s_per_block_call", 0.0)
            per_token = calib["s_per_block_token"]
            m.seconds = (per_token * m.block_tokens
                         + calib.get("s_per_grad_block_token", 3 * per_token) * m.grad_block_tokens
                         + call * m.block_calls
                         + calib.get("s_per_grad_block_call", 3 * call) * m.grad_block_calls
                         + calib["s_per_lens_row"] * m.lens_rows
                         + calib.get("s_per_lens_stat_row", 0.0) * m.lens_stat_rows)
        plan.measurements.append(m)
    return plan
