"""Figures show the results' own numbers: trace data equal to the tensors, axis titles, markers
of the estimated depth, and dispatch through the figure registry. Results are built by hand
(no model), so every expected value is known."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import ClassVar

import plotly.graph_objects as go
import pytest
import torch

from effective_depth.analysis.estimation import Estimate
from effective_depth.errors import ConfigError
from effective_depth.metrics import (
    CONTRIBUTION_CURVES,
    Behaviour,
    Contributions,
    Erasure,
    IntegratedGradients,
    LogitLensResult,
    SkipEffects,
    TunedLensResult,
)
from effective_depth.metrics.base import MetricResult
from effective_depth.stats import bootstrap_indices
from effective_depth.viz import figure_for
from effective_depth.viz.compare_figures import (
    comparison_figures,
    difficulty_figure,
    scale_figure,
    training_figure,
)
from effective_depth.viz.figures import (
    BAND_BOOT,
    FIGURES,
    colour_scale,
    ed_summary_figure,
    figure_specs,
    register_figure,
    skip_modes_figure,
)

L, P = 4, 3
HOSTILE = "<script>alert(1)</script>"


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def contributions() -> Contributions:
    sums = {k: _rand(P, L, seed=i) * (2 if k.startswith("rel") else 1) - (0 if k.startswith("rel") else 0.5)
            for i, k in enumerate(CONTRIBUTION_CURVES)}
    return Contributions(sums=sums, counts=torch.tensor([5.0, 6.0, 7.0]),
                         angular_sums=_rand(P, L + 1, L + 1, seed=9), meta={"n_layers": L, "n_prompts": P})


@pytest.fixture(scope="module")
def lens() -> LogitLensResult:
    return LogitLensResult(_rand(P, L, seed=1) * 3, _rand(P, L, seed=2), torch.tensor([2.0, 3.0, 4.0]),
                     meta={"n_layers": L, "n_prompts": P, "k": 5})


@pytest.fixture(scope="module")
def tuned(lens) -> TunedLensResult:
    return TunedLensResult(lens.kl_sums / 2, lens.overlap_sums, lens.counts,
                     meta={**lens.meta, "lens": {"steps": 10}})


@pytest.fixture(scope="module")
def skips() -> SkipEffects:
    layer = torch.triu(_rand(P, L, L, seed=3) * 1.5, diagonal=1)
    return SkipEffects(layer, layer * 2, _rand(P, L, seed=4), _rand(P, L, seed=5),
                       torch.ones(P, L), [[] for _ in range(P)],
                       meta={"n_layers": L, "n_prompts": P, "mode": "current", "aggregate": "max"})


@pytest.fixture(scope="module")
def behaviour() -> Behaviour:
    exit_ok = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [0, 1, 1, 1, 1]], dtype=torch.bool)
    prune_ok = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return Behaviour(exit_ok, prune_ok, [3, 0, 2, 1], meta={"n_layers": L, "n_prompts": P})


TOKENS = ["<bos>", "1", "1", HOSTILE, "=", "2"]


@pytest.fixture(scope="module")
def erasure() -> Erasure:
    m = _rand(L + 1, len(TOKENS), seed=6)
    m[:, 0] = float("nan")
    return Erasure([m], [TOKENS], torch.zeros(L + 1, 8), meta={"n_layers": L, "n_prompts": 1})


@pytest.fixture(scope="module")
def gradients() -> IntegratedGradients:
    m = _rand(L, len(TOKENS), seed=7) - 0.8  # mostly negative: zmax must come from |min|
    return IntegratedGradients([m, m * 2], [TOKENS, TOKENS], torch.tensor([0.25, 0.5]),
                               meta={"n_layers": L, "n_prompts": 2, "n_steps": 8})


# Expected values are computed here from the fixtures' raw fields (sums, counts, maxima), not
# through the result accessors the figures themselves call.
def _token_mean(sums: torch.Tensor, counts: torch.Tensor) -> list[float]:
    return (sums.sum(0) / counts.sum()).tolist()


def _titled_axes(fig: go.Figure) -> None:
    """Every axis that a trace uses has a title (a shared axis: its partner has it)."""
    used = set()
    for trace in fig.data:
        used.add("xaxis" + (trace.xaxis or "x")[1:])
        used.add("yaxis" + (trace.yaxis or "y")[1:])
    for axis in used:
        layout_axis = fig.layout[axis]
        if layout_axis.matches:
            layout_axis = fig.layout[axis[0] + "axis" + layout_axis.matches[1:]]
        assert layout_axis.title.text, f"{axis} has no title"


def _vlines(fig: go.Figure) -> list[tuple[float, str]]:
    return [(s.x0, s.xref) for s in fig.layout.shapes if s.x0 == s.x1 and s.x0 is not None]


def _curves(fig: go.Figure) -> dict[str, go.Scatter]:
    """The data traces (lines with markers) by name, without bands and legend-only entries."""
    return {t.name: t for t in fig.data if t.type == "scatter" and t.mode == "lines+markers"}


def _band(fig: go.Figure, name: str) -> tuple[list, list]:
    """The (lower, upper) CI band drawn for curve ``name``."""
    upper = next(t for t in fig.data if t.name == f"{name}: CI upper")
    lower = next(t for t in fig.data if t.legendgroup == name and t.fill == "tonexty")
    return list(lower.y), list(upper.y)


def _legend(fig: go.Figure) -> list[str]:
    """The names of the legend-only entries (reference lines drawn as shapes)."""
    return [t.name for t in fig.data if t.type == "scatter" and list(t.x) == [None]]


def _bootstrap_band(curves: list[list[float]]) -> tuple[list, list]:
    """Percentile band, by hand, of curves recomputed on the same resamples as the figures."""
    import numpy as np

    lo, hi = np.quantile(curves, 0.025, axis=0), np.quantile(curves, 0.975, axis=0)
    return lo.tolist(), hi.tolist()


def _resampled(fn, n_prompts: int) -> list[list[float]]:
    return [fn(idx) for idx in bootstrap_indices(n_prompts, BAND_BOOT, 0)]


# --- figures of each result --------------------------------------------------------------------


def test_relative_contributions_show_the_curves(contributions):
    fig = figure_for(contributions)
    curves = _curves(fig)
    assert list(curves) == ["rel_attn", "rel_mlp", "rel_block"]
    assert fig.layout.yaxis.type == "log"  # block 0 dwarfs the rest on a linear axis
    for name, trace in curves.items():
        assert list(trace.x) == list(range(L))
        sums, counts = contributions.sums[name], contributions.counts
        assert list(trace.y) == pytest.approx(_token_mean(sums, counts), rel=1e-6)
        # the band: token-weighted means over prompt resamples, percentiles by hand
        lo, hi = _bootstrap_band(_resampled(lambda i, s=sums, c=counts: _token_mean(s[i], c[i]), P))
        band = _band(fig, name)
        assert band[0] == pytest.approx(lo, rel=1e-6) and band[1] == pytest.approx(hi, rel=1e-6)
        assert [c[0] for c in trace.customdata] == pytest.approx(lo, rel=1e-6)
        assert [c[1] for c in trace.customdata] == pytest.approx(hi, rel=1e-6)
        assert "95% CI" in trace.hovertemplate and "bootstrap" in trace.hovertemplate
    assert "percentile bootstrap" in fig.layout.title.subtitle.text
    _titled_axes(fig)


def test_bands_need_two_prompts(contributions):
    one = Contributions(sums={k: v[:1] for k, v in contributions.sums.items()},
                        counts=contributions.counts[:1],
                        angular_sums=contributions.angular_sums[:1], meta={"n_layers": L, "n_prompts": 1})
    fig = figure_for(one)
    assert not [t for t in fig.data if t.fill == "tonexty"]
    assert list(_curves(fig)) == ["rel_attn", "rel_mlp", "rel_block"]


def test_cosines_mark_ed_cos(contributions):
    est = Estimate("ed_cos", L, 2, ci=(0.5, 1.0))
    fig = figure_for(contributions, kind="cosines", estimates={"ed_cos": est})
    by_name = _curves(fig)
    want = {key: torch.tensor(_token_mean(contributions.sums[key], contributions.counts))
            for key in ("cos_attn", "cos_mlp", "cos_block", "cos_resid")}
    for key, curve in want.items():
        assert list(by_name[key].y) == pytest.approx(curve.tolist(), rel=1e-6)
    mean = (want["cos_attn"] + want["cos_mlp"] + want["cos_block"]) / 3
    assert list(by_name["mean (ed_cos)"].y) == pytest.approx(mean.tolist(), rel=1e-6)
    assert (2.0, "x") in _vlines(fig)
    assert "ed_cos = block 2 (ratio 0.75)" in _legend(fig)  # labelled in the legend, no overprint
    assert not fig.layout.annotations
    _titled_axes(fig)


def test_angular_distance_heatmap(contributions):
    fig = figure_for(contributions, kind="angular")
    assert fig.data[0].type == "heatmap"
    want = (contributions.angular_sums.sum(0) / contributions.counts.sum()).tolist()
    for row, exp in zip(fig.data[0].z, want):
        assert list(row) == pytest.approx(exp, rel=1e-6)
    _titled_axes(fig)


def test_logit_lens_curves_and_estimates(lens):
    estimates = {
        "ed_kl": Estimate("ed_kl", L, 1, ci=(0.25, 0.75), params={"threshold": 0.5}).to_dict(),
        "ed_overlap": Estimate("ed_overlap", L, 3, params={"threshold": 0.3}),
    }
    fig = figure_for(lens, estimates=estimates, d_vocab=40)
    kl, overlap = _curves(fig).values()
    want_kl = _token_mean(lens.kl_sums, lens.counts)
    assert list(kl.y) == pytest.approx(want_kl, rel=1e-6)
    assert list(overlap.y) == pytest.approx(_token_mean(lens.overlap_sums, lens.counts), rel=1e-6)
    assert list(kl.x) == list(range(L))
    assert (kl.yaxis, overlap.yaxis) == ("y", "y2")
    lines = _vlines(fig)
    assert (1.0, "x") in lines and (3.0, "x2") in lines  # each estimate on its own curve
    hlines = {round(s.y0, 6) for s in fig.layout.shapes if s.y0 == s.y1}
    assert round(0.5 * max(want_kl), 6) in hlines and 0.3 in hlines
    chance = [s for s in fig.layout.shapes if s.y0 == s.y1 == 5 / 40]  # k / V
    assert len(chance) == 1 and chance[0].yref == "y2"
    assert "chance overlap k/V = 5/40 = 0.125" in _legend(fig)
    lo, hi = _bootstrap_band(_resampled(lambda i: _token_mean(lens.overlap_sums[i], lens.counts[i]), P))
    assert _band(fig, "top-5 overlap") == (pytest.approx(lo, rel=1e-6), pytest.approx(hi, rel=1e-6))
    _titled_axes(fig)


def test_logit_lens_chance_from_meta_and_without(lens):
    with_meta = LogitLensResult(lens.kl_sums, lens.overlap_sums, lens.counts,
                          meta={**lens.meta, "d_vocab": 10})
    assert any(s.y0 == s.y1 == 0.5 for s in figure_for(with_meta).layout.shapes)
    assert not any("chance" in n for n in _legend(figure_for(lens)))  # V unknown: no line


def test_logit_lens_undefined_estimate_has_no_marker(lens):
    undefined = {"ed_kl": {"layer": None, "reason": "never falls", "ratio": None}}
    fig = figure_for(lens, estimates=undefined)
    assert _vlines(fig) == []
    assert figure_for(lens).layout.shapes == ()


def _upper(m: torch.Tensor) -> list[list]:
    """The cells i > s of a matrix, None elsewhere (not measured)."""
    return [[v if i > s else None for i, v in enumerate(row)] for s, row in enumerate(m.tolist())]


def test_layer_effect_heatmap_is_the_matrix(skips):
    import math

    fig = figure_for(skips)
    hm = fig.data[0]
    assert hm.type == "heatmap"
    # aggregate "max" over prompts that have a measured position (all of them here); the true
    # values are the hover's customdata, the colour is their log10 over the data's range
    want = _upper(skips.layer_max.amax(0))
    assert [list(r) for r in hm.customdata] == want
    cells = [v for row in want for v in row if v is not None]
    for row, exp in zip(hm.z, want):
        assert [None if v is None else pytest.approx(math.log10(v)) for v in exp] == list(row)
    assert (hm.zmin, hm.zmax) == pytest.approx((math.log10(min(cells)), math.log10(max(cells))))
    ticks = list(hm.colorbar.ticktext)
    assert ticks[0] == f"{min(cells):.2g}" and ticks[-1] == f"{max(cells):.2g}"
    assert "log colour scale" in fig.layout.title.subtitle.text
    assert list(hm.x) == list(range(L)) and list(hm.y) == list(range(L))
    assert fig.layout.xaxis.title.text == "affected block i"
    assert fig.layout.yaxis.title.text == "skipped block s"


def test_layer_effect_linear_scale_is_the_data_range_or_a_labelled_clip(skips):
    cells = [v for row in _upper(skips.layer_max.amax(0)) for v in row if v is not None]
    top = max(cells)
    linear = figure_for(skips, scale="linear").data[0]
    assert (linear.zmin, linear.zmax) == (0, pytest.approx(top))
    assert [list(r) for r in linear.z] == _upper(skips.layer_max.amax(0))
    clipped = figure_for(skips, scale="linear", clip=0.5)
    hm = clipped.data[0]
    assert hm.zmax == 0.5 and hm.colorbar.ticktext[-1] == f"≥ 0.5 (max {top:.3g})"
    share = sum(v > 0.5 for v in cells) / len(cells)
    assert f"{share:.0%} of cells are above it" in clipped.layout.title.subtitle.text
    with pytest.raises(ConfigError, match="'log' or 'linear'"):
        colour_scale([torch.ones(2, 2)], "sqrt")


def test_skip_modes_side_by_side(skips):
    future = SkipEffects(skips.layer_max * 0.5, skips.layer_sum, skips.output_max, skips.output_sum,
                         torch.ones(P, L), [[2] for _ in range(P)], meta={**skips.meta, "mode": "future"})
    fig = skip_modes_figure([future, skips])  # order given: future first
    left, right = fig.data
    assert [a.text for a in fig.layout.annotations][:2] == [
        "all positions (current effects)", "future positions only (future effects)"]
    assert [list(r) for r in left.customdata] == _upper(skips.layer_max.amax(0))
    assert [list(r) for r in right.customdata] == _upper(future.layer_max.amax(0))
    assert (left.zmin, left.zmax) == (right.zmin, right.zmax)  # one colour scale for both
    assert (left.showscale, right.showscale) == (False, True)


def test_layer_effect_nan_cells_are_blank(skips):
    empty = SkipEffects(skips.layer_max, skips.layer_sum, skips.output_max, skips.output_sum,
                        torch.zeros(P, L), skips.cuts, meta=skips.meta)  # no prompt measured
    fig = figure_for(empty)
    assert all(v is None for row in fig.data[0].z for v in row)
    bars = figure_for(empty, kind="output_effect", estimates={"ed_skip": Estimate("ed_skip", L, 1)})
    assert all(v is None for v in bars.data[0].y)


def test_output_effect_bars_and_ed_skip(skips):
    est = Estimate("ed_skip", L, 2, ci=(0.75, 0.75), params={"threshold": 0.1})
    fig = figure_for(skips, kind="output_effect", estimates={"ed_skip": est})
    bar = fig.data[0]
    assert bar.type == "bar"
    want = skips.output_max.amax(0)
    assert list(bar.y) == want.tolist()
    lo, hi = _bootstrap_band(_resampled(lambda i: skips.output_max[i].amax(0).tolist(), P))
    assert list(bar.error_y.array) == pytest.approx([h - v for h, v in zip(hi, want.tolist())])
    assert list(bar.error_y.arrayminus) == pytest.approx([v - lo_ for lo_, v in zip(lo, want.tolist())])
    assert (2.0, "x") in _vlines(fig)
    _titled_axes(fig)


def test_behaviour_accuracy_curves(behaviour):
    estimates = {"ed_task": Estimate("ed_task", L, 1), "ed_prune": Estimate("ed_prune", L, 2)}
    fig = figure_for(behaviour, estimates=estimates)
    exit_, prune = _curves(fig).values()
    # column means of the fixture's tables, by hand
    assert list(exit_.y) == pytest.approx([0, 1 / 3, 2 / 3, 1, 1])
    assert list(prune.y) == pytest.approx([1, 2 / 3, 1 / 3, 0, 0])
    assert list(exit_.x) == list(range(L + 1))
    assert [c[2] for c in prune.customdata][:2] == ["none", "3"]  # the prune order: block 3 first
    # ed_task = block 1 -> 2 blocks run; ed_prune = block 2 -> L - 2 - 1 = 1 block skipped
    assert (2.0, "x") in _vlines(fig) and (1.0, "x2") in _vlines(fig)
    # a readable axis: accuracy in %, x fixed to the exits, labels in the legend, not on the plot
    assert fig.layout.yaxis.tickformat == ".0%" and "%{y:.1%}" in exit_.hovertemplate
    assert list(fig.layout.xaxis.range) == [-0.5, L + 0.5]
    legend = _legend(fig)
    assert "full model: 100.0%" in legend and "ed_task = block 1 (ratio 0.50)" in legend
    assert legend.count("full model: 100.0%") == 1
    lo, hi = _bootstrap_band(_resampled(
        lambda i: behaviour.correct_by_exit[i].float().mean(0).tolist(), P))
    assert _band(fig, "accuracy by exit depth") == (pytest.approx(lo), pytest.approx(hi))
    _titled_axes(fig)


def test_erasure_map_values_tokens_and_nan(erasure):
    fig = figure_for(erasure)
    hm = fig.data[0]
    expected = erasure.maps[0].tolist()
    for row, exp in zip(hm.z, expected):
        assert row[0] is None  # the never-erased BOS column is blank
        assert list(row[1:]) == exp[1:]
    assert hm.hoverongaps is False
    assert list(hm.x) == list(range(len(TOKENS)))  # positions: the repeated "1" stays two columns
    ticks = list(fig.layout.xaxis.ticktext)
    assert ticks[3] == html.escape(HOSTILE, quote=False) and HOSTILE not in ticks
    assert hm.customdata[2][3] == ticks[3]
    assert "%{customdata}" in hm.hovertemplate and "%{y}" in hm.hovertemplate
    assert "%{z" in hm.hovertemplate
    _titled_axes(fig)


def test_erasure_example_out_of_range(erasure):
    with pytest.raises(ConfigError, match="out of range"):
        figure_for(erasure, example=3)


def test_integrated_gradients_symmetric_scale(gradients):
    fig = figure_for(gradients, example=1)
    hm = fig.data[0]
    m = gradients.maps[1]
    assert [list(r) for r in hm.z] == m.tolist()
    assert hm.zmin == -hm.zmax
    assert hm.zmax == pytest.approx(float(m.abs().max()))
    assert hm.colorscale[0][1] != hm.colorscale[-1][1]  # a diverging scale
    _titled_axes(fig)


def test_ed_summary_ratios_cis_and_reasons():
    estimates = {
        "ed_cos": Estimate("ed_cos", 4, None, reason=HOSTILE),
        "ed_kl": Estimate("ed_kl", 4, 2, ci=(0.5, 1.0)),
        "ed_overlap": Estimate("ed_overlap", 4, 3).to_dict(),  # no CI
        "depth_score": {"value": 1.2, "ci": [1.0, 1.4]},  # not an estimator: left out
    }
    fig = ed_summary_figure(estimates)
    trace = fig.data[0]
    assert list(trace.x) == ["ed_cos", "ed_kl", "ed_overlap"]
    assert list(trace.y) == [None, 0.75, 1.0]
    assert list(trace.error_y.array) == [0.0, 0.25, 0.0]
    assert list(trace.error_y.arrayminus) == [0.0, 0.25, 0.0]
    notes = [a.text for a in fig.layout.annotations if a.x == "ed_cos"]
    assert len(notes) == 1 and "undefined" in notes[0]
    assert HOSTILE not in notes[0] and "&lt;script&gt;" in notes[0]
    _titled_axes(fig)


# --- the registry -----------------------------------------------------------------------------


# the default figure of each result type, and what its first trace is
DEFAULTS = {
    Contributions: ("relative", "rel_attn"),
    LogitLensResult: ("lens", None),
    TunedLensResult: ("lens", None),
    SkipEffects: ("layer_effect", None),
    Behaviour: ("behaviour", None),
    Erasure: ("map", None),
    IntegratedGradients: ("map", None),
}


#: what each figure must plot: the result's own numbers, every finite one of them
PLOTTED = {
    (Contributions, "relative"): lambda r: [r.curves_of()[k] for k in CONTRIBUTION_CURVES
                                             if k.startswith("rel")],
    (Contributions, "cosines"): lambda r: [r.curves_of()[k] for k in CONTRIBUTION_CURVES
                                            if k.startswith("cos")],
    (Contributions, "angular"): lambda r: [r.angular_distance],
    (LogitLensResult, "lens"): lambda r: [r.kl_of(), r.overlap_of()],
    (TunedLensResult, "lens"): lambda r: [r.kl_of(), r.overlap_of()],
    (SkipEffects, "layer_effect"): lambda r: [r.layer_effect[torch.ones(L, L).triu(1).bool()]],
    (SkipEffects, "output_effect"): lambda r: [r.output_effect],
    (Behaviour, "behaviour"): lambda r: [r.accuracy_by_exit(), r.accuracy_by_prune()],
    (Erasure, "map"): lambda r: [r.maps[0]],
    (IntegratedGradients, "map"): lambda r: [r.maps[0]],
    (MetricResult, "curves"): lambda r: list(r.curves_of().values()),
}


def _numbers(value) -> list[float]:
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
        return [x for v in items for x in _numbers(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return []


def _not_plotted(fig: go.Figure, expected) -> list[float]:
    """The finite values of ``expected`` that no trace of ``fig`` holds (y, z or customdata,
    to 5 significant digits)."""
    shown = {f"{v:.5g}" for t in fig.data for key in ("y", "z", "customdata")
             for v in _numbers(getattr(t, key, None))}
    want = [float(v) for t in expected for v in torch.as_tensor(t).flatten().tolist()]
    return [v for v in want if v == v and f"{v:.5g}" not in shown]


@dataclass
class _Sums(MetricResult):
    """A measurement with no figure of its own, per-prompt sums of one curve (2 prompts)."""

    name: ClassVar[str] = "toy_sums"
    sums: torch.Tensor

    def curves(self):
        return {"toy": self.sums.mean(0).tolist(), "label": "not a curve"}

    def curves_of(self, idx=None):
        return {"toy": self.sums[idx].mean(0) if idx is not None else self.sums.mean(0)}


@dataclass
class _Plain(MetricResult):
    name: ClassVar[str] = "toy_plain"

    def curves(self):
        return {"a": [1.0, 3.0], "b": [2.5, 0.5], "flag": [True, False]}


def test_a_result_without_a_figure_gets_its_curves_drawn():
    """The fallback figure of any MetricResult: every stored numeric curve, with bootstrap
    bands where the result recomputes its curves on a prompt sample, none where it cannot."""
    sums = torch.tensor([[1.0, 2.0, 4.0], [3.0, 2.0, 0.0]])
    fig = figure_for(_Sums(sums, meta={"n_prompts": 2, "n_layers": 3}))
    lines = {t.name: list(t.y) for t in fig.data if t.mode == "lines+markers"}
    assert lines == {"toy": [2.0, 2.0, 2.0]}
    band = [t for t in fig.data if t.fill == "tonexty"]
    assert len(band) == 1  # resamples of 2 prompts: the band spans both prompts' values
    upper = next(t for t in fig.data if t.name == "toy: CI upper")
    assert list(band[0].y) == pytest.approx([1.0, 2.0, 0.0])
    assert list(upper.y) == pytest.approx([3.0, 2.0, 4.0])
    assert "toy_sums" in fig.layout.title.text
    plain = figure_for(_Plain(meta={"n_prompts": 4, "n_layers": 2}))
    assert {t.name: list(t.y) for t in plain.data} == {"a": [1.0, 3.0], "b": [2.5, 0.5]}
    assert "no CI bands" in plain.layout.title.subtitle.text


@pytest.mark.slow
def test_figure_for_dispatches_every_result_type(contributions, lens, tuned, skips, behaviour, erasure,
                                                gradients):
    results = [contributions, lens, tuned, skips, behaviour, erasure, gradients]
    assert set(FIGURES) == set(DEFAULTS) | {MetricResult}  # MetricResult: any other result
    for result in results:
        kind, first_trace = DEFAULTS[type(result)]
        assert list(figure_specs(result))[0] == kind
        default = figure_for(result)
        assert default.to_plotly_json() == figure_for(result, kind=kind).to_plotly_json()
        if first_trace is not None:
            assert next(iter(_curves(default))) == first_trace
        for other in figure_specs(result):
            fig = figure_for(result, kind=other)
            expected = PLOTTED[(type(result), other)](result)
            missing = _not_plotted(fig, expected)
            assert missing == [], (type(result).__name__, other, missing[:5])
    assert _not_plotted(go.Figure(go.Scatter(y=[0.5])), [torch.tensor([0.5, 2.0])]) == [2.0]
    # every registered figure has its data named above: a new one must say what it plots
    assert set(PLOTTED) == {(cls, kind) for cls in FIGURES for kind in FIGURES[cls]}
    # the layer-effect heatmap is the default of SkipEffects, the output bars are not
    assert figure_for(skips).data[0].type == "heatmap"
    # the tuned lens marks its own estimators, never the logit lens's
    marked = figure_for(tuned, estimates={"ed_tuned_kl": {"layer": 1, "ratio": 0.5},
                                          "ed_kl": {"layer": 2, "ratio": 0.75}})
    names = " ".join(str(t.name) for t in marked.data)
    assert "ed_tuned_kl" in names and "ed_kl " not in names.replace("ed_tuned_kl", "")


def test_figure_for_errors(lens):
    with pytest.raises(ConfigError, match="no figure 'heat'"):
        figure_for(lens, kind="heat")
    with pytest.raises(ConfigError, match="no figure is registered for int"):
        figure_for(3)


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_figure(LogitLensResult, "lens", "again")(lambda result: go.Figure())


# --- comparison figures -----------------------------------------------------------------------

COMPARISON = {
    "estimators": ["ed_kl", "ed_overlap"],
    "runs": [
        {"path": "a", "label": "a", "model": "base", "task": "addition", "n_layers": 4,
         "n_params": 1000, "difficulty": 2, "accuracy": 0.9,
         "depth_score": {"value": 1.0, "ci": [0.5, 1.5], "n_layers": 4},
         "estimates": {"ed_kl": {"layer": 2, "ratio": 0.75, "ci": [0.5, 1.0]}}},
        {"path": "b", "label": "b", "model": "trained", "task": "addition", "n_layers": 4,
         "n_params": 1000, "difficulty": 2, "accuracy": 0.95,
         "estimates": {"ed_kl": {"layer": 3, "ratio": 1.0, "ci": [0.75, 1.0]}}},
    ],
    "scale": [  # one model family: a scale line joins them
        {"model": "big", "family": "toy", "n_layers": 8, "n_params": 9000, "task": "addition",
         "estimator": "ed_kl", "layer": 5, "ratio": 0.75, "ci": [0.625, 0.875]},
        {"model": "small", "family": "toy", "n_layers": 4, "n_params": 1000, "task": "addition",
         "estimator": "ed_kl", "layer": 1, "ratio": 0.5, "ci": [0.25, 0.75]},
        {"model": "small", "family": "toy", "n_layers": 4, "n_params": 1000, "task": "addition",
         "estimator": "ed_overlap", "layer": None, "ratio": None, "ci": None},
        {"model": HOSTILE, "family": "toy", "n_layers": 6, "n_params": 5000, "task": "addition",
         "estimator": "ed_overlap", "layer": 5, "ratio": 1.0, "ci": None},
    ],
    "training": [
        {"base": "base", "trained": "trained", "task": "addition", "difficulty": 2,
         "estimator": "ed_kl", "ratio_base": 0.75, "ratio_trained": 1.0, "diff": 0.25,
         "diff_ci": [0.0, 0.5]},
    ],
    "difficulty": [
        {"model": "small", "task": "addition", "estimator": "ed_kl", "levels": [1, 2, 3],
         "ratios": [0.25, 0.5, None], "cis": [[0.25, 0.5], None, None], "rho": 0.8,
         "rho_ci": [0.2, 1.0]},
    ],
}


def test_scale_figure():
    fig = scale_figure(COMPARISON)
    traces = {t.name: t for t in fig.data}
    kl = traces["ed_kl"]
    # the true depths (in the hover), sorted; drawn slightly apart so equal lines stay visible
    assert [c[3] for c in kl.customdata] == [4, 8] and list(kl.y) == [0.5, 0.75]
    overlap = traces["ed_overlap"]  # the undefined row is left out
    assert [c[3] for c in overlap.customdata] == [6] and list(overlap.y) == [1.0]
    shift = [x - c[3] for t in (kl, overlap) for x, c in zip(t.x, t.customdata)]
    assert shift == pytest.approx([-0.2, -0.2, 0.2])  # a fifth of the smallest gap (2 blocks)
    assert kl.marker.symbol != overlap.marker.symbol and kl.line.dash != overlap.line.dash
    assert list(kl.error_y.array) == pytest.approx([0.25, 0.125])
    assert list(kl.error_y.arrayminus) == pytest.approx([0.25, 0.125])
    assert HOSTILE not in str(overlap.customdata)
    # the depth score of run "a": block 1.0 of 0..2 = 50% [25%, 75%]
    score = traces["depth score (% of depth)"]
    assert (list(score.x), list(score.y)) == ([4], [0.5]) and score.xaxis == "x2"
    assert list(score.error_y.array) == [0.25] and list(score.error_y.arrayminus) == [0.25]
    _titled_axes(fig)


def test_training_figure():
    fig = training_figure(COMPARISON)
    base, trained, diff = fig.data
    assert (base.type, trained.type, diff.type) == ("bar", "bar", "scatter")
    assert list(base.y) == [0.75] and list(trained.y) == [1.0] and list(diff.y) == [0.25]
    assert list(base.error_y.arrayminus) == [0.25] and list(base.error_y.array) == [0.25]
    assert list(trained.error_y.arrayminus) == [0.25] and list(trained.error_y.array) == [0.0]
    assert list(diff.error_y.arrayminus) == [0.25] and list(diff.error_y.array) == [0.25]
    _titled_axes(fig)


def test_difficulty_figure():
    fig = difficulty_figure(COMPARISON)
    trace = fig.data[0]
    assert list(trace.x) == [1, 2, 3] and list(trace.y) == [0.25, 0.5, None]  # one line: no offset
    assert list(trace.error_y.array) == [0.25, 0.0, 0.0]  # CI [0.25, 0.5] around 0.25
    assert list(trace.error_y.arrayminus) == [0.0, 0.0, 0.0]
    assert "ρ = 0.80" in trace.name and "ρ = 0.80" in fig.layout.title.text
    _titled_axes(fig)


def test_comparison_figures_skip_empty_sections():
    assert set(comparison_figures(COMPARISON)) == {"scale", "training", "difficulty"}
    assert set(comparison_figures({**COMPARISON, "training": [], "difficulty": []})) == {"scale"}
    fig = difficulty_figure({"difficulty": [{**COMPARISON["difficulty"][0], "rho": None}]})
    assert "ρ undefined" in fig.data[0].name
