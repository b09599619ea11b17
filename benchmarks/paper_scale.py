"""The paper's protocol on a real-shaped checkpoint, measured: time, work, memory, estimates.

``python -m benchmarks.paper_scale [--shape qwen2.5-0.5b] [--json PATH]`` builds (once) the
real-shaped checkpoint and the GSM8K-schema data of :mod:`benchmarks.paper_shapes`, loads it
through the same ``load_model`` path a downloaded Qwen takes (a local ``save_pretrained``
directory, offline), and runs every measurement of ``experiments/paper_*.yaml`` on a reduced but
honest setting sized for a 2-core CPU (the settings are printed and stored with the results):

* contributions and logit lens on ``--prompts`` GSM8K prompts (question + reasoning, 150-400
  tokens);
* future skip effects on ``--skip-prompts`` of them with ``--cuts`` cuts each; behaviour on the
  same prompts;
* residual erasure and integrated gradients (``--ig-steps`` steps) on one *short* GSM8K-style
  example (question's first sentence + final answer), because both cost ``O(L² T²)`` resp.
  ``O(L² T · steps)``: the planner projects the full-length cost, and this run checks the planner.

Per measurement: wall time, block-token forwards (counted by hooks on every block), sweep chunks
(chunking engaged when > 1), peak RSS above the loaded model against the memory budget handed to
the sweep, the planner's projection and its error. ``--light`` (the 1.5B shapes) runs loading, one
clean pass, the logit lens and skip effects only. The peak never approaches
``layers × positions × vocabulary`` float32 (printed as ``full_lens_bytes``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
MiB = 1 << 20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


class PeakRSS:
    """This process's peak RSS since :meth:`reset`.

    Read from the kernel's high-water mark (``VmHWM``), which ``reset`` sets back to the current
    RSS through ``/proc/self/clear_refs`` (Linux >= 4.0): exact, and no allocation spike between
    samples is missed. Where that file cannot be written, a thread samples ``VmRSS`` every
    ``interval`` seconds instead (under a lock, so a sample taken before a reset never lands
    after it)."""

    def __init__(self, interval: float = 0.02) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampled = 0
        self.exact = self._clear_hwm()
        if not self.exact:
            self._sampled = rss_bytes()
            threading.Thread(target=self._run, args=(interval,), daemon=True).start()

    @staticmethod
    def _clear_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self._lock:
                self._sampled = max(self._sampled, rss_bytes())

    @property
    def peak(self) -> int:
        if self.exact:
            return _status_kib("VmHWM") * 1024
        with self._lock:
            return max(self._sampled, rss_bytes())

    def reset(self) -> None:
        if self.exact:
            self._clear_hwm()
        else:
            with self._lock:
                self._sampled = rss_bytes()

    def stop(self) -> None:
        self._stop.set()


class WorkCounter:
    """Block-token forwards (a hook on every block's input point, which the fused blocks and
    TransformerLens's call alike) and sweep chunks (a wrapped ``_staircase``)."""

    def __init__(self, model: Any) -> None:
        import importlib

        sweep_mod = importlib.import_module("effective_depth.engine.sweep")

        self.block_tokens = 0
        self.block_calls = 0
        self.chunks = 0
        self._handles = [b.hook_resid_pre.register_forward_hook(self._hook) for b in model.blocks]
        self._mod = sweep_mod
        self._orig = sweep_mod._staircase

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.chunks += 1
            return self._orig(*args, **kwargs)

        sweep_mod._staircase = counted

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        x = args[0]
        self.block_tokens += int(x.shape[0]) * int(x.shape[1])
        self.block_calls += 1

    def reset(self) -> None:
        self.block_tokens = self.block_calls = self.chunks = 0

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._mod._staircase = self._orig


def short_example(ex: Any) -> Any:
    """A short GSM8K-style example from a long one: first sentence of the question, final answer
    (about 16 tokens: erasure and IG are quadratic, and a shared CPU is slow)."""
    from effective_depth.tasks import Example

    question = ex.prompt.removeprefix("Question: ").split(".")[0] + "."
    return Example(f"Question: {question}\nAnswer: ", str(ex.meta["final"]), dict(ex.meta))


def run(shape: str = "qwen2.5-0.5b", *, cache: Path | None = None, dtype: str = "float32",
        device: str = "cpu",
        prompts: int = 4, skip_prompts: int = 1, cuts: int = 1, ig_steps: int = 4,
        budget_mib: int = 256, light: bool = False, short_only: bool = False,
        threads: int | None = None, json_path: Path | None = None) -> dict[str, Any]:
    from benchmarks.paper_shapes import build_all
    from effective_depth import metrics as M
    from effective_depth.analysis.estimation import estimate_all
    from effective_depth.engine import encode_batch
    from effective_depth.metrics.skip_effects import draw_cuts
    from effective_depth.models.loading import load_model
    from effective_depth.study import StudyConfig
    from effective_depth.study.planner import calibrate, plan_from
    from effective_depth.tasks import get_task

    if threads:
        torch.set_num_threads(threads)
    paths = build_all(cache, [shape])
    sampler = PeakRSS()
    base_rss = rss_bytes()
    t0 = time.perf_counter()
    cuda = device.startswith("cuda")
    model = load_model(str(paths[shape]), device=device, dtype=dtype)
    load_s = time.perf_counter() - t0
    gc.collect()
    loaded_rss = rss_bytes()
    cfg = model.cfg
    L, V = int(cfg.n_layers), int(cfg.d_vocab)
    task = get_task("gsm8k", data_files=str(paths["data"] / "gsm8k_test.jsonl"))
    examples = task.examples(prompts)
    batch = encode_batch(model.tokenizer, examples, device=device)
    lengths = batch.lengths.tolist()
    skip_batch = batch.select(list(range(min(skip_prompts, batch.size))))
    short = encode_batch(model.tokenizer, [short_example(examples[0])], device=device)
    if short_only:  # the larger shapes on a CPU: every measurement on the short example
        batch = skip_batch = short
        lengths = short.lengths.tolist()
    budget = budget_mib * MiB
    counter = WorkCounter(model)
    calib = calibrate(model, batch.tokens[:1, : lengths[0]], repeats=1)
    results: dict[str, Any] = {
        "shape": shape, "path": str(paths[shape]), "dtype": dtype, "device": device,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_weights_mib": round(torch.cuda.memory_allocated() / MiB) if cuda else None,
        "threads": torch.get_num_threads(), "n_layers": L, "d_model": int(cfg.d_model),
        "d_vocab": V, "n_params": int(sum(p.numel() for p in model.parameters())),
        "load_seconds": round(load_s, 2), "rss_before_load_mib": round(base_rss / MiB),
        "rss_loaded_mib": round(loaded_rss / MiB), "load_peak_rss_mib": round(sampler.peak / MiB),
        "prompt_tokens": lengths, "short_example_tokens": int(short.lengths[0]),
        "bos_prepended": model.tokenizer.bos_token_id is not None,
        "memory_budget_mib": budget_mib, "calibration": calib,
        "settings": {"prompts": prompts, "skip_prompts": skip_prompts, "cuts": cuts,
                     "ig_steps": ig_steps, "erasure_ig_example": "short", "short_only": short_only},
        "measurements": {},
    }
    done: dict[str, Any] = {}

    def measure(name: str, b: Any, fn: Callable[[], Any], study: dict[str, Any], cut_lists: list) -> None:
        gc.collect()
        counter.reset()
        sampler.reset()
        start_rss = rss_bytes()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t, cpu = time.perf_counter(), time.process_time()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        cpu = time.process_time() - cpu
        peak = sampler.peak
        config = StudyConfig(metrics=(name,), **study)
        plan = plan_from(model, config, b.lengths.tolist(), b.answer_start.tolist(), cut_lists, calib)
        projected = plan.measurements[0]
        T = max(b.lengths.tolist())
        entry = {
            "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            # the machine's 1-minute load average at the end: wall time on a shared CPU is an
            # upper bound when it exceeds the threads used
            "load_average": round(os.getloadavg()[0], 2), "block_tokens": counter.block_tokens,
            "sweep_chunks": counter.chunks, "planned_block_tokens": projected.block_tokens
            + projected.grad_block_tokens, "planned_seconds": round(projected.seconds, 2),
            "planned_flops": projected.flops,
            "time_error": round(projected.seconds / wall - 1, 3) if wall else None,
            "peak_rss_mib": round(peak / MiB), "rss_above_loaded_mib": round((peak - start_rss) / MiB),
            "budget_held": peak - start_rss <= budget + plan.measurements[0].peak_bytes,
            "full_lens_bytes_mib": round(L * T * V * 4 * b.size / MiB),
            "n_prompts": b.size, "tokens": b.lengths.tolist(),
            "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / MiB) if cuda else None,
        }
        results["measurements"][name] = entry
        done[name] = result
        log.info("%s: %s", name, entry)
        if json_path is not None:  # partial results survive an interrupted run
            json_path.write_text(json.dumps(results, indent=1, default=str))

    budget_kw = {"memory_budget": budget}
    skip_cuts = [draw_cuts(int(n), cuts, f"0:{i}", 8, 8, 4) for i, n in enumerate(skip_batch.lengths.tolist())]
    measure("contributions", batch, lambda: M.contributions(model, batch), {}, [])
    measure("logit_lens", batch, lambda: M.logit_lens(model, batch), {}, [])
    measure("skip_effects", skip_batch,
            lambda: M.skip_effects(model, skip_batch, mode="future", cuts=skip_cuts, **budget_kw),
            {"options": {"skip_effects": {"n_cuts": cuts}}}, skip_cuts)
    if not light:
        order = M.prune_order(torch.nan_to_num(done["skip_effects"].output_effect_of(aggregate="mean")))
        measure("behaviour", skip_batch, lambda: M.behaviour(model, skip_batch, order=order, **budget_kw),
                {}, [])
        measure("erasure", short,
                lambda: M.erasure(model, short, reference=short, **budget_kw),
                {"options": {"erasure": {"map_examples": 1, "n_reference": 1}}}, [])
        measure("integrated_gradients", short,
                lambda: M.integrated_gradients(model, short, steps=ig_steps, **budget_kw),
                {"options": {"integrated_gradients": {"map_examples": 1, "steps": ig_steps}}}, [])
    counter.close()
    sampler.stop()
    estimates = estimate_all(done, n_boot=50, seed=0)
    results["estimates"] = {k: {"layer": v.layer, "ratio": v.ratio, "reason": v.reason}
                            for k, v in estimates.items()}
    results["peak_rss_mib"] = round(max(m["peak_rss_mib"] for m in results["measurements"].values()) )
    return results


def table(results: dict[str, Any]) -> str:
    head = ("| measurement | prompts (tokens) | wall s | block-tokens | planned | chunks | "
            "peak RSS above model MiB | projected s | time error |")
    lines = [head, "|" + "---|" * 9]
    for name, m in results["measurements"].items():
        err = m["time_error"]
        lines.append(f"| {name} | {m['n_prompts']} ({', '.join(map(str, m['tokens']))}) | "
                     f"{m['wall_seconds']} | {m['block_tokens']:,} | {m['planned_block_tokens']:,} | "
                     f"{m['sweep_chunks']} | {m['rss_above_loaded_mib']} | {m['planned_seconds']} | "
                     f"{'-' if err is None else f'{100 * err:+.0f}%'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2.5-0.5b")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--skip-prompts", type=int, default=1)
    parser.add_argument("--cuts", type=int, default=1)
    parser.add_argument("--ig-steps", type=int, default=4)
    parser.add_argument("--budget-mib", type=int, default=256)
    parser.add_argument("--light", action="store_true")
    parser.add_argument("--short-only", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = run(args.shape, cache=args.cache, dtype=args.dtype, device=args.device, prompts=args.prompts,
                  skip_prompts=args.skip_prompts, cuts=args.cuts, ig_steps=args.ig_steps,
                  budget_mib=args.budget_mib, light=args.light, short_only=args.short_only,
                  threads=args.threads, json_path=args.json)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(table(results))  # noqa: T201 - a benchmark script's report
    print(json.dumps(results["estimates"]))  # noqa: T201


if __name__ == "__main__":
    main()
