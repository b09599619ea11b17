"""One self-contained HTML dashboard for one or more run directories.

The file works offline and from disk: plotly.js is embedded once, there is no external script or
stylesheet, and each figure is a JSON document in a ``<script type="application/json">`` block
(``<``, ``>`` and ``&`` written as ``\\u003c``, ``\\u003e``, ``\\u0026``, so no string from a
result can close the block) that a few lines of plain JavaScript hand to ``Plotly.newPlot``.
Every text from a result (model names, prompts, tokens, reasons) is HTML-escaped in the tables
and JSON-escaped in the figure data: a prompt ``<script>alert(1)</script>`` shows as text.

Per run: a summary table (model, task, accuracy, depth score), the effective-depth table
(estimator, block, ratio, CI, reason), the study's config, and every figure of
:mod:`effective_depth.viz.figures` for the measurements the run finished. With several runs a
``<select id="run-selector">`` switches between them (figures are drawn when their run is first
shown), and a comparison section shows the runs side by side with the scale, training-type and
difficulty figures of :func:`effective_depth.store.compare.compare_runs`.

Only the standard library and plotly: no template engine.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.utils import PlotlyJSONEncoder

from ..errors import ConfigError, EffectiveDepthError
from ..metrics.options import nest_flat_options
from ..store.record import EstimateEntry, StudyFields
from ..store.results import Run, atomic_write_text, load_run
from .compare_figures import COMPARISON_FIGURES
from .figures import SKIP_MODES, ed_summary_figure, figure_specs, skip_modes_figure
from .per_prompt import per_prompt_panels  # also registers its comparison figures

__all__ = ["Panel", "run_panels", "comparison_panels", "skip_mode_panels", "compute_comparison",
           "build_dashboard_html", "write_dashboard", "load_runs"]

log = logging.getLogger(__name__)

RunLike = Run | str | os.PathLike


@dataclass
class Panel:
    """One figure of the dashboard: ``key`` is made of fixed names and indices only (it becomes a
    DOM id and an export file name); ``title`` and ``note`` are plain text, escaped on output."""

    key: str
    title: str
    figure: go.Figure
    note: str = ""


# --- what goes on the page ----------------------------------------------------------------------


def load_runs(runs: Sequence[RunLike]) -> list[Run]:
    """Runs as :class:`Run` objects (paths are loaded with :func:`load_run`)."""
    if not runs:
        raise ConfigError("a dashboard needs at least one run directory")
    return [r if isinstance(r, Run) else load_run(r) for r in runs]


def _estimates(run: Run) -> dict[str, EstimateEntry]:
    return run.record.estimates()


def _estimate_dicts(run: Run) -> dict[str, dict[str, Any]]:
    """The run's estimates as the figure functions take them (``Estimate.to_dict()`` form)."""
    return {k: v.to_json() for k, v in _estimates(run).items()}


def _example_note(run: Run, index: int) -> str:
    examples = run.inputs_record.examples
    if index >= len(examples):
        return f"example {index}"
    ex = examples[index]
    return f"example {index}: {ex.prompt} → {ex.answer or ''}"


def run_panels(run: Run) -> list[Panel]:
    """Every figure of one run: the effective-depth summary, then each finished measurement's
    registered figures (one per example map for erasure and integrated gradients)."""
    estimates = _estimate_dicts(run)
    context = {"d_vocab": run.record.model.d_vocab}
    panels = []
    if estimates:
        panels.append(Panel("ed_summary", "Effective depth by estimator", ed_summary_figure(estimates)))
        panels += [Panel(*p) for p in per_prompt_panels(run)]
    for name in run.completed:
        result = run.metric(name)
        for spec in figure_specs(result).values():
            kwargs = {"estimates": estimates} if spec.marks_estimates else {}
            kwargs.update({k: context[k] for k in spec.context if context.get(k) is not None})
            examples = range(len(result.maps)) if spec.per_example else [None]
            for i in examples:
                extra = {} if i is None else {"example": i}
                key = f"{name}-{spec.kind}" + ("" if i is None else f"-{i}")
                note = "" if i is None else _example_note(run, i)
                panels.append(Panel(key, spec.title, spec.fn(result, **kwargs, **extra), note))
    return panels


def comparison_panels(comparison: Mapping[str, Any]) -> list[Panel]:
    """The comparison figures whose section has rows."""
    return [Panel(f"compare-{name}", spec.title, spec.fn(comparison))
            for name, spec in COMPARISON_FIGURES.items() if spec.shown(comparison)]


def _skip_key(run: Run) -> tuple[str, ...]:
    """What must agree for two runs' skip effects to differ in their mode only."""
    res, cfg = run.record, _skip_options(run)
    task = res.task
    return (str(res.model.name), str(task.name),
            json.dumps(task.params, sort_keys=True, default=str), str(task.difficulty),
            str(cfg.get("component", "block")), str(cfg.get("aggregate", "max")))


def _skip_options(run: Run) -> dict[str, Any]:
    """The skip-effect options a run was made with (flat names of earlier versions read too)."""
    stored = StudyFields.from_json(nest_flat_options(run.config_record.config.to_json()),
                                   str(run.path / "config.json"), "config")
    return stored.options_of("skip_effects")


def skip_mode_panels(runs: Sequence[Run]) -> list[Panel]:
    """Runs of one model and task whose skip effects were measured in both modes (all positions
    and future positions): one side-by-side figure per such pair, as the papers show them."""
    groups: dict[tuple[str, ...], dict[str, int]] = {}
    for i, run in enumerate(runs):
        if "skip_effects" not in run.completed:
            continue
        mode = _skip_options(run).get("mode", "future")
        groups.setdefault(_skip_key(run), {}).setdefault(mode, i)
    panels = []
    for n, by_mode in enumerate(g for g in groups.values() if set(SKIP_MODES) <= set(g)):
        members = [by_mode[m] for m in SKIP_MODES]
        figure = skip_modes_figure([runs[i].metric("skip_effects") for i in members])
        note = " | ".join(f"{SKIP_MODES[m]}: run {i + 1}" for m, i in zip(SKIP_MODES, members))
        panels.append(Panel(f"skip-modes-{n}", f"Skip effects in both modes: {runs[members[0]].label}",
                            figure, note))
    return panels


def compute_comparison(runs: list[Run]) -> dict[str, Any] | None:
    """The comparison of several runs, with the runs' own bootstrap settings; None when the
    comparison module is missing or the runs cannot be compared."""
    try:
        from ..store.compare import compare_runs
    except ImportError:
        return None
    configs = [r.config_record.config for r in runs]
    n_boot = min(int(c.n_boot) for c in configs)
    level = float(configs[0].ci_level)
    try:
        return compare_runs(runs, n_boot=n_boot, level=level)
    except EffectiveDepthError as exc:
        log.warning("the dashboard has no comparison figures: %s", exc)
        return None


# --- HTML pieces ------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """HTML text or attribute value."""
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A value for a table cell (not yet escaped)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def safe_json(obj: Any) -> str:
    """JSON that can sit inside a ``<script>`` element: ``<``, ``>`` and ``&`` escaped."""
    text = json.dumps(obj, cls=PlotlyJSONEncoder, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv_table(pairs: Sequence[tuple[str, Any]], cls: str) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in pairs)
    return f'<table class="{cls}"><tbody>{rows}</tbody></table>'


def _ci(value: Any) -> str:
    if not value:
        return "—"
    return f"[{float(value[0]):.3f}, {float(value[1]):.3f}]"


def _level(run: Run) -> str:
    return f"{100 * float(run.config_record.config.ci_level):g}%"


def ed_table(run: Run) -> str:
    """Estimator, block, ratio, CI, share of undefined resamples, reason."""
    rows = []
    for name, est in _estimates(run).items():
        ratio = est.ratio
        rows.append([name, est.layer, None if ratio is None else round(float(ratio), 4),
                     _ci(est.ci), est.undefined_fraction, est.reason or ""])
    if not rows:
        return '<p class="empty">No effective-depth estimates in this run.</p>'
    header = ["estimator", "block e", "ratio (e+1)/L", f"{_level(run)} CI", "undefined resamples",
              "reason"]
    return _table(header, rows, "ed")


def summary_table(run: Run) -> str:
    """Model, task, accuracy and every registered score of a run (each shown as its
    :class:`~effective_depth.metrics.registry.ScoreSpec` declares)."""
    from ..metrics.registry import score_specs

    res = run.record
    model, task = res.model, res.task
    stored = {name: entry.to_json() for name, entry in res.depth.items()}
    scores = [row for spec in score_specs().values()
              for row in spec.table_rows(stored.get(spec.name), model.n_layers)]
    pairs = [
        ("model", model.name), ("architecture", model.architecture),
        ("blocks", model.n_layers), ("d_model", model.d_model),
        ("parameters", model.n_params), ("task", task.name),
        ("task parameters", task.params),
        ("difficulty", task.difficulty),
        ("examples", task.n_examples), ("accuracy", res.accuracy),
        *scores,
        ("finished", ", ".join(run.completed)), ("status", res.status or "incomplete"),
        ("run directory", str(run.path)),
    ]
    return _kv_table(pairs, "summary")


def config_table(run: Run) -> str:
    """Every field of the StudyConfig that produced the run, and the library versions."""
    from ..metrics.options import flatten_options

    cfg = run.config_record.config.to_json()
    options = flatten_options(cfg.pop("options", None) or {})
    env = run.config_record.environment
    pairs = [*cfg.items(), *options.items(), *((f"version: {k}", v) for k, v in env.items())]
    return _kv_table(pairs, "config")


def _absent(est: EstimateEntry) -> str:
    """An undefined or missing estimate's cell: what it is and why."""
    reason = str(est.reason or "no reason stored")
    if reason.startswith(("not run", "skipped", "not computed")):
        return reason
    return f"undefined: {reason}"


def comparison_table(runs: Sequence[Run]) -> str:
    """One row per run: label, blocks, accuracy, and each estimator's ratio with its CI."""
    names = list(dict.fromkeys(k for r in runs for k in _estimates(r)))  # the runs' own order
    rows = []
    for i, r in enumerate(runs):
        ests = _estimates(r)
        cells = []
        for n in names:
            est = ests.get(n)
            if est is None:
                found = r.estimate_entry(n)
                cells.append(_absent(found) if isinstance(found, EstimateEntry) else "—")
                continue
            ratio = est.ratio
            cells.append(_absent(est) if ratio is None else f"{ratio:.3f} {_ci(est.ci)}")
        rows.append([f"{i + 1}. {r.label}", r.record.model.n_layers, r.record.accuracy, *cells])
    return _table(["run", "blocks", "accuracy", *names], rows, "ed compare")


class _FigureStore:
    """Figure JSON blocks; the plotly template is stored once, not in every figure."""

    def __init__(self) -> None:
        self.templates: dict[str, Any] = {}

    def block(self, div_id: str, panel: Panel) -> str:
        spec = panel.figure.to_plotly_json()
        layout = dict(spec.get("layout", {}))
        template = layout.pop("template", None)
        ref = None
        if template is not None:
            raw = json.dumps(template, cls=PlotlyJSONEncoder, sort_keys=True)
            ref = "t" + hashlib.sha1(raw.encode()).hexdigest()[:10]
            self.templates.setdefault(ref, template)
        payload = {"data": spec.get("data", []), "layout": layout, "template": ref}
        note = f'<figcaption class="note">{esc(panel.note)}</figcaption>' if panel.note else ""
        return (f'<figure class="panel">{note}'
                f'<div class="figure" id="{div_id}" role="img" aria-label="{esc(panel.title)}"></div>'
                f'<script type="application/json" id="{div_id}-json">{safe_json(payload)}</script>'
                "</figure>")

    def templates_block(self) -> str:
        return f'<script type="application/json" id="plotly-templates">{safe_json(self.templates)}</script>'


def _run_section(index: int, run: Run, store: _FigureStore, hidden: bool) -> str:
    sid = f"run-{index}"
    figures = "".join(store.block(f"{sid}-{p.key}", p) for p in run_panels(run))
    return (f'<section class="run" id="{sid}" data-label="{esc(run.label)}"{" hidden" if hidden else ""}>'
            f"<h2>{esc(run.label)}</h2>"
            f'<div class="tables"><div><h3>Run</h3>{summary_table(run)}</div>'
            f"<div><h3>Effective depth</h3>{ed_table(run)}</div></div>"
            f"<details><summary>Study configuration</summary>{config_table(run)}</details>"
            f'<div class="grid">{figures}</div></section>')


def _comparison_section(runs: Sequence[Run], comparison: Mapping[str, Any] | None,
                        store: _FigureStore) -> str:
    panels = comparison_panels(comparison) if comparison else []
    panels += skip_mode_panels(runs)
    figures = "".join(store.block(f"comparison-{p.key}", p) for p in panels)
    return (f'<section id="comparison"><h2>Comparison of {len(runs)} runs</h2>'
            f"{comparison_table(runs)}"
            f'<div class="grid">{figures}</div></section>')


def _selector(runs: Sequence[Run]) -> str:
    options = "".join(f'<option value="run-{i}">{esc(f"{i + 1}. {r.label}")}</option>'
                      for i, r in enumerate(runs))
    return (f'<nav><label for="run-selector">Run</label> '
            f'<select id="run-selector">{options}</select></nav>')


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3b57;color:#fff;padding:14px 24px;display:flex;gap:24px;align-items:center;flex-wrap:wrap}
header h1{font-size:1.3em;margin:0}
nav select{font-size:1em;padding:4px;max-width:70vw}
main{padding:8px 24px 40px}
section{margin-top:18px}
section[hidden]{display:none}
h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:4px}
h3{font-size:1em;margin:6px 0}
.tables{display:flex;flex-wrap:wrap;gap:24px}
table{border-collapse:collapse;font-size:.85em;background:#fff}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
thead th{background:#eef2f6}
table.summary th,table.config th{background:#f4f6f8;font-weight:600}
td{max-width:42em;overflow-wrap:anywhere}
details{margin:12px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px;margin-top:12px}
figure.panel{margin:0;background:#fff;border:1px solid #e3e3e3;border-radius:4px;padding:8px}
.note{margin:0;color:#555;font-size:.85em;font-family:ui-monospace,monospace;white-space:pre-wrap;overflow-wrap:anywhere}
.empty{color:#777}
footer{color:#888;font-size:.8em;padding:0 24px 24px}
"""

_JS = """
(function () {
  "use strict";
  var templates = JSON.parse(document.getElementById("plotly-templates").textContent);
  var config = {responsive: true, displaylogo: false};
  var drawn = {};
  function draw(div) {
    if (drawn[div.id]) { Plotly.Plots.resize(div); return; }
    var spec = JSON.parse(document.getElementById(div.id + "-json").textContent);
    if (spec.template) { spec.layout.template = templates[spec.template]; }
    Plotly.newPlot(div, spec.data, spec.layout, config);
    drawn[div.id] = true;
  }
  function drawAll(root) {
    var divs = root.querySelectorAll("div.figure");
    for (var i = 0; i < divs.length; i++) { draw(divs[i]); }
  }
  function show(id) {
    var sections = document.querySelectorAll("section.run");
    for (var i = 0; i < sections.length; i++) {
      var on = sections[i].id === id;
      sections[i].hidden = !on;
      if (on) { drawAll(sections[i]); }
    }
  }
  var comparison = document.getElementById("comparison");
  if (comparison) { drawAll(comparison); }
  var selector = document.getElementById("run-selector");
  if (selector) {
    selector.addEventListener("change", function () { show(selector.value); });
    show(selector.value);
  } else {
    var first = document.querySelector("section.run");
    if (first) { show(first.id); }
  }
})();
"""


def _plotly_script() -> str:
    # "</script" never occurs in plotly.js today; the replacement keeps it that way if it ever does
    return "<script>" + get_plotlyjs().replace("</script", "<\\/script") + "</script>"


def build_dashboard_html(runs: Sequence[RunLike], comparison: Mapping[str, Any] | None = None,
                         *, title: str = "Effective depth") -> str:
    """The dashboard of ``runs`` as one HTML string (nothing is written).

    With several runs and no ``comparison``, one is computed with
    :func:`effective_depth.store.compare.compare_runs` (when that module is available).
    """
    from .._version import __version__

    loaded = load_runs(runs)
    if comparison is None and len(loaded) > 1:
        comparison = compute_comparison(loaded)
    store = _FigureStore()
    multi = len(loaded) > 1
    sections = [_comparison_section(loaded, comparison, store)] if multi or comparison else []
    sections += [_run_section(i, r, store, hidden=i > 0) for i, r in enumerate(loaded)]
    heading = title if multi else f"{title}: {loaded[0].label}"
    return "".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(heading)}</title><style>{_CSS}</style>",
        _plotly_script(), "</head><body>",
        f"<header><h1>{esc(heading)}</h1>{_selector(loaded) if multi else ''}</header>",
        "<main>", *sections, "</main>",
        f"<footer>effective_depth {esc(__version__)} · {len(loaded)} run(s) · "
        "self-contained: works offline</footer>",
        store.templates_block(),
        f"<script>{_JS}</script></body></html>\n",
    ])


def write_dashboard(run_dirs: Sequence[RunLike], out: str | os.PathLike,
                    comparison: Mapping[str, Any] | None = None) -> Path:
    """Write the dashboard of ``run_dirs`` to ``out`` (atomically) and return its path."""
    out = Path(out)
    if out.exists() and out.is_dir():
        raise ConfigError(f"{out} is a directory; give the dashboard a file name such as {out / 'dashboard.html'}")
    page = build_dashboard_html(run_dirs, comparison)
    atomic_write_text(out, page)
    log.info("wrote %s (%.0f KB)", out, len(page.encode()) / 1024)
    return out
