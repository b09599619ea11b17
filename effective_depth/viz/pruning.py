"""The figure of ``effective-depth prune``: accuracy (or answer log-likelihood) against the number
of blocks removed, one line per criterion, each with its pointwise bootstrap CI band over prompts
(the same bands as the curves of every other figure: :func:`effective_depth.stats.curve_band`)."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from plotly.colors import qualitative

from ..analysis.pruning import CRITERIA, CRITERION_DEFINITIONS, PruningComparison
from ..errors import ConfigError
from .figures import _curve, _finish, band_text, text

__all__ = ["pruning_figure", "write_pruning_figure"]

#: one colour per criterion, the same in every figure
_COLOURS = dict(zip(CRITERIA, qualitative.D3))


def pruning_figure(comparison: PruningComparison, what: str = "accuracy", *,
                   n_boot: int = 200, title: str | None = None) -> go.Figure:
    """``what``: "accuracy" (held-out exact match) or "loglik" (mean log-probability of the
    answer tokens), against blocks removed ``k = 0 … k_max``."""
    if what not in ("accuracy", "loglik"):
        raise ConfigError(f"what must be 'accuracy' or 'loglik', got {what!r}")
    fig = go.Figure()
    ks = list(range(comparison.k_max + 1))
    L = comparison.n_layers
    for c in comparison.criteria:
        curve = comparison.accuracy if what == "accuracy" else comparison.mean_loglik
        sets = [[]] + [comparison.rankings[c].sets[k - 1] for k in ks[1:]]
        extra = [text(", ".join(map(str, s)) or "none") for s in sets]
        hover = ("k = %{x} of " + str(L) + " blocks removed<br>" +
                 ("accuracy %{y:.1%}" if what == "accuracy" else "log-likelihood %{y:.3f}") +
                 "<br>removed: %{customdata[2]}<br>" + text(CRITERION_DEFINITIONS[c]))
        _curve(fig, ks, lambda idx, c=c, curve=curve: curve(c, idx), comparison.n_prompts, c,
               hover, _COLOURS.get(c, "#333333"), n_boot=n_boot, extra=extra,
               value=":.3f")
    y_title = ("held-out exact-match accuracy" if what == "accuracy"
               else "mean log-probability of the answer tokens")
    model = comparison.meta.get("model", "model")
    task = comparison.meta.get("task", "task")
    fig = _finish(fig, title or f"Pruning criteria: {text(model)} on {text(task)}",
                  f"blocks removed (of {L})", y_title,
                  subtitle=band_text(comparison.n_prompts, n_boot) + "; criteria measured on "
                  f"{comparison.meta.get('n_calib', '?')} calibration prompts")
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=1 if comparison.k_max <= 16 else 2)
    if what == "accuracy":
        fig.update_yaxes(range=[-0.02, 1.02], tickformat=".0%")
    return fig


def write_pruning_figure(comparison: PruningComparison, path: str | Path, *,
                         n_boot: int = 200) -> Path:
    """The accuracy and log-likelihood figures in one self-contained HTML file (plotly.js
    embedded: it opens offline)."""
    from ..store.results import atomic_write_text

    path = Path(path)
    parts = []
    for i, what in enumerate(("accuracy", "loglik")):
        fig = pruning_figure(comparison, what, n_boot=n_boot)
        parts.append(fig.to_html(full_html=False, include_plotlyjs=i == 0))
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>pruning criteria</title>"
            "</head><body>" + "".join(parts) + "</body></html>\n")
    atomic_write_text(path, page)
    return path
