"""Markdown tables of the three experiments, straight from their comparison files.

    python experiments/report.py [runs/zoo_scale runs/zoo_training runs/zoo_difficulty]

Reads ``OUT/comparison/comparison.json`` of each experiment (written by
``effective-depth sweep --config experiments/<question>.yaml``) and prints the tables used in
``docs/findings.md``: ED and ratio per estimator with 95% CIs per model, the paired training-type
differences, and Spearman's rho for difficulty.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ESTIMATORS = ("ed_cos", "ed_kl", "ed_overlap", "ed_skip", "ed_task", "ed_prune")


def _ratio(est: dict) -> str:
    if est.get("layer") is None:
        return "undefined"
    ci = est.get("ci")
    ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    return f"{est['layer']} / {est['ratio']:.2f}{ci_text}"


def _num(v, fmt="{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def runs_table(comparison: dict, key: str = "model") -> str:
    head = "| model | L | accuracy | difficulty | " + " | ".join(ESTIMATORS) + " | depth score |"
    rows = [head, "|" + " --- |" * (len(ESTIMATORS) + 5)]
    for run in comparison["runs"]:
        est = run["estimates"]
        score = run.get("depth_score") or {}
        ci = score.get("ci")
        score_text = _num(score.get("value")) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        rows.append(f"| {run['model']} | {run['n_layers']} | {_num(run.get('accuracy'), '{:.3f}')} | "
                    f"{run.get('difficulty')} | " + " | ".join(_ratio(est[e]) for e in ESTIMATORS)
                    + f" | {score_text} |")
    return "\n".join(rows)


def training_table(comparison: dict) -> str:
    rows = ["| estimator | base ratio | trained ratio | difference [95% CI] | paired |",
            "| --- | --- | --- | --- | --- |"]
    for r in comparison["training"]:
        ci = r.get("diff_ci")
        diff = _num(r.get("diff"), "{:+.2f}") + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
        rows.append(f"| {r['estimator']} | {_num(r['ratio_base'])} | {_num(r['ratio_trained'])} | "
                    f"{diff} | {r.get('paired')} |")
    return "\n".join(rows)


def difficulty_table(comparison: dict) -> str:
    rows = ["| estimator | levels | ratios | Spearman rho [95% CI] |", "| --- | --- | --- | --- |"]
    for r in comparison["difficulty"]:
        ci = r.get("rho_ci")
        rho = _num(r.get("rho"), "{:+.2f}") + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
        ratios = ", ".join(_num(x) for x in r["ratios"])
        rows.append(f"| {r['estimator']} | {r['levels']} | {ratios} | {rho} |")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    dirs = [Path(a) for a in argv] or [Path("runs/zoo_scale"), Path("runs/zoo_training"),
                                        Path("runs/zoo_difficulty")]
    for d in dirs:
        file = d / "comparison" / "comparison.json"
        if not file.exists():
            print(f"## {d}: no comparison.json (run the experiment first)\n")
            continue
        comparison = json.loads(file.read_text())
        print(f"## {d.name}\n\n{runs_table(comparison)}\n")
        if comparison.get("training"):
            print(f"{training_table(comparison)}\n")
        if comparison.get("difficulty"):
            print(f"{difficulty_table(comparison)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
