"""Figures of the paper's three questions (docs/methods.md §7), drawn from a comparison object.

The comparison is the plain-data dict of :func:`effective_depth.store.compare.compare_runs`::

    {"estimators": [...], "runs": [...], "scale": [...], "training": [...], "difficulty": [...]}

* **scale** — the effective-depth ratio against the number of blocks, one line per estimator
  and model family (runs of different families are separate points, never joined: the figure
  says why), and Csordás's depth score as a share of the depth;
* **training** — the ratios of a base model and its trained twin as paired bars, and their
  difference with its bootstrap CI;
* **difficulty** — the ratio per difficulty level, one line per (model, task, estimator), with
  Spearman's ρ and its CI in the legend.

Every ratio carries its bootstrap CI as error bars; rows whose ratio is undefined are left out of
the lines (the tables say why).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figures import PALETTE, TEMPLATE, text

__all__ = ["COMPARISON_FIGURES", "ComparisonFigure", "comparison_figures", "scale_figure",
           "training_figure", "difficulty_figure"]

Comparison = Mapping[str, Any]


@dataclass(frozen=True)
class ComparisonFigure:
    """A figure of one section (``"scale"``, ``"training"``, ``"difficulty"``) of a comparison."""

    section: str
    title: str
    fn: Callable[[Comparison], go.Figure]
    #: whether the figure says something for this comparison (default: its section has rows)
    relevant: Callable[[Comparison], bool] | None = None

    def shown(self, comparison: Comparison) -> bool:
        if not comparison.get(self.section):
            return False
        return self.relevant is None or self.relevant(comparison)


def _several_depths(comparison: Comparison) -> bool:
    """A scale plot needs models of at least two depths."""
    return len({r.get("n_layers") for r in comparison.get("scale", [])}) >= 2


def _finish(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = 460) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title={"text": title, "x": 0.01}, height=height,
                      margin={"l": 70, "r": 30, "t": 70, "b": 60}, hovermode="closest",
                      legend={"orientation": "h", "y": -0.22})
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return fig


def _errors(ratios: Sequence[float | None], cis: Sequence[Sequence[float] | None]) -> dict[str, Any]:
    """Asymmetric error bars from CIs (0 where a CI or a ratio is missing)."""
    plus = [0.0 if c is None or r is None else max(0.0, float(c[1]) - r) for r, c in zip(ratios, cis)]
    minus = [0.0 if c is None or r is None else max(0.0, r - float(c[0])) for r, c in zip(ratios, cis)]
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus}


def _integer_ticks(values: Sequence[Any]) -> dict[str, Any]:
    """Whole-number ticks when every x value is an integer (block counts, digit levels)."""
    nums = [v for v in values if v is not None]
    if not nums or not all(isinstance(v, int) and not isinstance(v, bool) for v in nums):
        return {}
    return {"tickmode": "linear", "tick0": 0, "dtick": max(1, math.ceil((max(nums) - min(nums)) / 10))}


def _ci_text(ci: Sequence[float] | None) -> str:
    return "no CI" if ci is None else f"[{float(ci[0]):.3f}, {float(ci[1]):.3f}]"


def _label(value: Any) -> str:
    """A task or model field (a string, or a dict with a name and params) as plain text."""
    if isinstance(value, Mapping):
        params = ",".join(f"{k}={v}" for k, v in (value.get("params") or {}).items())
        return str(value.get("name", "?")) + (f"({params})" if params else "")
    return "?" if value is None else str(value)


def _varying(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """The keys whose value differs between rows (only those go into trace names)."""
    return [k for k in keys if len({_label(r.get(k)) for r in rows}) > 1]


#: marker symbols and dash patterns cycled over the lines of a comparison figure, so that lines
#: with identical values stay distinguishable (together with a small horizontal offset)
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "cross", "triangle-down")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def _style(i: int) -> dict[str, Any]:
    """Colour, marker and dash of line ``i``: no two lines of a figure look alike, and a single
    point is drawn as a large marker."""
    color = PALETTE[i % len(PALETTE)]
    return {"line": {"color": color, "dash": DASHES[i % len(DASHES)], "width": 2},
            "marker": {"color": color, "symbol": SYMBOLS[i % len(SYMBOLS)], "size": 10,
                       "line": {"width": 1, "color": "white"}}}


def _offsets(n: int, xs: Sequence[Any]) -> list[float]:
    """Horizontal offsets of ``n`` lines over numeric x values ``xs``: spread over a fifth of the
    smallest gap between x values (or ±0.15 with a single x), centred on the true x."""
    nums = sorted({float(x) for x in xs if isinstance(x, (int, float)) and not isinstance(x, bool)})
    if n < 2 or not nums:
        return [0.0] * max(n, 0)
    gap = min((b - a for a, b in zip(nums, nums[1:])), default=1.5)
    width = 0.2 * gap
    return [width * (i / (n - 1) - 0.5) for i in range(n)]


def _shifted(xs: Sequence[Any], offset: float) -> list[Any]:
    return [x + offset if isinstance(x, (int, float)) and not isinstance(x, bool) else x for x in xs]


def _params_text(row: Mapping[str, Any]) -> str:
    """The model's size as the comparison states it: Hugging Face's count (a tied embedding
    once) and the non-embedding part, or "size unknown"."""
    total, non_emb = row.get("n_params"), row.get("n_params_non_embedding")
    if total is None:
        return "size unknown"
    if non_emb is None:
        return f"{total:,} parameters, as an older run counted them (a tied matrix twice)"
    return f"{total:,} parameters (Hugging Face count), {non_emb:,} non-embedding"


def _family(row: Mapping[str, Any]) -> str:
    """A row's model family: the comparison's, else (a comparison written before families)
    the one its model's name gives (:func:`effective_depth.store.families.family_of`)."""
    if row.get("family") is not None:
        return str(row["family"])
    from ..store.families import family_of

    return family_of(_label(row.get("model"))).text


def _apart_note(families: Sequence[str]) -> str | None:
    """Why points of several families are not joined (None: one family)."""
    names = list(dict.fromkeys(families))
    if len(names) < 2:
        return None
    return ("not joined: different families: " + " vs ".join(names)
            + " (a scale trend is drawn within one model family only)")


def _score_rows(comparison: Comparison) -> dict[str, list[dict[str, Any]]]:
    """Per registered score with a range (a :class:`~effective_depth.metrics.registry.ScoreSpec` with
    ``span``), the runs that store it: the score as a share of the depth, with its CI."""
    from ..metrics.registry import score_specs

    out: dict[str, list[dict[str, Any]]] = {}
    for name, spec in score_specs().items():
        if not spec.has_share:
            continue
        rows = []
        for run in comparison.get("runs", []):
            score = run.get(name) or {}
            L = int(score.get("n_layers") or run.get("n_layers") or 0)
            shares = spec.shares(score, L)
            if shares is None:
                continue
            span = spec.range_of(L)
            rows.append({"model": run.get("model"), "family": _family(run), "n_layers": L,
                         "n_params": run.get("n_params"),
                         "task": run.get("task"), "difficulty": run.get("difficulty"),
                         "ratio": shares[0], "ci": shares[1], "block": score.get("value"),
                         "span": f"{span[0]:g}..{span[1]:g}" if span else ""})
        if rows:
            out[name] = sorted(rows, key=lambda r: (r["n_layers"], _label(r.get("model"))))
    return out


def scale_figure(comparison: Comparison) -> go.Figure:
    """Scale: the effective-depth ratio against the model's number of blocks, one line per
    estimator and model family (and per task or difficulty where those differ), with
    bootstrap-CI error bars (left), and Csordás's depth score as a share of the depth (right);
    hover names the model. A flat line means the ratio stays constant across scale. Only runs of
    one family are joined: a family with one model is a point, and a note under the figure says
    which families are kept apart. Lines differ in colour, marker and dash and are offset
    slightly along x, so identical values never hide each other (the hover gives the true number
    of blocks)."""
    rows = [{**r, "family": _family(r)} for r in comparison.get("scale", [])
            if r.get("ratio") is not None]
    extra = _varying(rows, ("family", "task", "difficulty"))
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        key = (r["estimator"], *(_label(r.get(k)) for k in extra))
        groups.setdefault(key, []).append(r)
    from ..metrics.registry import score_specs

    specs = score_specs()
    scores = _score_rows(comparison)
    score_title = ("scores" if len(scores) != 1 else specs[next(iter(scores))].label)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.68, 0.32], horizontal_spacing=0.1,
                        subplot_titles=("effective-depth ratio by estimator",
                                        f"{score_title}, % of depth"))
    all_x = [r.get("n_layers") for r in rows]
    offsets = _offsets(len(groups), all_x)
    for i, (key, members) in enumerate(groups.items()):
        members = sorted(members, key=lambda r: (r.get("n_layers") or 0, _label(r.get("model"))))
        ratios = [r["ratio"] for r in members]
        xs = [r.get("n_layers") for r in members]
        fig.add_trace(go.Scatter(
            x=_shifted(xs, offsets[i]), y=ratios, mode=_mode(members),
            name=text(" · ".join(key)), error_y=_errors(ratios, [r.get("ci") for r in members]),
            customdata=[[text(_label(r.get("model"))), _params_text(r),
                         _ci_text(r.get("ci")), r.get("n_layers")] for r in members],
            hovertemplate="%{customdata[0]} (%{customdata[1]})<br>%{customdata[3]} blocks<br>"
                          "ratio %{y:.3f}, CI %{customdata[2]}<extra>%{fullData.name}</extra>",
            **_style(i),
        ), row=1, col=1)
    score_groups = [(name, fam, [r for r in members if r["family"] == fam])
                    for name, members in scores.items()
                    for fam in dict.fromkeys(r["family"] for r in members)]
    several = len({fam for _, fam, _ in score_groups}) > 1
    for j, (name, fam, members) in enumerate(score_groups):
        spec = specs[name]
        values = [r["ratio"] for r in members]
        fig.add_trace(go.Scatter(
            x=[r["n_layers"] for r in members], y=values, mode=_mode(members),
            name=text(f"{spec.short} (% of depth)" + (f" · {fam}" if several else "")),
            error_y=_errors(values, [r["ci"] for r in members]),
            customdata=[[text(_label(r.get("model"))), _pct_ci(r["ci"]), f"{r['block']:.2f}",
                         r["span"]] for r in members],
            hovertemplate="%{customdata[0]}<br>%{x} blocks<br>" + text(spec.short)
                          + " %{y:.1%}, CI %{customdata[1]}<br>(" + text(spec.unit)
                          + " %{customdata[2]} of %{customdata[3]})<extra>"
                          + text(spec.short) + "</extra>",
            **_style(len(groups) + j),
        ), row=1, col=2)
    fig = _finish(fig, "Scale: effective-depth ratio against model depth", "", "", height=500)
    ticks = _integer_ticks([*all_x, *(r["n_layers"] for rs in scores.values() for r in rs)])
    fig.update_xaxes(title_text="number of blocks L", **ticks)
    fig.update_yaxes(title_text="effective-depth ratio (e + 1) / L", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="; ".join(f"{specs[n].short} as a share of its range"
                                          for n in scores) or "share of the depth", range=[0, 1.05],
                     tickformat=".0%", row=1, col=2)
    fig.update_layout(margin={"t": 90})
    note = _apart_note([r["family"] for r in rows]
                       + [r["family"] for rs in scores.values() for r in rs])
    if note:
        fig.add_annotation(text=text(note), xref="paper", yref="paper", x=0, y=1.13,
                           showarrow=False, xanchor="left", font={"size": 12, "color": "#555"})
    return fig


def _mode(members: Sequence[Mapping[str, Any]]) -> str:
    """A line through the points of one family; a single point is a marker alone."""
    return "lines+markers" if len(members) > 1 else "markers"


def _pct_ci(ci: Sequence[float] | None) -> str:
    return "no CI" if ci is None else f"[{float(ci[0]):.1%}, {float(ci[1]):.1%}]"


def _run_ci(comparison: Comparison, model: str, row: Mapping[str, Any]) -> list[float] | None:
    """The CI of one run's ratio, looked up in ``comparison["runs"]`` (None when absent)."""
    for run in comparison.get("runs", []):
        if _label(run.get("model")) != model or _label(run.get("task")) != _label(row.get("task")):
            continue
        if row.get("difficulty") is not None and run.get("difficulty") != row.get("difficulty"):
            continue
        est = (run.get("estimates") or {}).get(row.get("estimator"), {})
        return est.get("ci")
    return None


def training_figure(comparison: Comparison) -> go.Figure:
    """Training type: the ratio of each base model and its trained twin as paired bars with
    their bootstrap CIs (left), and the difference trained − base with its CI (right; a CI that
    excludes 0 is a real difference)."""
    rows = list(comparison.get("training", []))
    extra = _varying(rows, ("base", "trained", "task", "difficulty"))
    labels = []
    for i, r in enumerate(rows):
        label = " · ".join([str(r.get("estimator")), *(_label(r.get(k)) for k in extra)])
        labels.append(text(label if label not in labels else f"{label} #{i}"))
    base = [r.get("ratio_base") for r in rows]
    trained = [r.get("ratio_trained") for r in rows]
    diff = [r.get("diff") for r in rows]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.12,
                        subplot_titles=("ratios", "difference trained − base"))
    fig.add_trace(go.Bar(
        x=labels, y=base, name="base", customdata=[text(_label(r.get("base"))) for r in rows],
        error_y=_errors(base, [_run_ci(comparison, _label(r.get("base")), r) for r in rows]),
        hovertemplate="%{customdata}<br>%{x}<br>ratio %{y:.3f}<extra>base</extra>",
    ), row=1, col=1)
    fig.add_trace(go.Bar(
        x=labels, y=trained, name="trained",
        customdata=[text(_label(r.get("trained"))) for r in rows],
        error_y=_errors(trained, [_run_ci(comparison, _label(r.get("trained")), r) for r in rows]),
        hovertemplate="%{customdata}<br>%{x}<br>ratio %{y:.3f}<extra>trained</extra>",
    ), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=labels, y=diff, mode="markers", name="difference", marker={"size": 11, "color": "#444"},
        error_y=_errors(diff, [r.get("diff_ci") for r in rows]),
        customdata=[_ci_text(r.get("diff_ci")) for r in rows],
        hovertemplate="%{x}<br>trained − base = %{y:.3f}, CI %{customdata}<extra></extra>",
    ), row=1, col=2)
    fig.add_hline(y=0, line_color="#bbb", row=1, col=2)
    fig.update_layout(barmode="group")
    fig = _finish(fig, "Training type: base vs. trained model", "", "")
    fig.update_xaxes(title_text="estimator", row=1, col=1)
    fig.update_xaxes(title_text="estimator", row=1, col=2)
    fig.update_yaxes(title_text="effective-depth ratio (e + 1) / L", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="ratio difference", row=1, col=2)
    return fig


def _rho_text(row: Mapping[str, Any]) -> str:
    rho = row.get("rho")
    if rho is None:
        return "ρ undefined"
    return f"ρ = {rho:.2f} " + ("" if row.get("rho_ci") is None else _ci_text(row["rho_ci"]))


def difficulty_figure(comparison: Comparison) -> go.Figure:
    """Difficulty: the effective-depth ratio per difficulty level with bootstrap-CI error bars,
    one line per (model, task, estimator); Spearman's ρ between level and ratio (with its CI) in
    the legend, and in the title when there is one line. ρ > 0: harder problems use more
    layers. (The depth-score rows of the comparison are block indices, not ratios: they are left
    to the table.)"""
    rows = [r for r in comparison.get("difficulty", []) if str(r.get("estimator", "")).startswith("ed_")]
    extra = _varying(rows, ("model", "task"))
    fig = go.Figure()
    offsets = _offsets(len(rows), [v for r in rows for v in r.get("levels", [])])
    for i, r in enumerate(rows):
        ratios = list(r.get("ratios", []))
        levels = list(r.get("levels", []))
        name = " · ".join([str(r.get("estimator")), *(_label(r.get(k)) for k in extra)])
        fig.add_trace(go.Scatter(
            x=_shifted(levels, offsets[i]), y=ratios, mode="lines+markers",
            name=text(f"{name}: {_rho_text(r)}"), customdata=levels,
            error_y=_errors(ratios, list(r.get("cis") or [None] * len(ratios))),
            hovertemplate="level %{customdata}<br>ratio %{y:.3f}<extra>" + text(name) + "</extra>",
            **_style(i),
        ))
    title = "Difficulty: effective-depth ratio against difficulty level"
    if len(rows) == 1:
        title += f" ({text(_rho_text(rows[0]))})"
    fig.update_yaxes(range=[0, 1.05])
    fig.update_xaxes(**_integer_ticks([v for r in rows for v in r.get("levels", [])]))
    return _finish(fig, title, "difficulty level", "effective-depth ratio (e + 1) / L")


#: figure name -> the comparison section it needs, its title and the function that draws it
COMPARISON_FIGURES: dict[str, ComparisonFigure] = {
    "scale": ComparisonFigure("scale", "Scale", scale_figure, _several_depths),
    "training": ComparisonFigure("training", "Training type", training_figure),
    "difficulty": ComparisonFigure("difficulty", "Difficulty", difficulty_figure),
}


def comparison_figures(comparison: Comparison) -> dict[str, go.Figure]:
    """Every comparison figure whose section has rows, by name."""
    return {name: spec.fn(comparison) for name, spec in COMPARISON_FIGURES.items()
            if spec.shown(comparison)}
