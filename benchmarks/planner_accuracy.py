"""How close ``effective-depth plan`` comes to the study it plans: per measurement, the projected
seconds against the measured ones (``results.json``'s ``timing``), in the same process.

    python -m benchmarks.planner_accuracy --model zoo/add-4l -n 20 --threads 1 --json out.json
    python -m benchmarks.planner_accuracy --model real/smollm2-135m-instruct \\
        --task prompts --param path=prompts.jsonl -n 20 --set erasure.map_examples=1 \\
        --set integrated_gradients.map_examples=1 --set integrated_gradients.steps=32

The plan's calibration pass runs first, then the study (into a temporary directory); the error is
``projected / measured − 1`` (+50% = the plan is 1.5 times the real time). A measurement the study
skips (no training data, no answers) has no measured time and is shown as skipped. The load
average before and after is recorded: timings on a loaded machine are not the quiet ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


#: measurements at least this long are held to +-50% (shorter ones are mostly fixed overheads)
LONG_S = 5.0


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def measure(config: object) -> dict:
    """The plan of ``config`` beside the study's measured times."""
    from effective_depth.study import run_study
    from effective_depth.study.planner import plan_study

    load_before = _loadavg()
    start = time.perf_counter()
    plan = plan_study(config)
    plan_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = run_study(config, Path(tmp) / "run", progress=False, dashboard=False)
        study_s = time.perf_counter() - start
        timing = dict(result.results.get("timing", {}))
        skipped = list(result.results.get("settings", {}).get("skipped_metrics", []))
    rows = []
    for m in plan.measurements:
        measured = timing.get(m.name)
        rows.append({"measurement": m.name, "projected_s": round(m.seconds, 3),
                     "measured_s": measured, "skipped": m.name in skipped,
                     "error": None if not measured else round(m.seconds / measured - 1, 3),
                     "block_tokens": m.block_tokens, "grad_block_tokens": m.grad_block_tokens,
                     "lens_rows": m.lens_rows})
    ran = [r for r in rows if r["measured_s"]]
    total_p = sum(r["projected_s"] for r in ran)
    total_m = sum(r["measured_s"] for r in ran)
    from benchmarks.precision_agreement import cpu_flags

    long = [r for r in ran if r["measured_s"] >= LONG_S]
    return {"model": str(plan.model), "n_layers": plan.n_layers, "d_vocab": plan.d_vocab,
            "precision": plan.precision, "cpu_flags": cpu_flags(),
            "within_2x": bool(total_m) and 0.5 <= total_p / total_m <= 2.0,
            "long_within_50pct": all(abs(r["error"]) <= 0.5 for r in long),
            "long_measurements": [r["measurement"] for r in long],
            "notes": {m.name: m.note for m in plan.measurements if m.note},
            "n_prompts": plan.n_prompts, "mean_tokens": round(plan.mean_tokens, 1),
            "calibration": plan.calibration, "plan_seconds": round(plan_s, 1),
            "study_seconds": round(study_s, 1), "rows": rows,
            "total": {"projected_s": round(total_p, 2), "measured_s": round(total_m, 2),
                      "error": round(total_p / total_m - 1, 3) if total_m else None},
            "loadavg_before": load_before, "loadavg_after": _loadavg()}


def table(result: dict) -> str:
    lines = ["| measurement | projected s | measured s | error |", "|---|---|---|---|"]
    for r in result["rows"]:
        measured = "skipped" if r["skipped"] else r["measured_s"]
        error = "-" if r["error"] is None else f"{r['error']:+.0%}"
        lines.append(f"| {r['measurement']} | {r['projected_s']} | {measured} | {error} |")
    t = result["total"]
    lines.append(f"| total (run) | {t['projected_s']} | {t['measured_s']} | "
                 f"{'-' if t['error'] is None else format(t['error'], '+.0%')} |")
    lines.append(f"total within 2x: {result['within_2x']}; measurements >= {LONG_S:g} s "
                 f"({', '.join(result['long_measurements']) or 'none'}) within +-50%: "
                 f"{result['long_within_50pct']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", default=None)
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE")
    parser.add_argument("-n", "--n-examples", type=int, default=20)
    parser.add_argument("--metrics", default=None, help="comma-separated (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--append", default=None, metavar="FILE",
                        help="add the result, labelled, to a JSON list (the committed results)")
    parser.add_argument("--label", default="", help="e.g. 'quiet' or 'load ~4 (a grid beside it)'")
    args = parser.parse_args(argv)

    from effective_depth.cli import _parse_value
    from effective_depth.models.devices import set_threads
    from effective_depth.study import StudyConfig

    set_threads(args.threads)
    options = {k: _parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    params = {k: _parse_value(v) for k, v in (p.split("=", 1) for p in args.param)}
    config = StudyConfig.from_dict({"model": args.model, "task": args.task, "task_params": params,
                                    "n_examples": args.n_examples, "n_boot": 0,
                                    **({"metrics": args.metrics.split(",")} if args.metrics else {}),
                                    **options})
    result = measure(config)
    print(table(result))
    print(f"load average before {result['loadavg_before']}, after {result['loadavg_after']}")
    result["label"] = args.label
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.append:
        path = Path(args.append)
        runs = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps(runs + [result], indent=1))


if __name__ == "__main__":
    main()
