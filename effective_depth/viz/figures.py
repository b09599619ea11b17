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
    fig = figure_for(lens, estimates=run.estimates())       # the default figure of a LogitLens
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
from plotly.subplots import make_subplots
from torch import Tensor

from ..depth import Estimate
from ..errors import ConfigError, close_matches
from ..metrics.behaviour import Behaviour
from ..metrics.contributions import Contributions
from ..metrics.erasure import Erasure
from ..metrics.integrated_gradients import IntegratedGradients
from ..metrics.logit_lens import LogitLens
from ..metrics.skip_effects import SkipEffects
from ..metrics.tuned_lens import TunedLens

__all__ = [
    "FIGURES",
    "FigureSpec",
    "register_figure",
    "figure_specs",
    "figure_for",
    "relative_contributions_figure",
    "cosines_figure",
    "angular_distance_figure",
    "logit_lens_figure",
    "layer_effect_figure",
    "output_effect_figure",
    "behaviour_figure",
    "erasure_figure",
    "integrated_gradients_figure",
    "ed_summary_figure",
    "TEMPLATE",
]

#: the plotly template of every figure (the dashboard embeds it once, not per figure)
TEMPLATE = "plotly_white"

#: estimates as stored in results.json or as :class:`~effective_depth.depth.Estimate` objects
Estimates = Mapping[str, Any]

FigureFn = Callable[..., go.Figure]


@dataclass(frozen=True)
class FigureSpec:
    """A registered figure of one result type.

    ``per_example``: the figure shows one example's map (call with ``example=i``);
    ``marks_estimates``: the figure accepts ``estimates=`` and marks the estimated depth.
    """

    kind: str
    title: str
    fn: FigureFn
    per_example: bool = False
    marks_estimates: bool = False


#: result type -> figure kind -> spec; the first kind registered is the type's default figure
FIGURES: dict[type, dict[str, FigureSpec]] = {}


def register_figure(
    result_type: type, kind: str, title: str, *, per_example: bool = False,
    marks_estimates: bool = False,
) -> Callable[[FigureFn], FigureFn]:
    """Register ``fn(result, **options) -> go.Figure`` as figure ``kind`` of ``result_type``."""

    def decorate(fn: FigureFn) -> FigureFn:
        kinds = FIGURES.setdefault(result_type, {})
        if kind in kinds:
            raise ValueError(f"figure {kind!r} of {result_type.__name__} is already registered")
        kinds[kind] = FigureSpec(kind, title, fn, per_example, marks_estimates)
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


def _finish(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = 420,
            subtitle: str = "") -> go.Figure:
    fig.update_layout(template=TEMPLATE, height=height, hovermode="closest",
                      title={"text": title, "x": 0.01, "subtitle": {"text": subtitle}},
                      margin={"l": 70, "r": 30, "t": 80 if subtitle else 60, "b": 60},
                      legend={"orientation": "h", "y": -0.2})
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return fig


def _integer_ticks(n: int) -> dict[str, Any]:
    """Axis settings for block / layer / position indices 0..n-1: whole numbers only."""
    return {"tickmode": "linear", "tick0": 0, "dtick": max(1, math.ceil(n / 16))}


def _blocks(n: int) -> list[int]:
    return list(range(n))


def _line(x: Sequence[Any], y: list[Any], name: str, hover: str, **kw: Any) -> go.Scatter:
    return go.Scatter(x=list(x), y=y, name=name, mode="lines+markers",
                      hovertemplate=hover + "<extra>" + name + "</extra>", **kw)


def _estimate(estimates: Estimates | None, name: str) -> dict[str, Any] | None:
    """An estimate as a dict (from an :class:`Estimate` or a results.json entry), or None."""
    if not estimates or name not in estimates:
        return None
    est = estimates[name]
    return est.to_dict() if isinstance(est, Estimate) else dict(est)


def _threshold(est: dict[str, Any] | None) -> float | None:
    if est is None:
        return None
    value = (est.get("params") or {}).get("threshold")
    return None if value is None else float(value)


def _mark(fig: go.Figure, est: dict[str, Any] | None, x: float | None, label: str,
          **where: Any) -> None:
    """A dashed vertical line at the estimated block (nothing when the estimate is undefined)."""
    if est is None or est.get("layer") is None or x is None:
        return
    ratio = est.get("ratio")
    note = f"{label} = {est['layer']}" + ("" if ratio is None else f" (ratio {ratio:.2f})")
    fig.add_vline(x=x, line_dash="dash", line_color="#444", annotation_text=note,
                  annotation_position="top right", annotation_font_size=11, **where)


def _hline(fig: go.Figure, y: float | None, label: str, **where: Any) -> None:
    if y is None:
        return
    fig.add_hline(y=y, line_dash="dot", line_color="#999", annotation_text=label,
                  annotation_position="bottom right", annotation_font_size=10, **where)


def _example(maps: Sequence[Tensor], example: int, what: str) -> Tensor:
    if not 0 <= example < len(maps):
        raise ConfigError(f"{what} has {len(maps)} example maps; example={example} is out of range")
    return maps[example]


def _token_axis(fig: go.Figure, tokens: Sequence[str]) -> None:
    # positions, not token strings, are the x values: repeated tokens must stay separate columns
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(tokens))),
                     ticktext=[token_label(t) for t in tokens], tickangle=0 if len(tokens) <= 40 else -90)


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


@register_figure(Contributions, "relative", "Relative contributions")
def relative_contributions_figure(result: Contributions) -> go.Figure:
    """How much each block writes into the residual stream, relative to what is there: the
    attention, MLP and whole-block norms over the stream's norm, per block (token-weighted
    means)."""
    fig = go.Figure()
    for key, formula in _REL.items():
        fig.add_trace(_line(_blocks(result.n_layers), result.curve(key).tolist(), key,
                            f"block %{{x}}<br>{formula} = %{{y:.4f}}"))
    fig.update_xaxes(**_integer_ticks(result.n_layers))
    return _finish(fig, "Relative contribution of each block to the residual stream", "block l",
                   "relative contribution (norm ratio)",
                   subtitle="token-weighted means; a_l attention, m_l MLP, d_l whole block, h_l stream")


@register_figure(Contributions, "cosines", "Cosines with the residual stream", marks_estimates=True)
def cosines_figure(result: Contributions, estimates: Estimates | None = None) -> go.Figure:
    """Does a block add to the stream (cosine > 0) or erase it (cosine < 0)? The four cosines per
    block, the mean of the first three (the curve ``ed_cos`` reads) dotted, ``ed_cos`` marked."""
    fig = go.Figure()
    blocks = _blocks(result.n_layers)
    for key, formula in _COS.items():
        fig.add_trace(_line(blocks, result.curve(key).tolist(), key,
                            f"block %{{x}}<br>{formula} = %{{y:.4f}}"))
    mean = (result.curve("cos_attn") + result.curve("cos_mlp") + result.curve("cos_block")) / 3
    fig.add_trace(_line(blocks, mean.tolist(), "mean (ed_cos)",
                        "block %{x}<br>mean of cos_attn, cos_mlp, cos_block = %{y:.4f}",
                        line={"dash": "dot", "color": "#444"}))
    fig.add_hline(y=0, line_color="#bbb")
    _mark(fig, _estimate(estimates, "ed_cos"), _layer(estimates, "ed_cos"), "ed_cos")
    fig.update_xaxes(**_integer_ticks(result.n_layers))
    return _finish(fig, "Cosine of each block's output with the residual stream", "block l", "cosine",
                   subtitle="< 0: the block erases part of the stream; ed_cos = last crossing of the "
                            "mean from < 0 to ≥ 0")


@register_figure(Contributions, "angular", "Angular distance between residual boundaries")
def angular_distance_figure(result: Contributions) -> go.Figure:
    """The mean angular distance ``arccos(cos(h_i, h_j)) / π`` between every pair of residual
    boundaries (Gromov et al. 2024): a dark band along the diagonal means layers that change
    little."""
    L = result.n_layers
    fig = go.Figure(go.Heatmap(
        z=grid(result.angular_distance), x=list(range(L + 1)), y=list(range(L + 1)),
        colorscale="Viridis", zmin=0, colorbar={"title": {"text": "distance"}},
        hovertemplate="h_%{y} vs h_%{x}<br>arccos(cos)/π = %{z:.4f}<extra></extra>",
    ))
    fig.update_xaxes(**_integer_ticks(L + 1))
    fig.update_yaxes(autorange="reversed", **_integer_ticks(L + 1))
    return _finish(fig, "Angular distance between residual boundaries",
                   "boundary j (0 = embedding)", "boundary i (0 = embedding)", height=460,
                   subtitle="mean arccos(cos(h_i, h_j)) / π over tokens (Gromov et al. 2024)")


def _layer(estimates: Estimates | None, name: str) -> float | None:
    est = _estimate(estimates, name)
    return None if est is None or est.get("layer") is None else float(est["layer"])


# --- §3 logit lens ------------------------------------------------------------------------------


@register_figure(LogitLens, "lens", "Logit lens", marks_estimates=True)
def logit_lens_figure(result: LogitLens, estimates: Estimates | None = None) -> go.Figure:
    """How close the logit lens of the stream entering each block is to the model's output: the
    KL divergence (top) and the top-k overlap (bottom) per layer, with ``ed_kl`` and
    ``ed_overlap`` and their thresholds marked when ``estimates`` are given."""
    layers = list(range(result.kl.shape[0]))
    k = result.meta.get("k", 5)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    fig.add_trace(_line(layers, result.kl.tolist(), "KL(lens ‖ output)",
                        "layer %{x}<br>KL = %{y:.4f} nats"), row=1, col=1)
    fig.add_trace(_line(layers, result.overlap.tolist(), f"top-{k} overlap",
                        f"layer %{{x}}<br>top-{k} overlap = %{{y:.3f}}"), row=2, col=1)
    kl_est, ov_est = _estimate(estimates, "ed_kl"), _estimate(estimates, "ed_overlap")
    tau_kl, tau_ov = _threshold(kl_est), _threshold(ov_est)
    _hline(fig, None if tau_kl is None else tau_kl * float(result.kl.max()),
           f"{tau_kl} × max KL", row=1, col=1)
    _hline(fig, tau_ov, f"τ = {tau_ov}", row=2, col=1)
    _mark(fig, kl_est, _layer(estimates, "ed_kl"), "ed_kl", row=1, col=1)
    _mark(fig, ov_est, _layer(estimates, "ed_overlap"), "ed_overlap", row=2, col=1)
    fig = _finish(fig, "Logit lens: distance of each layer's prediction from the output",
                  "", "", height=560,
                  subtitle="lens(h_l) = softmax(unembed(ln_final(h_l))) against the output p")
    fig.update_xaxes(**_integer_ticks(len(layers)))
    fig.update_xaxes(title_text="layer l (stream entering block l; 0 = embedding)", row=2, col=1)
    fig.update_yaxes(title_text="KL divergence (nats)", row=1, col=1)
    fig.update_yaxes(title_text=f"top-{k} overlap", range=[-0.02, 1.02], row=2, col=1)
    return fig


@register_figure(TunedLens, "lens", "Tuned lens", marks_estimates=True)
def tuned_lens_figure(result: TunedLens, estimates: Estimates | None = None) -> go.Figure:
    """The logit lens's figure of the tuned lens's curves, marking ``ed_tuned_kl`` and
    ``ed_tuned_overlap`` (never the logit lens's estimates) when ``estimates`` are given."""
    names = {"ed_kl": "ed_tuned_kl", "ed_overlap": "ed_tuned_overlap"}
    fig = logit_lens_figure(result, {plain: estimates[tuned] for plain, tuned in names.items()
                                     if estimates and tuned in estimates})
    for note in fig.layout.annotations:
        for plain, tuned in names.items():
            if note.text.startswith(plain + " "):
                note.text = tuned + note.text[len(plain):]
    fig.update_layout(title={"text": "Tuned lens: distance of each layer's prediction from the output",
                             "subtitle": {"text": "tuned_l(h_l) = lens(A_l h_l + b_l), affine "
                                          "translators trained on held-out prompts"}})
    return fig


# --- §2 layer-skip effects ----------------------------------------------------------------------


def _skip_title(result: SkipEffects) -> str:
    mode = result.meta.get("mode", "future")
    component = result.meta.get("component", "block")
    return (f"{mode} effects, {component} skipped, {result.aggregate} over positions and prompts; "
            f"{result.n_prompts} prompts")


@register_figure(SkipEffects, "layer_effect", "Layer-skip effects on later blocks")
def layer_effect_figure(result: SkipEffects) -> go.Figure:
    """What skipping block s does to the computation of every later block i: the relative change
    ``‖d_i' − d_i‖ / ‖d_i‖`` (``layer_effect[s, i]``) on a 0–1 colour scale (larger values
    saturate); the lower triangle is 0 by construction."""
    L = result.n_layers
    fig = go.Figure(go.Heatmap(
        z=grid(result.layer_effect), x=_blocks(L), y=_blocks(L), colorscale="Blues",
        zmin=0, zmax=1, hoverongaps=False, colorbar={"title": {"text": "‖Δd_i‖/‖d_i‖"}},
        hovertemplate="skipped block %{y}<br>affected block %{x}<br>relative change = %{z:.4f}"
                      "<extra></extra>",
    ))
    fig.update_xaxes(**_integer_ticks(L))
    fig.update_yaxes(autorange="reversed", **_integer_ticks(L))
    return _finish(fig, "Effect of skipping a block on later blocks", "affected block i",
                   "skipped block s", height=460, subtitle=_skip_title(result))


@register_figure(SkipEffects, "output_effect", "Layer-skip effect on the output", marks_estimates=True)
def output_effect_figure(result: SkipEffects, estimates: Estimates | None = None) -> go.Figure:
    """How much skipping each block changes the output distribution, ``‖p′ − p‖₂``; ``ed_skip``
    (the last block above τ × the largest effect) marked when given."""
    effect = result.output_effect
    fig = go.Figure(go.Bar(
        x=_blocks(result.n_layers), y=grid(effect), name="output effect",
        hovertemplate="skipped block %{x}<br>‖p′ − p‖₂ = %{y:.4f}<extra></extra>",
    ))
    est = _estimate(estimates, "ed_skip")
    tau = _threshold(est)
    finite = effect[~torch.isnan(effect)]
    if tau is not None and len(finite):
        _hline(fig, tau * float(finite.max()), f"{tau} × max")
    _mark(fig, est, _layer(estimates, "ed_skip"), "ed_skip")
    fig.update_xaxes(**_integer_ticks(result.n_layers))
    return _finish(fig, "Effect of skipping a block on the output", "skipped block s",
                   "output change ‖p′ − p‖₂", subtitle=_skip_title(result))


# --- behaviour (ed_task, ed_prune) --------------------------------------------------------------


@register_figure(Behaviour, "behaviour", "Task accuracy by depth", marks_estimates=True)
def behaviour_figure(result: Behaviour, estimates: Estimates | None = None) -> go.Figure:
    """Exact-match accuracy when the answer is read after the first n blocks (left, early exit)
    and when the k blocks with the smallest output effect are skipped together (right, pruning);
    the full model's accuracy dotted, ``ed_task`` and ``ed_prune`` marked when given."""
    L = int(result.correct_by_exit.shape[1]) - 1
    exits, pruned = list(range(L + 1)), list(range(L + 1))
    order = [int(s) for s in result.prune_order]
    skipped = [", ".join(str(s) for s in order[:k]) or "none" for k in pruned]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("early exit", "pruning (smallest output effect first)"))
    fig.add_trace(_line(exits, result.accuracy_by_exit().tolist(), "accuracy by exit depth",
                        "first %{x} blocks run<br>accuracy = %{y:.3f}"), row=1, col=1)
    fig.add_trace(_line(pruned, result.accuracy_by_prune().tolist(), "accuracy by pruned blocks",
                        "%{x} blocks skipped (%{customdata})<br>accuracy = %{y:.3f}",
                        customdata=skipped), row=1, col=2)
    full = result.accuracy()
    for col in (1, 2):
        _hline(fig, full, f"full model {full:.2f}", row=1, col=col)
    task, prune = _estimate(estimates, "ed_task"), _estimate(estimates, "ed_prune")
    task_x = _layer(estimates, "ed_task")
    prune_x = _layer(estimates, "ed_prune")
    _mark(fig, task, None if task_x is None else task_x + 1, "ed_task", row=1, col=1)
    _mark(fig, prune, None if prune_x is None else L - prune_x - 1, "ed_prune", row=1, col=2)
    fig = _finish(fig, "Task accuracy by exit depth and by pruned blocks", "", "",
                  subtitle=f"teacher-forced exact match; pruning order {order}")
    fig.update_layout(margin={"t": 110})  # room for the subplot titles under the subtitle
    fig.update_xaxes(**_integer_ticks(L + 1))
    fig.update_xaxes(title_text="blocks run before reading the answer (n)", row=1, col=1)
    fig.update_xaxes(title_text="blocks skipped together (k)", row=1, col=2)
    fig.update_yaxes(title_text="exact-match accuracy", range=[-0.02, 1.05])
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


def _estimate_rows(estimates: Estimates) -> list[dict[str, Any]]:
    rows = []
    for name in estimates:
        est = _estimate(estimates, name)
        if est is not None and "layer" in est:  # "depth_score" and other non-estimators are skipped
            rows.append({**est, "name": est.get("name", name)})
    return rows


def ed_summary_figure(estimates: Estimates, title: str = "Effective depth by estimator") -> go.Figure:
    """The effective-depth ratio ``(e + 1) / L`` of every estimator with its bootstrap CI as error
    bars; an undefined estimator gets no marker but an annotation with the reason."""
    rows = _estimate_rows(estimates)
    names = [r["name"] for r in rows]
    ratios = [r.get("ratio") for r in rows]
    lo = [_ci_minus(r) for r in rows]
    hi = [_ci_plus(r) for r in rows]
    info = [_estimate_hover(r) for r in rows]
    fig = go.Figure(go.Scatter(
        x=names, y=ratios, mode="markers", name="ratio", marker={"size": 12},
        error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo},
        customdata=info, hovertemplate="%{x}<br>%{customdata}<extra></extra>",
    ))
    for r in rows:
        if r.get("layer") is None:
            reason = textwrap.wrap(str(r.get("reason") or "undefined"), 16)
            fig.add_annotation(x=r["name"], y=0.02, yanchor="bottom", showarrow=False,
                               align="center", font={"size": 9, "color": "#a33"},
                               text="undefined:<br>" + "<br>".join(text(line) for line in reason))
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=names)
    fig.update_yaxes(range=[0, 1.05])
    return _finish(fig, title, "estimator", "effective-depth ratio (e + 1) / L", height=440)


def _ci_minus(est: dict[str, Any]) -> float:
    ci, ratio = est.get("ci"), est.get("ratio")
    return 0.0 if ci is None or ratio is None else max(0.0, ratio - float(ci[0]))


def _ci_plus(est: dict[str, Any]) -> float:
    ci, ratio = est.get("ci"), est.get("ratio")
    return 0.0 if ci is None or ratio is None else max(0.0, float(ci[1]) - ratio)


def _estimate_hover(est: dict[str, Any]) -> str:
    if est.get("layer") is None:
        return "undefined: " + text(est.get("reason") or "?")
    ci = est.get("ci")
    ci_text = "no CI" if ci is None else f"CI [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"block {est['layer']} of {est.get('n_layers', '?')}, ratio {est['ratio']:.3f}, {ci_text}"
