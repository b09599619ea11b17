"""The pruning-criteria comparison of ``effective-depth prune`` runs as markdown (docs/findings.md).

For every run directory: the held-out accuracy [95% CI] of each criterion at 10%, 20% and 30% of
the blocks removed (``k = round(f · L)``, capped at the comparison's largest ``k``), the criteria
that keep the most accuracy there, and each criterion's largest ``k`` whose accuracy stays within
one point of the full model's (``ed_prune``'s rule, ε = 0.01, on the criterion's own removal sets);
and the export's speed-up when the run has one.

    python experiments/prune_report.py runs/prune/* [--fractions 0.1,0.2,0.3] [--figure F.png]

``--figure`` also draws every run's accuracy-vs-blocks-removed figure (the run's own
``pruning.html`` figure, CI bands included) as one panel of a grid, two panels a row, and writes
it as an image (``.png``/``.svg``: needs ``kaleido``, which finds a Chrome or Chromium; set
``BROWSER_PATH`` to point at one) or as HTML (anything else).
"""

from __future__ import annotations

import argparse

from effective_depth.store.pruning import load_prune_run


def _cell(curve: dict, k: int) -> str:
    acc, ci = curve["accuracy"][k], (curve["accuracy_ci"] or [None] * (k + 1))[k]
    return f"{100 * acc:.0f}%" + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else "")


def report(path: str, fractions: list[float]) -> str:
    run = load_prune_run(path)
    comp, res = run.comparison, run.results
    L, curves = comp.n_layers, res["curves"]
    task = res["task"]
    params = ", ".join(f"{k}={v}" for k, v in task["params"].items() if k in ("digits", "shots"))
    lines = [f"**{res['model']['name']}** ({L} blocks) on **{task['name']}**"
             f"{f' ({params})' if params else ''}: {comp.n_prompts} held-out prompts, criteria "
             f"on {comp.meta.get('n_calib')} calibration prompts "
             f"({res.get('calibration', {}).get('source', '?')}); full model "
             f"{100 * curves[comp.criteria[0]]['accuracy'][0]:.0f}% exact match.", ""]
    ks = sorted({min(comp.k_max, max(1, round(f * L))) for f in fractions})
    header = "| criterion | " + " | ".join(f"k = {k} ({100 * k / L:.0f}%)" for k in ks)
    header += " | most blocks within 1 point |"
    lines += [header, "| --- " * (len(ks) + 2) + "|"]
    for c in comp.criteria:
        acc = curves[c]["accuracy"]
        within = max([k for k in range(comp.k_max + 1) if acc[k] >= acc[0] - 0.01 - 1e-9])
        cells = []
        for k in ks:
            cell = _cell(curves[c], k)
            cells.append(f"**{cell}**" if c in comp.best_at(k) else cell)
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {within} |")
    for c, why in comp.skipped.items():
        lines.append(f"| {c} | not measured: {why} |" + " |" * len(ks))
    export = res.get("export")
    if export:
        o, p = export["original"], export["pruned"]
        lines += ["", f"Export: `{export['criterion']}` removed blocks {export['removed']}: "
                  f"accuracy {100 * export['accuracy']['full']:.0f}% → "
                  f"{100 * export['accuracy']['exported']:.0f}%, parameters "
                  f"{o['params']['total']:,} → {p['params']['total']:,}, forward "
                  f"{1000 * o['forward_s']:.0f} ms → {1000 * p['forward_s']:.0f} ms "
                  f"(×{export['speedup']:.2f}; median of {export['repeats']}, tokens "
                  f"{export['tokens']}, {export['device']})."]
    return "\n".join(lines)


def figure(paths: list[str], out: str, n_boot: int = 200) -> None:
    import math

    from plotly.subplots import make_subplots

    from effective_depth.viz.pruning import pruning_figure

    runs = [load_prune_run(p) for p in paths]
    rows = math.ceil(len(runs) / 2)
    titles = [f"{r.results['model']['name'].split('/')[-1]} · {r.results['task']['name']} "
              f"(n = {r.comparison.n_prompts}, L = {r.comparison.n_layers})" for r in runs]
    grid = make_subplots(rows=rows, cols=2, subplot_titles=titles, horizontal_spacing=0.07,
                         vertical_spacing=0.12)
    for i, run in enumerate(runs):
        row, col = i // 2 + 1, i % 2 + 1
        for trace in pruning_figure(run.comparison, n_boot=n_boot).data:
            trace.showlegend = i == 0 and trace.showlegend is not False
            grid.add_trace(trace, row=row, col=col)
        grid.update_xaxes(title_text="blocks removed", dtick=1, row=row, col=col)
        grid.update_yaxes(range=[-0.02, 1.02], tickformat=".0%", row=row, col=col,
                          title_text="held-out exact match" if col == 1 else None)
    grid.update_layout(width=1100, height=380 * rows + 80, template="plotly_white",
                       title="Pruning criteria: held-out accuracy by blocks removed "
                             f"(bands: 95% bootstrap CIs over prompts, {n_boot} resamples)")
    if out.endswith((".png", ".svg")):
        grid.write_image(out, scale=1)
    else:
        grid.write_html(out, include_plotlyjs=True)
    print(f"figure: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--fractions", default="0.1,0.2,0.3")
    parser.add_argument("--figure", help="also write the accuracy figures, one panel per run")
    args = parser.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    print("\n\n".join(report(p, fractions) for p in args.runs))
    if args.figure:
        figure(args.runs, args.figure)


if __name__ == "__main__":
    main()
