"""Markdown tables of the three experiments, straight from their comparison files.

    python experiments/report.py [runs/zoo_scale runs/zoo_training runs/zoo_difficulty]

Reads ``OUT/comparison/comparison.json`` of each experiment (written by
``effective-depth grid --config experiments/<question>.yaml``) and prints the tables used in
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


def per_prompt_table(comparison: dict) -> str:
    """Per-prompt depths: median [quartiles] of the prompts' own ratios, defined / all, next to
    the estimate from the mean curve."""
    rows = ["| model | L | " + " | ".join(ESTIMATORS) + " |", "|" + " --- |" * (len(ESTIMATORS) + 2)]
    for run in comparison["runs"]:
        cells = []
        for e in ESTIMATORS:
            s = (run.get("per_prompt") or {}).get(e)
            mean_curve = run["estimates"][e].get("ratio")
            if not s or s.get("median") is None:
                cells.append("undefined")
                continue
            cells.append(f"{s['median']:.2f} [{s['q1']:.2f}, {s['q3']:.2f}] "
                         f"({s['n_defined']}/{s['n_prompts']}; mean curve {_num(mean_curve)})")
        rows.append(f"| {run['model']} | {run['n_layers']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def prompt_difficulty_table(comparison: dict) -> str:
    rows = ["| estimator | levels | median per-prompt ratio | defined | Spearman rho over prompts [95% CI] |",
            "| --- | --- | --- | --- | --- |"]
    for r in comparison.get("prompt_difficulty", []):
        ci = r.get("rho_ci")
        rho = _num(r.get("rho"), "{:+.2f}") + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
        medians = ", ".join(_num(x) for x in r["medians"])
        defined = ", ".join(f"{d}/{n}" for d, n in zip(r["n_defined"], r["n_prompts"]))
        rows.append(f"| {r['estimator']} | {r['levels']} | {medians} | {defined} | {rho} |")
    return "\n".join(rows)


def agreement_table(comparison: dict, scope: str = "models") -> str:
    rows = ["| over | A | B | n | Spearman rho [95% CI] |", "| --- | --- | --- | --- | --- |"]
    for r in comparison.get("agreement", []):
        if r.get("scope") != scope:
            continue
        ci = r.get("ci")
        rho = (_num(r.get("rho"), "{:+.2f}") + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
               if r.get("rho") is not None else f"undefined ({r.get('reason')})")
        rows.append(f"| {r['over']} | {r['a']} | {r['b']} | {r['n']} | {rho} |")
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
        if any(run.get("per_prompt") for run in comparison["runs"]):
            print(f"Per-prompt depths\n\n{per_prompt_table(comparison)}\n")
        if comparison.get("prompt_difficulty"):
            print(f"Difficulty per prompt\n\n{prompt_difficulty_table(comparison)}\n")
        if any(r.get("scope") == "models" for r in comparison.get("agreement", [])):
            print(f"Agreement over models\n\n{agreement_table(comparison)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
