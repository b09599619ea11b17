"""Figures of per-prompt depth and estimator agreement (docs/methods.md: "Per-prompt effective
depth", "Estimator agreement").

* :func:`per_prompt_figure` — one run: every prompt's own effective-depth ratio per estimator (a
  box with every prompt as a point), the run's estimate from the mean curve as a diamond, and how
  many prompts are defined;
* :func:`agreement_figure` — Spearman's ρ between every pair of estimators as a heatmap (per run
  over prompts, or per grid over models), each cell with its bootstrap CI;
* comparison figures (registered in :data:`~effective_depth.viz.compare_figures.COMPARISON_FIGURES`):
  the prompt-level difficulty test, per-prompt depth by level and by correctness
  (:func:`correctness_figure`), and the agreement over models.

Figures take numbers that :mod:`effective_depth.analysis.per_prompt` and :mod:`effective_depth.store.compare`
computed; :func:`per_prompt_panels` arranges one run's figures for the dashboard.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from ..analysis.estimation import Estimate
from ..store.record import EstimateEntry, PerPromptEntry
from .compare_figures import COMPARISON_FIGURES, ComparisonFigure
from .figures import TEMPLATE, as_depth_entry, text

__all__ = ["per_prompt_figure", "agreement_figure", "prompt_difficulty_figure",
           "correctness_figure", "model_agreement_figure", "per_prompt_panels"]


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = 440) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title={"text": title, "x": 0.01}, height=height,
                      margin={"l": 70, "r": 30, "t": 70, "b": 60}, hovermode="closest")
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return fig


def _ratio(est: Any) -> float | None:
    """The ratio of an estimate (an ``Estimate``, its dict or a stored entry); None for a score."""
    if isinstance(est, Estimate):
        return est.ratio
    if isinstance(est, Mapping) and "layer" not in est and "value" not in est:
        return est.get("ratio")  # a mapping made by hand: its ratio, when it has one
    entry = as_depth_entry(est)
    return entry.ratio if isinstance(entry, EstimateEntry) else None


def _as_entry(pp: Any) -> PerPromptEntry:
    """A :class:`~effective_depth.analysis.per_prompt.PerPrompt`, its dict or a run's stored entry, as
    the stored entry's record."""
    if isinstance(pp, PerPromptEntry):
        return pp
    return PerPromptEntry.from_json(dict(pp.to_dict() if hasattr(pp, "to_dict") else pp),
                                    "the per-prompt depths given")


def per_prompt_figure(per_prompt: Mapping[str, Any], estimates: Mapping[str, Any] | None = None,
                      title: str = "Per-prompt effective depth") -> go.Figure:
    """Each prompt's own ratio ``(e + 1) / L`` per estimator (box and points; hover: the prompt
    index), the mean-curve estimate as a diamond; the axis label says how many prompts are
    defined. ``per_prompt``: :class:`~effective_depth.analysis.per_prompt.PerPrompt` objects or their
    stored dicts."""
    fig = go.Figure()
    labels = []
    for name, pp in per_prompt.items():
        ratios = list(_as_entry(pp).ratios)
        keep = [(i, r) for i, r in enumerate(ratios) if r is not None]
        label = f"{name} ({len(keep)}/{len(ratios)})"
        labels.append(label)
        fig.add_trace(go.Box(
            x=[label] * len(keep), y=[r for _, r in keep], name=text(name), boxpoints="all",
            jitter=0.5, pointpos=0, marker={"size": 4, "opacity": 0.6}, showlegend=False,
            customdata=[i for i, _ in keep],
            hovertemplate="prompt %{customdata}<br>ratio %{y:.3f}<extra>" + text(name) + "</extra>",
        ))
    mean_x, mean_y = [], []
    for label, name in zip(labels, per_prompt):
        est = (estimates or {}).get(name)
        ratio = None if est is None else _ratio(est)
        if ratio is not None:
            mean_x.append(label)
            mean_y.append(ratio)
    if mean_x:
        fig.add_trace(go.Scatter(
            x=mean_x, y=mean_y, mode="markers", name="estimate from the mean curve",
            marker={"symbol": "diamond", "size": 13, "color": "#222", "line": {"width": 1}},
            hovertemplate="mean curve: %{y:.3f}<extra></extra>"))
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=labels)
    fig.update_yaxes(range=[0, 1.05])
    fig.update_layout(legend={"orientation": "h", "y": -0.2})
    return _layout(fig, title, "estimator (defined prompts / prompts)",
                   "per-prompt ratio (e + 1) / L")


def _ci_text(ci: Sequence[float] | None) -> str:
    return "" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def agreement_figure(rows: Sequence[Mapping[str, Any]], title: str = "Estimator agreement"
                     ) -> go.Figure:
    """Spearman's ρ between estimators as a symmetric heatmap (−1 blue … +1 red); each cell
    shows ρ and its CI, an undefined pair is blank with its reason on hover. ``rows``: the rows
    of one scope and one ``over`` (see :func:`effective_depth.store.compare.estimator_agreement`)."""
    names: list[str] = []
    for r in rows:
        for key in ("a", "b"):
            if r[key] not in names:
                names.append(r[key])
    n = len(names)
    z: list[list[float | None]] = [[1.0 if i == j else None for j in range(n)] for i in range(n)]
    cell = [["" for _ in range(n)] for _ in range(n)]
    hover = [["" for _ in range(n)] for _ in range(n)]
    for r in rows:
        i, j = names.index(r["a"]), names.index(r["b"])
        rho = r.get("rho")
        for a, b in ((i, j), (j, i)):
            z[a][b] = rho
            cell[a][b] = "" if rho is None else f"{rho:.2f}<br>{_ci_text(r.get('ci'))}"
            hover[a][b] = (f"ρ = {rho:.3f} {_ci_text(r.get('ci'))}, n = {r.get('n')}" if rho is not None
                           else text(r.get("reason") or "undefined"))
    for i in range(n):
        cell[i][i], hover[i][i] = "1", "the same estimator"
    fig = go.Figure(go.Heatmap(
        z=z, x=[text(x) for x in names], y=[text(x) for x in names], zmin=-1, zmax=1,
        colorscale="RdBu", reversescale=True, text=cell, texttemplate="%{text}",
        customdata=hover, hovertemplate="%{y} vs %{x}<br>%{customdata}<extra></extra>",
        colorbar={"title": {"text": "ρ"}}))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, "", "", height=max(360, 70 * n + 140))


def prompt_difficulty_figure(comparison: Mapping[str, Any]) -> go.Figure:
    """The prompt-level difficulty test: the median per-prompt ratio at each level, one line per
    (model, estimator), with Spearman's ρ over prompts (pooled across levels) and its CI in the
    legend."""
    fig = go.Figure()
    rows = comparison.get("prompt_difficulty", [])
    several = len({r.get("model") for r in rows}) > 1
    for r in rows:
        rho = r.get("rho")
        rho_text = "ρ undefined" if rho is None else f"ρ = {rho:.2f} {_ci_text(r.get('rho_ci'))}"
        name = str(r.get("estimator")) + (f" · {r.get('model')}" if several else "")
        fig.add_trace(go.Scatter(
            x=list(r.get("levels", [])), y=list(r.get("medians", [])), mode="lines+markers",
            name=text(f"{name}: {rho_text}"),
            customdata=[f"{d}/{p}" for d, p in zip(r.get("n_defined", []), r.get("n_prompts", []))],
            hovertemplate="level %{x}<br>median %{y:.3f}<br>defined %{customdata}<extra>"
                          + text(name) + "</extra>"))
    fig.update_yaxes(range=[0, 1.05])
    fig.update_layout(legend={"orientation": "h", "y": -0.22})
    return _layout(fig, "Difficulty per prompt: median per-prompt ratio by level",
                   "difficulty level", "median per-prompt ratio (e + 1) / L", height=460)


#: colours of the prompts the model answers and of those it fails
SUBSET_COLOURS = {"correct": "#2a9d8f", "failed": "#e76f51"}


def correctness_figure(comparison: Mapping[str, Any]) -> go.Figure:
    """Per-prompt depth by level and by correctness: for each estimator (one panel each), every
    prompt's own ratio at each level, the prompts the full model answers (``correct``) beside
    those it fails (``failed``), as boxes with every prompt a point; the diamond is the
    estimator's rule applied to that part's prompts, with its bootstrap CI. A part with fewer
    prompts than the comparison's minimum is not drawn (the x label gives each part's count,
    the table why); the legend gives the per-prompt ρ within each part."""
    from plotly.subplots import make_subplots

    rows = _drawable(comparison)
    ests = list(dict.fromkeys(str(r.get("estimator")) for r in rows))
    several = len({(r.get("model"), r.get("task")) for r in rows}) > 1
    fig = make_subplots(rows=max(1, len(ests)), cols=1, shared_xaxes=True,
                        vertical_spacing=0.08 if len(ests) > 1 else 0.0,
                        subplot_titles=[text(e) for e in ests] or None)
    shown: set[str] = set()
    for k, e in enumerate(ests, 1):
        for r in (r for r in rows if str(r.get("estimator")) == e):
            subset = str(r.get("subset"))
            colour = SUBSET_COLOURS.get(subset, "#888")
            counts = {s.get("subset"): s.get("n_subset", [])
                      for s in comparison.get("difficulty_by_correctness", []) if (s.get("model"), s.get("task"), s.get("estimator"))
                      == (r.get("model"), r.get("task"), r.get("estimator"))}
            cats = [_level_text(r, i, lv, counts, several) for i, lv in enumerate(r.get("levels", []))]
            least = int(r.get("min_prompts") or 1)
            xs: list[str] = []
            ys: list[float] = []
            for cat, n, values in zip(cats, r.get("n_subset", []), r.get("prompt_ratios") or []):
                if n is None or n < least:
                    continue
                for v in values:
                    if v is not None:
                        xs.append(cat)
                        ys.append(v)
            rho = r.get("rho")
            rho_text = ("ρ " + ("undefined" if rho is None else
                                f"= {rho:.2f} {_ci_text(r.get('rho_ci'))}"))
            name = f"{subset}" + (f" · {r.get('model')}" if several else "")
            fig.add_trace(go.Box(
                x=xs, y=ys, name=text(f"{name} ({e}: {rho_text})"), legendgroup=subset,
                offsetgroup=subset, boxpoints="all", jitter=0.4, pointpos=0,
                marker={"color": colour, "size": 4, "opacity": 0.6}, line={"color": colour},
                hovertemplate="%{x}<br>per-prompt ratio %{y:.3f}<extra>" + text(subset)
                              + "</extra>"), row=k, col=1)
            keep = [i for i, v in enumerate(r.get("ratios", [])) if v is not None]
            ratios = [r["ratios"][i] for i in keep]
            cis = [(r.get("cis") or [None] * len(cats))[i] for i in keep]
            fig.add_trace(go.Scatter(
                x=[cats[i] for i in keep], y=ratios, mode="markers", name=text(f"{subset}: rule on "
                                                                                "its prompts"),
                legendgroup=subset, offsetgroup=subset, showlegend=subset not in shown,
                marker={"symbol": "diamond", "size": 12, "color": colour,
                        "line": {"width": 1, "color": "#222"}},
                error_y={"type": "data", "symmetric": False,
                         "array": [0.0 if c is None else max(0.0, c[1] - v) for v, c in zip(ratios, cis)],
                         "arrayminus": [0.0 if c is None else max(0.0, v - c[0])
                                        for v, c in zip(ratios, cis)]},
                customdata=[_ci_text(c) or "no CI" for c in cis],
                hovertemplate="%{x}<br>" + text(subset) + " prompts: ratio %{y:.3f}, CI "
                              "%{customdata}<extra>" + text(e) + "</extra>"), row=k, col=1)
            shown.add(subset)
        fig.update_yaxes(range=[0, 1.05], title_text="ratio (e + 1) / L", row=k, col=1)
    fig.update_layout(boxmode="group", scattermode="group",
                      legend={"orientation": "h", "y": -0.12})
    _layout(fig, "Per-prompt depth by level and by correctness", "", "",
            height=max(420, 260 * len(ests) + 140))
    fig.update_yaxes(title_text="ratio (e + 1) / L")
    fig.update_xaxes(title_text="difficulty level (prompts answered correct / failed)",
                     row=max(1, len(ests)), col=1)
    return fig


def _drawable(comparison: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The correctness rows with something to draw: at a level where the part has enough
    prompts (``min_prompts``), a part's estimate or a prompt's depth."""
    def drawn(r: Mapping[str, Any]) -> bool:
        least = int(r.get("min_prompts") or 1)
        values = r.get("prompt_ratios") or []
        ratios = r.get("ratios") or []
        for i, n in enumerate(r.get("n_subset") or []):
            if n is None or n < least:
                continue
            if (i < len(ratios) and ratios[i] is not None) or any(
                    v is not None for v in (values[i] if i < len(values) else [])):
                return True
        return False

    return [r for r in comparison.get("difficulty_by_correctness", []) if drawn(r)]


def _level_text(row: Mapping[str, Any], i: int, level: Any, counts: Mapping[Any, Sequence[Any]],
                several: bool) -> str:
    """The x label of one level: the level, with how many prompts the model answers and fails."""
    n = {s: (c[i] if i < len(c) else None) for s, c in counts.items()}
    tally = "/".join("?" if n.get(s) is None else str(n[s]) for s in SUBSET_COLOURS)
    return (f"{row.get('model')} · " if several else "") + f"level {level} ({tally})"


def _model_rows(comparison: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in comparison.get("agreement", []) if r.get("scope") == "models"]


def model_agreement_figure(comparison: Mapping[str, Any]) -> go.Figure:
    """Agreement over models: the heatmap of the first group of runs (one task and difficulty)
    that has three or more models; the others are in the table."""
    rows = _model_rows(comparison)
    over = rows[0]["over"] if rows else ""
    return agreement_figure([r for r in rows if r["over"] == over],
                            f"Estimator agreement over models: {text(over)}")


COMPARISON_FIGURES.setdefault("prompt_difficulty", ComparisonFigure(
    "prompt_difficulty", "Difficulty per prompt", prompt_difficulty_figure))
COMPARISON_FIGURES.setdefault("difficulty_by_correctness", ComparisonFigure(
    "difficulty_by_correctness", "Per-prompt depth by level and by correctness",
    correctness_figure, lambda c: bool(_drawable(c))))
COMPARISON_FIGURES.setdefault("agreement", ComparisonFigure(
    "agreement", "Estimator agreement over models", model_agreement_figure,
    lambda c: bool(_model_rows(c))))


def per_prompt_panels(run: Any) -> list[tuple[str, str, go.Figure, str]]:
    """One run's per-prompt figures as ``(key, title, figure, note)``: the distribution of
    per-prompt depths, and the agreement of the estimators over the run's prompts."""
    from ..analysis.per_prompt import prompt_agreement, run_per_prompt

    pp = run_per_prompt(run)
    if not pp:
        return []
    estimates = run.record.estimates()
    panels = [("per_prompt", "Per-prompt effective depth", per_prompt_figure(pp, estimates),
               "each point is one prompt; the diamond is the estimate from the mean curve")]
    cfg = run.config_record.config
    level = float(cfg.ci_level)
    rows = prompt_agreement(pp, n_boot=int(cfg.n_boot), seed=int(cfg.seed), level=level)
    if rows and any(r.get("rho") is not None and not math.isnan(r["rho"]) for r in rows):
        panels.append(("agreement", "Estimator agreement over prompts",
                       agreement_figure(rows, "Estimator agreement over this run's prompts "
                                              f"(Spearman's ρ, {100 * level:g}% CI)"),
                       "rank correlation of per-prompt depths, prompts where both are defined"))
    return panels
