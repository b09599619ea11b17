"""One plotly figure per measurement (docs/methods.md §1–6), returned, never shown or written.

Every figure plots the result's own numbers unchanged (curves as ``tensor.tolist()``, NaN as a
blank cell), labels both axes, and puts the units and the definition in the hover text. Figures
of a curve that an effective-depth estimator reads (the cosines, the logit lens, the output
effect, the behaviour curves) take an optional ``estimates`` mapping (``{"ed_kl": Estimate or
its dict}``) and mark the estimated block with a dashed line, and the threshold when the estimate
carries one.

The figures are found through a registry keyed by the result's type, so that
``figure_for(result)`` and the dashboard need no list of cases (results never import this
module; the dependency points from viz to metrics)::

    from effective_depth.viz import figure_for
    fig = figure_for(lens, estimates=run.estimates())       # the default figure of a LogitLensResult
    fig = figure_for(contrib, kind="cosines")                # a named one

Text that comes from results (tokens, prompts, reasons) is HTML-escaped before plotly sees it:
plotly renders a small HTML subset in labels, and a token ``<b>`` must show as ``<b>``.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from torch import Tensor

from ..analysis.estimation import Estimate
from ..errors import ConfigError, close_matches
from ..metrics.base import MetricResult
from ..metrics.behaviour import Behaviour
from ..metrics.contributions import Contributions
from ..metrics.erasure import Erasure
from ..metrics.integrated_gradients import IntegratedGradients
from ..metrics.logit_lens import LogitLensResult
from ..metrics.skip_effects import DEPTH_SCORE, SkipEffects
from ..metrics.tuned_lens import TunedLensResult
from ..stats import curve_band
from ..store.record import EstimateEntry, ScoreEntry, depth_entry

__all__ = [
    "FIGURES",
    "FigureSpec",
    "register_figure",
    "figure_specs",
    "figure_for",
    "curves_figure",
    "relative_contributions_figure",
    "cosines_figure",
    "angular_distance_figure",
    "logit_lens_figure",
    "lens_figure",
    "layer_effect_figure",
    "skip_modes_figure",
    "colour_scale",
    "output_effect_figure",
    "behaviour_figure",
    "erasure_figure",
    "integrated_gradients_figure",
    "ed_summary_figure",
    "TEMPLATE",
    "BAND_BOOT",
]

#: the plotly template of every figure (the dashboard embeds it once, not per figure)
TEMPLATE = "plotly_white"

#: bootstrap resamples of the CI bands drawn around every curve (a figure's ``n_boot=`` overrides)
BAND_BOOT = 200

#: one colour per curve of a figure, in order; bands use the same colour, translucent
PALETTE = qualitative.Plotly

#: estimates as stored in results.json or as :class:`~effective_depth.analysis.estimation.Estimate` objects
Estimates = Mapping[str, Any]

FigureFn = Callable[..., go.Figure]


@dataclass(frozen=True)
class FigureSpec:
    """A registered figure of one result type.

    ``per_example``: the figure shows one example's map (call with ``example=i``);
    ``marks_estimates``: the figure accepts ``estimates=`` and marks the estimated depth;
    ``context``: further keyword arguments the figure takes from the run when a dashboard draws
    it (``"d_vocab"``: the model's vocabulary size, for the chance level of the top-k overlap).
    """

    kind: str
    title: str
    fn: FigureFn
    per_example: bool = False
    marks_estimates: bool = False
    context: tuple[str, ...] = ()


#: result type -> figure kind -> spec; the first kind registered is the type's default figure
FIGURES: dict[type, dict[str, FigureSpec]] = {}


def register_figure(
    result_type: type, kind: str, title: str, *, per_example: bool = False,
    marks_estimates: bool = False, context: tuple[str, ...] = (),
) -> Callable[[FigureFn], FigureFn]:
    """Register ``fn(result, **options) -> go.Figure`` as figure ``kind`` of ``result_type``."""

    def decorate(fn: FigureFn) -> FigureFn:
        kinds = FIGURES.setdefault(result_type, {})
        if kind in kinds:
            raise ValueError(f"figure {kind!r} of {result_type.__name__} is already registered")
        kinds[kind] = FigureSpec(kind, title, fn, per_example, marks_estimates, context)
        return fn

    return decorate


def figure_specs(result: Any) -> dict[str, FigureSpec]:
    """The figures registered for ``result``'s type (or the nearest base class)."""
    for cls in type(result).__mro__:
        if cls in FIGURES:
            return FIGURES[cls]
    known = ", ".join(sorted(c.__name__ for c in FIGURES))
    raise ConfigError(f"no figure is registered for {type(result).__name__}; figures exist for {known}")


def figure_for(result: Any, kind: str | None = None, **kwargs: Any) -> go.Figure:
    """The figure ``kind`` (default: the type's first) of a measurement result."""
    specs = figure_specs(result)
    kind = kind or next(iter(specs))
    if kind not in specs:
        raise ConfigError(f"{type(result).__name__} has no figure {kind!r}{close_matches(kind, specs)} "
                          f"Figures: {', '.join(specs)}")
    return specs[kind].fn(result, **kwargs)


# --- helpers ------------------------------------------------------------------------------------


def text(value: Any) -> str:
    """Text from a result, made literal for plotly's HTML-subset labels."""
    return html.escape(str(value), quote=False)


def token_label(token: str) -> str:
    """A visible, escaped tick label for a token string (spaces and newlines shown)."""
    shown = token.replace("\n", "\\n").replace("\t", "\\t")
    return text(shown if shown.strip() else shown.replace(" ", "␣") or "∅")


def grid(values: Tensor) -> list[Any]:
    """A tensor as nested lists, NaN as ``None`` (a blank cell / a gap in a curve)."""
    def clean(v: Any) -> Any:
        if isinstance(v, list):
            return [clean(x) for x in v]
        return None if isinstance(v, float) and math.isnan(v) else v

    return clean(values.detach().cpu().tolist())


#: subtitle lines are wrapped at this many characters (a dashboard panel is about 600 px wide)
SUBTITLE_WIDTH = 92


def _finish(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = 420,
            subtitle: str = "") -> go.Figure:
    lines = [w for part in subtitle.split("<br>") if part
             for w in textwrap.wrap(part, SUBTITLE_WIDTH, break_on_hyphens=False)]
    fig.update_layout(template=TEMPLATE, height=height + 16 * max(0, len(lines) - 1),
                      hovermode="closest",
                      title={"text": title, "x": 0.01, "subtitle": {"text": "<br>".join(lines)}},
                      margin={"l": 70, "r": 30, "t": 70 + 18 * len(lines), "b": 60},
                      legend={"orientation": "h", "y": -0.2})
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return fig


def _integer_ticks(n: int, max_ticks: int = 16, reversed: bool = False) -> dict[str, Any]:
    """Axis settings for block / layer / position indices 0..n-1: whole numbers only, at most
    ``max_ticks`` of them, and the range fixed to the indices (half a step of margin), so that
    lines and annotations never stretch the axis (``reversed``: 0 at the top)."""
    span = [-0.5, n - 0.5]
    return {"tickmode": "linear", "tick0": 0, "dtick": max(1, math.ceil(n / max_ticks)),
            "range": span[::-1] if reversed else span, "autorange": False}


def _blocks(n: int) -> list[int]:
    return list(range(n))


def _rgba(color: str, alpha: float) -> str:
    """``#rrggbb`` as ``rgba(r, g, b, alpha)``."""
    h = color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _where(row: int | None, col: int | None) -> dict[str, int]:
    return {} if row is None else {"row": row, "col": col if col is not None else 1}


def band_text(n_prompts: int, n_boot: int = BAND_BOOT, level: float = 0.95) -> str:
    """What the shaded bands are, for subtitles and hover labels."""
    return (f"shaded: {level:.0%} CI, percentile bootstrap over the {n_prompts} prompts "
            f"({n_boot} resamples)")


def _curve(fig: go.Figure, x: Sequence[Any], curve_of: Callable[[Any], Any], n_prompts: int,
           name: str, hover: str, color: str, *, value: str = ":.4f", n_boot: int = BAND_BOOT,
           level: float = 0.95, row: int | None = None, col: int | None = None,
           extra: Sequence[str] | None = None, **line: Any) -> None:
    """A curve (``curve_of(None)``, all prompts) with its pointwise bootstrap CI band over
    prompts (``curve_of(idx)`` on resamples, see :func:`effective_depth.stats.curve_band`) as a
    translucent band behind it; the hover gives the value and its CI (and ``extra[i]`` as
    ``%{customdata[2]}``)."""
    x = list(x)
    y = grid(torch.as_tensor(curve_of(None)).float())
    band = curve_band(curve_of, n_prompts, n_boot=n_boot, level=level)
    where = _where(row, col)
    lo = hi = [None] * len(x)
    if band is not None:
        lo, hi = (grid(torch.as_tensor(b)) for b in band)
        common = {"x": x, "mode": "lines", "line": {"width": 0, "color": color}, "showlegend": False,
                  "hoverinfo": "skip", "legendgroup": name}
        fig.add_trace(go.Scatter(y=hi, name=f"{name}: CI upper", **common), **where)
        fig.add_trace(go.Scatter(y=lo, name=f"{name}: {level:.0%} CI", fill="tonexty",
                                 fillcolor=_rgba(color, 0.2), **common), **where)
        hover += (f"<br>{level:.0%} CI [%{{customdata[0]{value}}}, %{{customdata[1]{value}}}]"
                  " (bootstrap over prompts)")
    custom = [[a, b, *([] if extra is None else [extra[i]])] for i, (a, b) in enumerate(zip(lo, hi))]
    fig.add_trace(go.Scatter(
        x=x, y=y, name=name, mode="lines+markers", legendgroup=name, customdata=custom,
        line={"color": color, **line}, marker={"color": color, "size": 6},
        hovertemplate=hover + "<extra>" + text(name) + "</extra>"), **where)


def _legend_line(fig: go.Figure, name: str, line: dict[str, Any], row: int | None = None,
                 col: int | None = None) -> None:
    """A legend entry for a reference line drawn as a shape: labels go into the legend, where
    they cannot collide with the data or with each other."""
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=name, line=line,
                             hoverinfo="skip"), **_where(row, col))


def as_depth_entry(est: Any) -> EstimateEntry | ScoreEntry:
    """An :class:`Estimate`, its dict or a run's stored entry, as the stored entry's record."""
    if isinstance(est, (EstimateEntry, ScoreEntry)):
        return est
    return depth_entry(est.to_dict() if isinstance(est, Estimate) else dict(est),
                       "the estimates given")


def _estimate(estimates: Estimates | None, name: str) -> EstimateEntry | None:
    """The estimate ``name`` of ``estimates`` (None when absent, or a score)."""
    if not estimates or name not in estimates:
        return None
    est = as_depth_entry(estimates[name])
    return est if isinstance(est, EstimateEntry) else None


def _threshold(est: EstimateEntry | None) -> float | None:
    return None if est is None else est.threshold


#: the dashed line of each estimator, so that two marks in one figure are told apart
MARK_COLORS = {"ed_cos": "#444444", "ed_kl": "#7f3c8d", "ed_overlap": "#11a579",
               "ed_skip": "#444444", "ed_task": "#3969ac", "ed_prune": "#e73f74"}


def _mark(fig: go.Figure, est: EstimateEntry | None, x: float | None, label: str,
          row: int | None = None, col: int | None = None) -> None:
    """A dashed vertical line at the estimated block, named in the legend (nothing when the
    estimate is undefined)."""
    if est is None or est.layer is None or x is None:
        return
    ratio = est.ratio
    note = f"{label} = block {est.layer}" + ("" if ratio is None else f" (ratio {ratio:.2f})")
    line = {"dash": "dash", "color": MARK_COLORS.get(label, "#444444"), "width": 2}
    fig.add_vline(x=x, line=line, **_where(row, col))
    _legend_line(fig, note, line, row, col)


def _hline(fig: go.Figure, y: float | None, label: str, color: str = "#999999",
           row: int | None = None, col: int | None = None, dash: str = "dot") -> None:
    """A horizontal reference line (threshold, full-model accuracy, chance), named in the legend."""
    if y is None:
        return
    line = {"dash": dash, "color": color, "width": 1.5}
    fig.add_hline(y=y, line=line, **_where(row, col))
    _legend_line(fig, label, line, row, col)


def _example(maps: Sequence[Tensor], example: int, what: str) -> Tensor:
    if not 0 <= example < len(maps):
        raise ConfigError(f"{what} has {len(maps)} example maps; example={example} is out of range")
    return maps[example]


#: at most this many token labels on a map's axis (16 px apart in a 400 px plot area)
MAX_TOKEN_TICKS = 24
#: up to this many short tokens are labelled upright; more, or longer ones, are rotated
UPRIGHT_TOKENS, UPRIGHT_CHARS = 8, 4


def token_ticks(tokens: Sequence[str]) -> dict[str, Any]:
    """Tick settings of a token axis whose labels never overprint: every ``k``-th position
    labelled (``k`` the smallest step leaving at most :data:`MAX_TOKEN_TICKS` labels, always
    including the last position, where the answer is read), written upright only for a few short
    tokens and vertically otherwise. Every token stays in the hover text."""
    n = len(tokens)
    step = max(1, -(-n // MAX_TOKEN_TICKS))
    shown = list(range(0, n, step))
    if len(shown) > 1 and shown[-1] != n - 1:
        shown[-1] = n - 1  # the last position instead of its neighbour: still >= step apart
    labels = [token_label(tokens[i]) for i in shown]
    upright = len(shown) <= UPRIGHT_TOKENS and all(len(t) <= UPRIGHT_CHARS for t in labels)
    return {"tickmode": "array", "tickvals": shown, "ticktext": labels,
            "tickangle": 0 if upright else -90}


def _token_axis(fig: go.Figure, tokens: Sequence[str]) -> None:
    # positions, not token strings, are the x values: repeated tokens must stay separate columns
    fig.update_xaxes(**token_ticks(tokens))


def _token_customdata(tokens: Sequence[str], n_rows: int) -> list[list[str]]:
    row = [token_label(t) for t in tokens]
    return [row for _ in range(n_rows)]


# --- §1 residual contributions -----------------------------------------------------------------

_REL = {
    "rel_attn": "‖a_l‖ / ‖h_l‖",
    "rel_mlp": "‖m_l‖ / ‖h_l + a_l‖",
    "rel_block": "‖d_l‖ / ‖h_l‖",
}
_COS = {
    "cos_attn": "cos(a_l, h_l)",
    "cos_mlp": "cos(m_l, h_l + a_l)",
    "cos_block": "cos(d_l, h_l)",
    "cos_resid": "cos(h_{l+1}, h_l)",
}


@register_figure(MetricResult, "curves", "Per-block curves")
def curves_figure(result: MetricResult, n_boot: int = BAND_BOOT) -> go.Figure:
    """Every per-block curve a measurement stores (:meth:`MetricResult.curves_of`), with
    bootstrap CI bands where the result can recompute its curves on a prompt sample: the figure
    of a measurement that registers none of its own (a new measurement shows up on the dashboard
    without one)."""
    curves = result.curves_of() or {}
    resamples = result.n_prompts >= 2 and result.curves_of([0]) is not None
    fig = go.Figure()
    for i, (key, values) in enumerate(curves.items()):
        x = list(range(len(values)))
        _curve(fig, x, lambda idx, key=key: result.curves_of(idx)[key], result.n_prompts, key,
               f"index %{{x}}<br>{html.escape(key)} = %{{y:.4g}}", PALETTE[i % len(PALETTE)],
               value=":.4g", n_boot=n_boot if resamples else 0)
    if curves:
        fig.update_xaxes(**_integer_ticks(max(len(v) for v in curves.values())))
    band = band_text(result.n_prompts, n_boot) if resamples else "no CI bands (no per-prompt data)"
    return _finish(fig, f"{html.escape(result.name)}: its stored curves", "block l (curve index)",
                   "value", subtitle=band)


@register_figure(Contributions, "relative", "Relative contributions")
def relative_contributions_figure(result: Contributions, n_boot: int = BAND_BOOT) -> go.Figure:
    """How much each block writes into the residual stream, relative to what is there: the
    attention, MLP and whole-block norms over the stream's norm, per block (token-weighted
    means), on a log axis (block 0 often writes tens of times the embedding's norm, later blocks
    a tenth of the stream), each with its bootstrap CI band over prompts."""
    blocks = _blocks(result.n_layers)
    fig = go.Figure()
    for i, (key, formula) in enumerate(_REL.items()):
        _curve(fig, blocks, lambda idx, key=key: result.curve(key, idx), result.n_prompts, key,
               f"block %{{x}}<br>{formula} = %{{y:.4g}}", PALETTE[i], value=":.4g", n_boot=n_boot)
    fig.update_xaxes(**_integer_ticks(result.n_layers))
    fig.update_yaxes(type="log", dtick=1, exponentformat="none", minor={"showgrid": True})
    return _finish(fig, "Relative contribution of each block to the residual stream", "block l",
                   "relative contribution (norm ratio, log scale)",
                   subtitle="token-weighted means; a_l attention, m_l MLP, d_l whole block, h_l "
                            f"stream; {band_text(result.n_prompts, n_boot)}")


@register_figure(Contributions, "cosines", "Cosines with the residual stream", marks_estimates=True)
def cosines_figure(result: Contributions, estimates: Estimates | None = None,
                   n_boot: int = BAND_BOOT) -> go.Figure:
    """Does a block add to the stream (cosine > 0) or erase it (cosine < 0)? The four cosines per
    block with bootstrap CI bands, the mean of the first three (the curve ``ed_cos`` reads)
    dotted, ``ed_cos`` marked."""
    fig = go.Figure()
    blocks = _blocks(result.n_layers)
    for i, (key, formula) in enumerate(_COS.items()):
        _curve(fig, blocks, lambda idx, key=key: result.curve(key, idx), result.n_prompts, key,
               f"block %{{x}}<br>{formula} = %{{y:.4f}}", PALETTE[i], n_boot=n_boot)

    def mean(idx: Any) -> Tensor:
        return (result.curve("cos_attn", idx) + result.curve("cos_mlp", idx)
                + result.curve("cos_block", idx)) / 3

    _curve(fig, blocks, mean, result.n_prompts, "mean (ed_cos)",
           "block %{x}<br>mean of cos_attn, cos_mlp, cos_block = %{y:.4f}", "#444444",
           n_boot=n_boot, dash="dot")
    fig.add_hline(y=0, line_color="#bbb")
    _mark(fig, _estimate(estimates, "ed_cos"), _layer(estimates, "ed_cos"), "ed_cos")
    fig.update_xaxes(**_integer_ticks(result.n_layers))
    return _finish(fig, "Cosine of each block's output with the residual stream", "block l", "cosine",
                   subtitle="< 0: the block erases part of the stream; ed_cos = last crossing of the "
                            f"mean from < 0 to ≥ 0; {band_text(result.n_prompts, n_boot)}")


@register_figure(Contributions, "angular", "Angular distance between residual boundaries")
def angular_distance_figure(result: Contributions) -> go.Figure:
    """The mean angular distance ``arccos(cos(h_i, h_j)) / π`` between every pair of residual
    boundaries (Gromov et al. 2024): a dark band along the diagonal means layers that change
    little. The colour scale spans the data's range."""
    L = result.n_layers
    values = result.angular_distance
    finite = values[~torch.isnan(values)]
    top = float(finite.max()) if len(finite) else 0.0
    fig = go.Figure(go.Heatmap(
        z=grid(values), x=list(range(L + 1)), y=list(range(L + 1)),
        colorscale="Viridis", zmin=0, zmax=top if top > 0 else 1.0,
        colorbar={"title": {"text": "distance"}},
        hovertemplate="h_%{y} vs h_%{x}<br>arccos(cos)/π = %{z:.4f}<extra></extra>",
    ))
    fig.update_xaxes(**_integer_ticks(L + 1))
    fig.update_yaxes(**_integer_ticks(L + 1, reversed=True))
    return _finish(fig, "Angular distance between residual boundaries",
                   "boundary j (0 = embedding)", "boundary i (0 = embedding)", height=460,
                   subtitle="mean arccos(cos(h_i, h_j)) / π over tokens (Gromov et al. 2024)")


def _layer(estimates: Estimates | None, name: str) -> float | None:
    est = _estimate(estimates, name)
    return None if est is None or est.layer is None else float(est.layer)


# --- §3 logit lens ------------------------------------------------------------------------------


LENS_FORMULA = "lens(h_l) = softmax(unembed(ln_final(h_l))) against the output p"


def lens_figure(result: Any, estimates: Estimates | None = None, *, d_vocab: int | None = None,
                lens: str = "logit lens", estimators: tuple[str, str] = ("ed_kl", "ed_overlap"),
                n_boot: int = BAND_BOOT) -> go.Figure:
    """The figure of any lens result with per-prompt ``kl_of(idx)`` and ``overlap_of(idx)``
    curves (the logit lens; a tuned lens likewise): KL to the output (top) and top-k overlap
    (bottom) per layer with bootstrap CI bands, the overlap's chance level ``k / V`` when the
    vocabulary size ``d_vocab`` is known (from the argument or ``result.meta``), and the two
    ``estimators`` with their thresholds marked when ``estimates`` are given."""
    n = int(result.kl_of(None).shape[0])
    layers = list(range(n))
    k = int(result.meta.get("k", 5))
    d_vocab = d_vocab or result.meta.get("d_vocab")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    _curve(fig, layers, result.kl_of, result.n_prompts, "KL(lens ‖ output)",
           "layer %{x}<br>KL = %{y:.4f} nats", PALETTE[0], n_boot=n_boot, row=1, col=1)
    _curve(fig, layers, result.overlap_of, result.n_prompts, f"top-{k} overlap",
           f"layer %{{x}}<br>top-{k} overlap = %{{y:.3f}}", PALETTE[1], value=":.3f",
           n_boot=n_boot, row=2, col=1)
    kl_name, ov_name = estimators
    kl_est, ov_est = _estimate(estimates, kl_name), _estimate(estimates, ov_name)
    tau_kl, tau_ov = _threshold(kl_est), _threshold(ov_est)
    _hline(fig, None if tau_kl is None else tau_kl * float(result.kl_of(None).max()),
           f"{kl_name} threshold: {tau_kl} × max KL", MARK_COLORS.get(kl_name, "#999999"), 1, 1)
    _hline(fig, tau_ov, f"{ov_name} threshold: τ = {tau_ov}", MARK_COLORS.get(ov_name, "#999999"),
           2, 1)
    if d_vocab:
        _hline(fig, k / int(d_vocab), f"chance overlap k/V = {k}/{int(d_vocab)} = {k / int(d_vocab):.3f}",
               "#cc3311", 2, 1, dash="dashdot")
    _mark(fig, kl_est, _layer(estimates, kl_name), kl_name, row=1, col=1)
    _mark(fig, ov_est, _layer(estimates, ov_name), ov_name, row=2, col=1)
    fig = _finish(fig, f"{lens[:1].upper()}{lens[1:]}: distance of each layer's prediction from "
                       "the output", "", "", height=600,
                  subtitle=(LENS_FORMULA + "<br>" if lens == "logit lens" else "")
                  + f"{band_text(result.n_prompts, n_boot)}; layer 0 = embedding")
    fig.update_xaxes(**_integer_ticks(n))
    fig.update_xaxes(title_text="layer l (stream entering block l; 0 = embedding)", row=2, col=1)
    fig.update_yaxes(title_text="KL divergence (nats)", row=1, col=1)
    fig.update_yaxes(title_text=f"top-{k} overlap", range=[-0.02, 1.02], row=2, col=1)
    return fig


@register_figure(LogitLensResult, "lens", "Logit lens", marks_estimates=True, context=("d_vocab",))
def logit_lens_figure(result: LogitLensResult, estimates: Estimates | None = None,
                      d_vocab: int | None = None, n_boot: int = BAND_BOOT) -> go.Figure:
    """How close the logit lens of the stream entering each block is to the model's output: the
    KL divergence (top) and the top-k overlap (bottom) per layer with bootstrap CI bands, the
    overlap's chance level ``k / V``, and ``ed_kl`` and ``ed_overlap`` and their thresholds
    marked when ``estimates`` are given (see :func:`lens_figure`)."""
    return lens_figure(result, estimates, d_vocab=d_vocab, n_boot=n_boot)


@register_figure(TunedLensResult, "lens", "Tuned lens", marks_estimates=True, context=("d_vocab",))
def tuned_lens_figure(result: TunedLensResult, estimates: Estimates | None = None,
                      d_vocab: int | None = None, n_boot: int = BAND_BOOT) -> go.Figure:
    """The lens figure of the tuned lens's curves, marking ``ed_tuned_kl`` and
    ``ed_tuned_overlap`` (never the logit lens's estimates) when ``estimates`` are given."""
    return lens_figure(result, estimates, d_vocab=d_vocab, lens="tuned lens",
                       estimators=("ed_tuned_kl", "ed_tuned_overlap"), n_boot=n_boot)


# --- §2 layer-skip effects ----------------------------------------------------------------------

#: what each skip mode measures, in the words of the figures
SKIP_MODES = {"current": "all positions (current effects)",
              "future": "future positions only (future effects)"}


def _skip_title(result: SkipEffects) -> str:
    mode = result.meta.get("mode", "future")
    component = result.meta.get("component", "block")
    return (f"{mode} effects, {component} skipped, {result.aggregate} over positions and prompts; "
            f"{result.n_prompts} prompts")


def _later_blocks(effect: Tensor) -> Tensor:
    """``layer_effect`` with the cells ``i ≤ s`` (0 by construction, not measured) blank."""
    L = effect.shape[0]
    later = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)
    return effect.float().masked_fill(~later, float("nan"))


def colour_scale(values: Sequence[Tensor], scale: str = "log", clip: float | None = None,
                 floor: float = 1e-3) -> tuple[Callable[[Tensor], Tensor], dict[str, Any], str]:
    """An honest colour scale for non-negative maps ``values`` (NaN: blank), as
    ``(transform, heatmap settings, note)``; the heatmap gets ``z = transform(map)`` and shows
    the true value in its hover (``customdata``).

    * ``"log"`` (default): colour by ``log10`` of the value from the data's smallest positive
      value (at least ``floor`` × the largest, below which cells share the lowest colour) to its
      largest; the colourbar is labelled in the data's units at every decade.
    * ``"linear"``: ``0..max`` of the data; with ``clip`` below the maximum the scale stops at
      ``clip``, the colourbar's top tick reads ``≥ clip (max …)`` and the note gives the share of
      cells above it.
    """
    if scale not in ("log", "linear"):
        raise ConfigError(f"colour scale must be 'log' or 'linear', got {scale!r}")
    finite = torch.cat([v[~torch.isnan(v)].flatten().float() for v in values]) if values else torch.zeros(0)
    top = float(finite.max()) if len(finite) else 0.0
    if scale == "log" and top > 0:
        positive = finite[finite > 0]
        low = max(float(positive.min()), top * floor)
        lo, hi = math.log10(low), math.log10(top)
        if hi - lo < 1e-9:
            lo -= 0.5
        decades = list(range(math.ceil(lo), math.floor(hi) + 1))
        tickvals = [lo, *[d for d in decades if lo + 0.15 < d < hi - 0.15], hi]
        ticktext = [f"{10 ** t:.2g}" for t in tickvals]
        below = float((finite < low).float().mean())
        note = (f"log colour scale over the data's range {low:.2g}–{top:.3g}"
                + (f" ({below:.0%} of cells, down to 0, share its lowest colour)" if below else ""))
        return (lambda m: torch.log10(m.float().clamp(min=low)),
                {"zmin": lo, "zmax": hi, "colorbar": {"tickvals": tickvals, "ticktext": ticktext}},
                note)
    identity: Callable[[Tensor], Tensor] = lambda m: m.float()  # noqa: E731
    if clip is not None and top > clip:
        share = float((finite > clip).float().mean())
        ticks = [clip * i / 4 for i in range(5)]
        labels = [f"{t:g}" for t in ticks[:-1]] + [f"≥ {clip:g} (max {top:.3g})"]
        note = (f"colour clipped at {clip:g}: {share:.0%} of cells are above it (up to {top:.3g}); "
                "hover for values")
        return identity, {"zmin": 0, "zmax": clip,
                          "colorbar": {"tickvals": ticks, "ticktext": labels}}, note
    zmax = top if top > 0 else 1.0
    return identity, {"zmin": 0, "zmax": zmax, "colorbar": {}}, f"colour scale 0–{zmax:.3g}, the data's range"


def _depth_score_text(result: SkipEffects) -> str:
    score = result.depth_score if result.meta.get("mode", "future") == "future" else float("nan")
    frac = DEPTH_SCORE.share(score, result.n_layers)
    if frac is None:
        return ""
    lo, hi = DEPTH_SCORE.range_of(result.n_layers)  # type: ignore[misc]
    return f"; {DEPTH_SCORE.short} {frac:.0%} of the depth (block {score:.2f} of {lo:g}..{hi:g})"


def _layer_effect_heatmap(result: SkipEffects, transform: Callable[[Tensor], Tensor],
                          colours: dict[str, Any], **kw: Any) -> go.Heatmap:
    L = result.n_layers
    values = _later_blocks(result.layer_effect)
    colorbar = {"title": {"text": "‖Δd_i‖/‖d_i‖", "side": "right"}, **colours["colorbar"]}
    return go.Heatmap(
        z=grid(transform(values)), customdata=grid(values), x=_blocks(L), y=_blocks(L),
        colorscale="Blues", zmin=colours["zmin"], zmax=colours["zmax"], hoverongaps=False,
        colorbar=colorbar,
        hovertemplate="skipped block %{y}<br>affected block %{x}<br>relative change = "
                      "%{customdata:.4f}<extra></extra>", **kw,
    )


@register_figure(SkipEffects, "layer_effect", "Layer-skip effects on later blocks")
def layer_effect_figure(result: SkipEffects, scale: str = "log",
                        clip: float | None = None) -> go.Figure:
    """What skipping block s does to the computation of every later block i: the relative change
    ``‖d_i' − d_i‖ / ‖d_i‖`` (``layer_effect[s, i]``; blank for ``i ≤ s``, not measured), on a
    colour scale that spans the data (``scale="log"`` by default: the values run over several
    decades; ``"linear"``, optionally clipped at ``clip`` with the clip labelled; see
    :func:`colour_scale`). Hover shows the true value."""
    L = result.n_layers
    transform, colours, note = colour_scale([_later_blocks(result.layer_effect)], scale, clip)
    fig = go.Figure(_layer_effect_heatmap(result, transform, colours))
    fig.update_xaxes(**_integer_ticks(L))
    fig.update_yaxes(**_integer_ticks(L, reversed=True))
    return _finish(fig, "Effect of skipping a block on later blocks", "affected block i",
                   "skipped block s", height=480,
                   subtitle=f"{_skip_title(result)}{_depth_score_text(result)}<br>{note}")


def skip_modes_figure(results: Sequence[SkipEffects], scale: str = "log",
                      clip: float | None = None) -> go.Figure:
    """Skip effects of one model and task measured in both modes, side by side on one colour
    scale, as Csordás et al. show them: skipping a block at all positions and measuring
    everywhere (current effects), and skipping it before a cut and measuring after it (future
    effects: is the block's work *used later*?)."""
    order = sorted(results, key=lambda r: list(SKIP_MODES).index(r.meta.get("mode", "future")))
    if not order:
        raise ConfigError("skip_modes_figure needs at least one skip-effects result")
    transform, colours, note = colour_scale([_later_blocks(r.layer_effect) for r in order],
                                            scale, clip)
    titles = [SKIP_MODES.get(r.meta.get("mode", "future"), str(r.meta.get("mode")))
              for r in order]
    fig = make_subplots(rows=1, cols=len(order), subplot_titles=titles, horizontal_spacing=0.08)
    for i, r in enumerate(order, start=1):
        fig.add_trace(_layer_effect_heatmap(r, transform, colours, showscale=i == len(order)),
                      row=1, col=i)
    first = order[0]
    fig = _finish(fig, "Skip effects at all positions and at future positions", "affected block i",
                  "", height=480, subtitle=f"{first.meta.get('component', 'block')} skipped, "
                                           f"{first.aggregate} over positions and prompts<br>{note}")
    for i, r in enumerate(order, start=1):
        fig.update_xaxes(**_integer_ticks(r.n_layers, 12), row=1, col=i)
        fig.update_yaxes(**_integer_ticks(r.n_layers, 12, reversed=True), row=1, col=i)
    fig.update_yaxes(title_text="skipped block s", row=1, col=1)
    fig.update_layout(margin={"t": fig.layout.margin.t + 30})  # room for the subplot titles
    return fig


@register_figure(SkipEffects, "output_effect", "Layer-skip effect on the output", marks_estimates=True)
def output_effect_figure(result: SkipEffects, estimates: Estimates | None = None,
                         n_boot: int = BAND_BOOT) -> go.Figure:
    """How much skipping each block changes the output distribution, ``‖p′ − p‖₂``, with
    bootstrap CI error bars over prompts; ``ed_skip`` (the last block above τ × the largest
    effect) marked when given."""
    effect = result.output_effect
    band = curve_band(result.output_effect_of, result.n_prompts, n_boot=n_boot)
    errors: dict[str, Any] = {}
    custom = None
    hover = "skipped block %{x}<br>‖p′ − p‖₂ = %{y:.4f}"
    if band is not None:
        lo, hi = (grid(torch.as_tensor(b)) for b in band)
        y = grid(effect)
        plus = [None if v is None or h is None else max(0.0, h - v) for v, h in zip(y, hi)]
        minus = [None if v is None or lo_ is None else max(0.0, v - lo_) for v, lo_ in zip(y, lo)]
        errors = {"error_y": {"type": "data", "symmetric": False, "array": plus,
                              "arrayminus": minus, "color": "#555"}}
        custom = [[a, b] for a, b in zip(lo, hi)]
        hover += "<br>95% CI [%{customdata[0]:.4f}, %{customdata[1]:.4f}] (bootstrap over prompts)"
    fig = go.Figure(go.Bar(
        x=_blocks(result.n_layers), y=grid(effect), name="output effect", customdata=custom,
        marker={"color": PALETTE[0]}, hovertemplate=hover + "<extra></extra>", **errors,
    ))
    est = _estimate(estimates, "ed_skip")
    tau = _threshold(est)
    finite = effect[~torch.isnan(effect)]
    if tau is not None and len(finite):
        _hline(fig, tau * float(finite.max()), f"ed_skip threshold: {tau} × max")
    _mark(fig, est, _layer(estimates, "ed_skip"), "ed_skip")
    fig.update_xaxes(**_integer_ticks(result.n_layers))
    fig.update_yaxes(rangemode="tozero")
    bars = "" if band is None else "; error bars: " + band_text(result.n_prompts, n_boot).removeprefix("shaded: ")
    return _finish(fig, "Effect of skipping a block on the output", "skipped block s",
                   "output change ‖p′ − p‖₂", subtitle=_skip_title(result) + bars)


# --- behaviour (ed_task, ed_prune) --------------------------------------------------------------


@register_figure(Behaviour, "behaviour", "Task accuracy by depth", marks_estimates=True)
def behaviour_figure(result: Behaviour, estimates: Estimates | None = None,
                     n_boot: int = BAND_BOOT) -> go.Figure:
    """Exact-match accuracy when the answer is read after the first n blocks (left, early exit)
    and when the k blocks with the smallest output effect are skipped together (right, pruning),
    each with its bootstrap CI band over prompts; the full model's accuracy dotted, ``ed_task``
    and ``ed_prune`` marked when given. Labels live in the legend, so nothing overprints."""
    L = int(result.correct_by_exit.shape[1]) - 1
    steps = list(range(L + 1))
    order = [int(s) for s in result.prune_order]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("early exit", "pruning (smallest output effect first)"))
    _curve(fig, steps, result.accuracy_by_exit, result.n_prompts, "accuracy by exit depth",
           "first %{x} blocks run<br>accuracy = %{y:.1%}", PALETTE[0], value=":.1%",
           n_boot=n_boot, row=1, col=1)
    skipped = [", ".join(str(s) for s in order[:k]) or "none" for k in steps]
    _curve(fig, steps, result.accuracy_by_prune, result.n_prompts, "accuracy by pruned blocks",
           "%{x} blocks skipped (%{customdata[2]})<br>accuracy = %{y:.1%}", PALETTE[1],
           value=":.1%", n_boot=n_boot, row=1, col=2, extra=skipped)
    full = result.accuracy()
    _hline(fig, full, f"full model: {full:.1%}", row=1, col=1)
    fig.add_hline(y=full, line={"dash": "dot", "color": "#999999", "width": 1.5}, row=1, col=2)
    task, prune = _estimate(estimates, "ed_task"), _estimate(estimates, "ed_prune")
    task_x = _layer(estimates, "ed_task")
    prune_x = _layer(estimates, "ed_prune")
    _mark(fig, task, None if task_x is None else task_x + 1, "ed_task", row=1, col=1)
    _mark(fig, prune, None if prune_x is None else L - prune_x - 1, "ed_prune", row=1, col=2)
    fig = _finish(fig, "Task accuracy by exit depth and by pruned blocks", "", "", height=460,
                  subtitle=f"teacher-forced exact match; pruning order {order}<br>"
                           f"{band_text(result.n_prompts, n_boot)}")
    fig.update_layout(margin={"t": fig.layout.margin.t + 30})  # room for the subplot titles
    fig.update_xaxes(**_integer_ticks(L + 1, max_ticks=8))
    fig.update_xaxes(title_text="blocks run before reading the answer (n)", row=1, col=1)
    fig.update_xaxes(title_text="blocks skipped together (k)", row=1, col=2)
    fig.update_yaxes(title_text="exact-match accuracy", range=[-0.03, 1.05], tickformat=".0%")
    return fig


# --- §4 residual erasure, §5 integrated gradients ----------------------------------------------


@register_figure(Erasure, "map", "Residual erasure", per_example=True)
def erasure_figure(result: Erasure, example: int = 0) -> go.Figure:
    """Where the answer's information lives: the change of the answer's distributions,
    ``max ‖p′ − p‖₂``, when the residual at (layer, token) is replaced by its mean. Tokens on x,
    residual boundaries on y (0 = embedding); never-erased positions (the BOS) are blank."""
    m = _example(result.maps, example, "this erasure result")
    tokens = result.str_tokens[example]
    rows = int(m.shape[0])
    fig = go.Figure(go.Heatmap(
        z=grid(m), x=list(range(len(tokens))), y=list(range(rows)),
        customdata=_token_customdata(tokens, rows), colorscale="Viridis", zmin=0,
        hoverongaps=False, colorbar={"title": {"text": "‖p′ − p‖₂"}},
        hovertemplate="token %{customdata} (position %{x})<br>layer %{y}<br>"
                      "max ‖p′ − p‖₂ = %{z:.4f}<extra></extra>",
    ))
    _token_axis(fig, tokens)
    fig.update_yaxes(**_integer_ticks(rows))
    return _finish(fig, f"Residual erasure (example {example})", "token (position)",
                   "residual boundary l (0 = embedding)", height=440,
                   subtitle="answer change when h_l[t] is replaced by the mean residual μ_l")


@register_figure(IntegratedGradients, "map", "Integrated gradients", per_example=True)
def integrated_gradients_figure(result: IntegratedGradients, example: int = 0) -> go.Figure:
    """Integrated-gradient attribution of the answer's probability to each block's output at each
    token, on a diverging colour scale centred at 0 (red: raises the answer, blue: lowers it)."""
    m = _example(result.maps, example, "this integrated-gradients result")
    tokens = result.str_tokens[example]
    finite = m[~torch.isnan(m)]
    zmax = float(finite.abs().max()) if len(finite) else 0.0
    zmax = zmax if zmax > 0 else 1.0
    rows = int(m.shape[0])
    fig = go.Figure(go.Heatmap(
        z=grid(m), x=list(range(len(tokens))), y=list(range(rows)),
        customdata=_token_customdata(tokens, rows), colorscale="RdBu", reversescale=True,
        zmin=-zmax, zmax=zmax, zmid=0, hoverongaps=False,
        colorbar={"title": {"text": "attribution"}},
        hovertemplate="token %{customdata} (position %{x})<br>output of block %{y}<br>"
                      "attribution = %{z:.4g}<extra></extra>",
    ))
    _token_axis(fig, tokens)
    fig.update_yaxes(**_integer_ticks(rows))
    target = float(result.targets[example])
    return _finish(fig, f"Integrated gradients (example {example})", "token (position)",
                   "output of block l", height=440,
                   subtitle=f"attribution of the answer probability ({target:.3f}); "
                            f"{result.meta.get('n_steps', '?')} steps, mean-over-positions baseline")


# --- §6 effective-depth summary ---------------------------------------------------------------


def _estimate_rows(estimates: Estimates) -> list[tuple[str, EstimateEntry]]:
    rows = []
    for name in estimates:
        est = _estimate(estimates, name)
        if est is not None:  # "depth_score" and other non-estimators are skipped
            rows.append((est.name or name, est))
    return rows


def ed_summary_figure(estimates: Estimates, title: str = "Effective depth by estimator") -> go.Figure:
    """The effective-depth ratio ``(e + 1) / L`` of every estimator with its bootstrap CI as error
    bars; an undefined estimator gets no marker but an annotation with the reason."""
    rows = _estimate_rows(estimates)
    names = [name for name, _ in rows]
    ratios = [r.ratio for _, r in rows]
    lo = [_ci_minus(r) for _, r in rows]
    hi = [_ci_plus(r) for _, r in rows]
    info = [_estimate_hover(r) for _, r in rows]
    fig = go.Figure(go.Scatter(
        x=names, y=ratios, mode="markers", name="ratio", marker={"size": 12},
        error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo},
        customdata=info, hovertemplate="%{x}<br>%{customdata}<extra></extra>",
    ))
    for name, r in rows:
        if r.layer is None:
            reason = textwrap.wrap(str(r.reason or "undefined"), 16)
            fig.add_annotation(x=name, y=0.02, yanchor="bottom", showarrow=False,
                               align="center", font={"size": 9, "color": "#a33"},
                               text="undefined:<br>" + "<br>".join(text(line) for line in reason))
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=names)
    fig.update_yaxes(range=[0, 1.05])
    return _finish(fig, title, "estimator", "effective-depth ratio (e + 1) / L", height=440)


def _ci_minus(est: EstimateEntry) -> float:
    ci, ratio = est.ci, est.ratio
    return 0.0 if ci is None or ratio is None else max(0.0, ratio - float(ci[0]))


def _ci_plus(est: EstimateEntry) -> float:
    ci, ratio = est.ci, est.ratio
    return 0.0 if ci is None or ratio is None else max(0.0, float(ci[1]) - ratio)


def _estimate_hover(est: EstimateEntry) -> str:
    if est.layer is None:
        return "undefined: " + text(est.reason or "?")
    ci = est.ci
    ci_text = "no CI" if ci is None else f"CI [{ci[0]:.3f}, {ci[1]:.3f}]"
    n_layers = "?" if est.n_layers is None else est.n_layers
    return f"block {est.layer} of {n_layers}, ratio {est.ratio:.3f}, {ci_text}"
