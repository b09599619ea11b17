"""Notebook views: the compact HTML tables that ``_repr_html_`` shows for runs, studies,
measurement results and estimates.

Every value is escaped. The objects of lower layers (results, estimates, runs) reach these views
through :mod:`effective_depth.display`, where this module registers them when it is imported
(the package's ``__init__`` imports it): they never import this module. It imports only the
standard library at import time, and plotly only inside :func:`run_html`, through
``effective_depth.viz``, for the one figure a run view carries (the effective depth by
estimator).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..display import register_html

__all__ = ["fmt", "table", "result_html", "estimates_html", "run_html", "FIGURES"]

#: whether run and study views carry the effective-depth figure (plotly.js is embedded inline
#: in the first one of the session, so that the view renders offline)
FIGURES = True
_plotly_sent = False

_STYLE = ("border-collapse:collapse;font-size:12px;margin:4px 0;"
          "font-family:ui-monospace,SFMono-Regular,Menlo,monospace")
_CELL = "padding:2px 6px;border:1px solid #ddd;text-align:right"
_HEAD = "padding:2px 6px;border:1px solid #ddd;background:#f4f4f4;text-align:left"


def fmt(value: Any) -> str:
    """A cell: 4 significant digits, ``-`` for missing values, lists in brackets."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]], caption: str | None = None) -> str:
    """An escaped HTML table; the first column is a row label."""
    head = "".join(f'<th style="{_HEAD}">{html.escape(fmt(h))}</th>' for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td style="{_HEAD if i == 0 else _CELL}">{html.escape(fmt(v))}</td>'
                         for i, v in enumerate(row)) + "</tr>"
        for row in rows)
    cap = (f'<caption style="text-align:left;font-weight:bold">{html.escape(caption)}</caption>'
           if caption else "")
    return (f'<div style="overflow-x:auto"><table class="effective-depth" style="{_STYLE}">'
            f"{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def _meta_line(meta: Mapping[str, Any]) -> str:
    items = [f"{k}={fmt(v)}" for k, v in meta.items()
             if isinstance(v, (int, float, str, bool)) or v is None]
    return f'<div style="font-size:11px;color:#555">{html.escape(", ".join(items))}</div>'


def result_html(result: Any) -> str:
    """A measurement result: its parameters, then one row per curve (columns: layers) or, for
    per-token maps, one row per mapped example."""
    name = getattr(result, "name", type(result).__name__)
    title = f"{type(result).__name__} ({name}): {result.n_prompts} prompts"
    parts = [_meta_line(result.meta)]
    curves = result.curves_of(None) or {}
    if curves:
        width = max(len(v) for v in curves.values())
        rows = [[curve, *[float(x) for x in values.tolist()]] for curve, values in curves.items()]
        parts.append(table(["curve \\ layer", *range(width)], rows, title))
    maps, tokens = getattr(result, "maps", None), getattr(result, "str_tokens", None)
    if maps is not None and tokens is not None:
        rows = [[f"example {i}", "x".join(map(str, m.shape)),
                 _clip("".join(t), 60)] for i, (m, t) in enumerate(zip(maps, tokens))]
        parts.append(table(["map", "shape (layers x tokens)", "tokens"], rows,
                           title if not curves else None))
    if len(parts) == 1:
        parts.insert(0, f"<b>{html.escape(title)}</b>")
    return "".join(parts)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _entry(value: Any) -> Any:
    """An ``Estimate``, its dict or a stored ``depth`` entry, as the record of the entry
    (:class:`~effective_depth.store.record.EstimateEntry` or ``ScoreEntry``)."""
    from ..store.record import EstimateEntry, ScoreEntry, depth_entry

    if isinstance(value, (EstimateEntry, ScoreEntry)):
        return value
    return depth_entry(value.to_dict() if hasattr(value, "to_dict") else dict(value),
                       "the estimates given")


def estimates_html(estimates: Mapping[str, Any], caption: str | None = "Effective depth") -> str:
    """Estimates (``Estimate`` objects, their dicts or a run's ``depth`` records) and scalar
    scores, one row each."""
    from ..metrics.registry import score_specs
    from ..store.record import ScoreEntry

    scores = score_specs()
    rows = []
    for name, value in estimates.items():
        est = _entry(value)
        ci = None if est.ci is None else list(est.ci)
        if isinstance(est, ScoreEntry):  # a scalar score, shown as its ScoreSpec declares
            spec = scores.get(name)
            note = "" if spec is None or not spec.has_share else spec.share_text(est.to_json())
            rows.append([spec.label if spec else name, "-", "-", est.value, ci, note])
            continue
        notes = list(est.notes)
        if est.layer is None:
            notes.insert(0, f"undefined: {est.reason}")
        elif est.undefined_fraction:
            notes.insert(0, f"undefined in {est.undefined_fraction:.0%} of resamples")
        rows.append([name, est.layer, est.ratio, None, ci, "; ".join(notes)])
    return table(["estimator", "block", "ratio", "value", "95% CI", "note"], rows, caption)


def _figure_html(estimates: Mapping[str, Any]) -> str:
    global _plotly_sent
    from ..store.record import EstimateEntry

    entries = {k: _entry(v) for k, v in estimates.items()}
    defined = {k: e.to_json() for k, e in entries.items() if isinstance(e, EstimateEntry)}
    if not FIGURES or not any(e["layer"] is not None for e in defined.values()):
        return ""
    try:
        from . import ed_summary_figure

        fig = ed_summary_figure(defined)
        out = fig.to_html(full_html=False, include_plotlyjs=not _plotly_sent,
                          default_height=320)
    except Exception:  # noqa: BLE001 - a view without its figure still shows the tables
        return ""
    _plotly_sent = True
    return out


def run_html(run: Any, extra: str = "") -> str:
    """A run: what was measured on what, the estimates, the finished measurements, the figure
    of the effective depth by estimator, and where the dashboard is."""
    res = run.record
    model, task = res.model, res.task
    head = [["run", str(run.path)], ["model", f"{model.name} ({model.n_layers} blocks)"],
            ["task", f"{task.name}(" + ", ".join(
                f"{k}={v}" for k, v in task.params.items()) + ")"],
            ["examples", task.n_examples],
            ["status", res.status or run.incomplete_reason()]]
    if res.accuracy is not None:
        head.append(["exact-match accuracy", f"{100 * res.accuracy:.1f}%"])

    def cost(m: str) -> str:
        used = res.resources.get(m)
        rss = None if used is None else used.peak_rss_gib
        return f"{fmt(res.timing.get(m))} s" + ("" if rss is None else
                                                f", peak RSS {fmt(rss)} GiB")

    head.append(["measurements", ", ".join(f"{m} ({cost(m)})" for m in run.completed) or "none"])
    if extra:
        head.append(["this call", extra])
    dashboard = run.path / "dashboard.html"
    if dashboard.is_file():
        head.append(["dashboard", str(dashboard)])
    depth = dict(res.depth)
    parts = [table(["", ""], head, f"Run: {run.label}")]
    if depth:
        parts.append(estimates_html(depth))
    for w in res.warnings:
        parts.append(f'<div style="font-size:11px;color:#a60">warning: '
                     f'{html.escape(str(w.message))}</div>')
    parts.append(_figure_html(depth))
    return "".join(parts)


register_html("result", result_html)
register_html("estimate", lambda est: estimates_html({est.name: est}, caption=None))
register_html("run", run_html)
