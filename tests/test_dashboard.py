"""The dashboard: one self-contained, offline HTML file with escaped content, built from real
run directories (two tiny studies, built once per test session and shared with
test_browser.py through :func:`study_runs`)."""

from __future__ import annotations

import copy
import html
import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from plotly.offline import get_plotlyjs

from effective_depth.errors import ConfigError, ResultsError
from effective_depth.store.results import Run, load_run
from effective_depth.viz.dashboard import build_dashboard_html, run_panels, write_dashboard

#: end to end on models (the fast tier, -m 'not slow', leaves these to the full run)
pytestmark = pytest.mark.slow

HOSTILE_TOKEN = "</script><script>alert(1)</script>"
HOSTILE_MODEL = '"><img src=x onerror=alert(1)>'

#: a dashboard page beside plotly.js, its figures' data and the template: tables, CSS and JS
MAX_CHROME = 64 * 1024

_RUNS: dict[str, list[Path]] = {}


def study_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two finished runs of one tiny Qwen2 checkpoint (2- and 3-digit addition), built once per
    session: the comparison then has scale and difficulty rows."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _RUNS:
        from effective_depth.study import METRICS, StudyConfig, run_study
        from tests.helpers import save_tiny_checkpoint

        root = tmp_path_factory.mktemp("viz_runs")
        ckpt = save_tiny_checkpoint("qwen2", root / "llama-tiny")
        paths = []
        for digits in (2, 3):
            # the second run skips the two map measurements (the slow part): a partial run
            metrics = METRICS if digits == 2 else METRICS[:4]
            cfg = StudyConfig(model=str(ckpt), task="addition", task_params={"digits": digits},
                              metrics=metrics, n_examples=4, n_boot=50,
                              options={"integrated_gradients": {"steps": 8, "map_examples": 1},
                                       "erasure": {"map_examples": 1},
                                       "skip_effects": {"mode": "current"}})
            study = run_study(cfg, root / f"run-d{digits}", progress=False, dashboard=digits == 2)
            paths.append(study.path)
        _RUNS[key] = paths
    return _RUNS[key]


def hostile(run: Run) -> Run:
    """A copy of ``run`` whose model name, prompt, token strings and a reason are hostile."""
    run = copy.copy(run)
    run.results, run.inputs, run.config = (copy.deepcopy(x) for x in (run.results, run.inputs, run.config))
    run.results["model"]["name"] = HOSTILE_MODEL
    run.config["config"]["model"] = HOSTILE_MODEL
    run.inputs["examples"][0]["prompt"] = HOSTILE_TOKEN
    for name in ("erasure", "integrated_gradients"):
        run.results["metrics"][name]["curves"]["str_tokens"][0][2] = HOSTILE_TOKEN
    run.results["depth"]["ed_cos"].update(layer=None, ratio=None, ci=None, reason=HOSTILE_TOKEN)
    run.refresh()  # the typed records see the changes made inside the mappings
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Run]:
    return [load_run(p) for p in study_runs(tmp_path_factory)]


@pytest.fixture(scope="module")
def multi_html(runs) -> str:
    """Two runs, the first with hostile strings everywhere."""
    return build_dashboard_html([hostile(runs[0]), runs[1]])


@pytest.fixture(scope="module")
def plain_html(runs) -> str:
    return build_dashboard_html(runs)


def _without_plotlyjs(page: str) -> str:
    js = get_plotlyjs()
    assert page.count(js) == 1, "plotly.js must be embedded exactly once"
    return page.replace(js, "")


_JSON_BLOCK = re.compile(r'<script type="application/json" id="([^"]+)-json">(.*?)</script>', re.S)


def _figure_specs(page: str) -> dict[str, dict]:
    return {div: json.loads(body) for div, body in _JSON_BLOCK.findall(page)}


def _figure_specs_raw(page: str) -> list[str]:
    return [body for _, body in _JSON_BLOCK.findall(page)]


def test_study_writes_its_dashboard(runs):
    run = runs[0]  # run_study ends by writing the run's own dashboard
    page = (run.path / "dashboard.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'id="run-selector"' not in page
    assert html.escape(run.label) in page
    # every figure of a full run, listed by hand: the summary, three contribution figures, the
    # lens, two skip-effect figures, behaviour, and one map each for erasure and gradients
    # (map_examples=1); the per-prompt depths, and their agreement when some pair is defined
    kinds = {"ed_summary", "per_prompt", "contributions-relative", "contributions-cosines",
             "contributions-angular", "logit_lens-lens", "tuned_lens-lens", "skip_effects-layer_effect",
             "skip_effects-output_effect", "behaviour-behaviour", "erasure-map-0",
             "integrated_gradients-map-0"}
    assert set(_figure_specs(page)) - {"run-0-agreement"} == {f"run-0-{k}" for k in kinds}


def test_self_contained_offline(multi_html):
    rest = _without_plotlyjs(multi_html)
    external = re.compile(r"<(?:script|link|img|iframe|source|embed)\b[^>]*\b(?:src|href)\s*=\s*"
                          r"[\"']?\s*(?:https?:)?//", re.I)
    assert not external.search(multi_html)
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?https?:", rest, re.I)
    assert not re.search(r"url\(\s*[\"']?https?:|@import", rest, re.I)
    assert "<link" not in rest
    # exactly three executable scripts: plotly.js, the templates holder is JSON, and the page's JS
    assert len(re.findall(r"<script(?![^>]*application/json)", rest)) == 2
    assert "Plotly.newPlot" in rest


def test_hostile_strings_only_escaped(multi_html):
    rest = _without_plotlyjs(multi_html)
    for bad in (HOSTILE_TOKEN, HOSTILE_MODEL, "<img", "alert(1)</script>"):
        assert bad not in rest
    assert html.escape(HOSTILE_MODEL) in rest  # tables, selector, headings
    assert html.escape(HOSTILE_TOKEN) in rest  # the example prompt and the ed_cos reason
    assert "\\u0026lt;script\\u0026gt;" in rest  # in the figure JSON: HTML- then JSON-escaped
    for body in _figure_specs_raw(multi_html):
        assert "<" not in body and ">" not in body and "&" not in body
    specs = _figure_specs(multi_html)
    erasure = specs["run-0-erasure-map-0"]
    tick = erasure["layout"]["xaxis"]["ticktext"][2]
    assert tick == html.escape(HOSTILE_TOKEN, quote=False)  # plotly shows it as text


def test_figure_json_matches_results(runs, plain_html):
    specs = _figure_specs(plain_html)
    run = runs[1]
    skips = run.metric("skip_effects")
    heat = specs["run-1-skip_effects-layer_effect"]["data"][0]
    # the hover holds the true values of the cells i > s (the others are not measured)
    assert heat["customdata"] == [[v if i > s else None for i, v in enumerate(row)]
                                  for s, row in enumerate(skips.layer_effect.tolist())]
    lens = run.metric("logit_lens")
    lens_spec = specs["run-1-logit_lens-lens"]
    kl = next(t for t in lens_spec["data"] if t["name"] == "KL(lens ‖ output)" and t["mode"] == "lines+markers")
    assert kl["y"] == lens.kl.tolist()
    # the chance level of the top-k overlap, k / V, from the run's model
    chance = lens.meta["k"] / run.results["model"]["d_vocab"]
    assert any(sh["y0"] == sh["y1"] == chance for sh in lens_spec["layout"]["shapes"])
    assert "run-1-erasure-map-0" not in specs  # run 1 did not measure erasure
    erasure = runs[0].metric("erasure").maps[0]
    z = specs["run-0-erasure-map-0"]["data"][0]["z"]
    assert all(row[0] is None for row in z)  # the BOS column (NaN) is blank
    assert [row[1:] for row in z] == erasure[:, 1:].tolist()
    # the template is stored once and referenced by every figure
    templates = re.search(r'<script type="application/json" id="plotly-templates">(.*?)</script>',
                          plain_html, re.S)
    assert {s["template"] for s in specs.values()} == set(json.loads(templates.group(1)))
    assert all("template" not in s["layout"] for s in specs.values())


def test_every_panel_of_a_run(runs):
    keys = [p.key for p in run_panels(runs[0]) if p.key != "agreement"]
    assert keys == ["ed_summary", "per_prompt", "contributions-relative", "contributions-cosines",
                    "contributions-angular", "logit_lens-lens", "tuned_lens-lens", "skip_effects-layer_effect",
                    "skip_effects-output_effect", "behaviour-behaviour", "erasure-map-0",
                    "integrated_gradients-map-0"]


def test_selector_and_comparison(runs, plain_html):
    select = re.search(r'<select id="run-selector">(.*?)</select>', plain_html, re.S)
    assert select is not None
    options = re.findall(r'<option value="(run-\d+)">', select.group(1))
    assert options == ["run-0", "run-1"]
    assert len(re.findall(r'<section class="run" id="run-\d+"', plain_html)) == 2
    assert 'id="run-1" data-label' in plain_html and " hidden>" in plain_html
    specs = _figure_specs(plain_html)
    assert "comparison-compare-difficulty" in specs
    # both runs use one model depth: a scale plot would have a single x value, so there is none
    assert "comparison-compare-scale" not in specs
    difficulty = specs["comparison-compare-difficulty"]["data"]
    assert {tuple(t["customdata"]) for t in difficulty} == {(2, 3)}  # the true levels
    # one line per estimator, each drawn a little apart (equal ratios would hide each other)
    assert len({t["x"][0] for t in difficulty}) == len(difficulty)
    assert all(abs(t["x"][0] - 2) <= 0.1 + 1e-9 for t in difficulty)


def test_both_skip_modes_side_by_side(runs):
    from effective_depth.viz.dashboard import skip_mode_panels

    current = runs[1]
    future = copy.copy(current)
    future.results, future.config = copy.deepcopy(current.results), copy.deepcopy(current.config)
    future.config["config"]["skip_mode"] = "future"
    future.results["metrics"]["skip_effects"]["meta"]["mode"] = "future"
    future.refresh()
    assert skip_mode_panels([runs[0], current]) == []  # one mode per (model, task): no panel
    (panel,) = skip_mode_panels([runs[0], future, current])
    assert panel.note == ("all positions (current effects): run 3 | "
                          "future positions only (future effects): run 2")
    left, right = panel.figure.data
    assert left.customdata == right.customdata  # the same tensors, measured "twice" here
    page = build_dashboard_html([future, current])
    assert 'id="comparison-skip-modes-0"' in page


def test_cli_dashboard_takes_what_compare_takes(runs, tmp_path):
    """A sweep's output directory, a shell glob's mix of files and runs, and a run named twice:
    every run once, and a one-line note for each non-run."""
    from effective_depth.viz.cli_dashboard import dashboard_cmd

    root = runs[0].path.parent  # holds both runs, the checkpoint dir and nothing else run-like
    out = tmp_path / "sweep.html"
    result = CliRunner().invoke(dashboard_cmd, [str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 run(s)" in result.output
    assert "note: skipped" in result.output and "llama-tiny" in result.output
    page = out.read_text()
    assert page.count('<section class="run"') == 2
    glob_mix = [str(runs[0].path / "dashboard.html"), str(runs[0].path), str(root)]
    mixed = CliRunner().invoke(dashboard_cmd, [*glob_mix, "--out", str(out)])
    assert mixed.exit_code == 0, mixed.output
    assert "2 run(s)" in mixed.output  # run-d2 named twice, loaded once
    assert "dashboard.html: a file, not a run directory" in mixed.output
    assert "Traceback" not in mixed.output + result.output


def test_ed_table(runs):
    page = build_dashboard_html([runs[0]])
    depth = runs[0].results["depth"]
    table = re.search(r'<table class="ed">(.*?)</table>', page, re.S).group(1)
    for name, est in depth.items():
        if name == "depth_score":
            continue
        assert f"<td>{name}</td>" in table
        if est["reason"]:
            assert html.escape(est["reason"]) in table
        if est["ci"]:
            assert f"[{est['ci'][0]:.3f}, {est['ci'][1]:.3f}]" in table
    assert "95% CI" in table


def test_the_page_weighs_plotly_once_the_figures_and_one_template(multi_html, plain_html):
    """What a dashboard is made of: plotly.js once, each figure's own data once, the plotly
    template once for all figures (none inline), and a page around them (tables, CSS, JS) that
    does not grow with the figures: two pages of the same runs differ in their chrome only by
    the escaped strings, never by a figure's worth of data."""
    sizes = []
    for page in (multi_html, plain_html):
        rest = _without_plotlyjs(page)
        specs = _figure_specs(rest)
        raw_templates = re.search(r'id="plotly-templates">(.*?)</script>', rest, re.S).group(1)
        templates = json.loads(raw_templates)
        assert len(templates) == 1 and {s["template"] for s in specs.values()} == set(templates)
        assert all("template" not in s["layout"] for s in specs.values())
        chrome = len(rest) - sum(map(len, _figure_specs_raw(rest))) - len(raw_templates)
        sizes.append(chrome)
        assert 0 < chrome < MAX_CHROME, chrome
    assert abs(sizes[0] - sizes[1]) < 4 * 1024  # only the hostile strings differ


def test_given_comparison_is_used(runs):
    comparison = {"scale": [{"model": "m", "family": "f", "n_layers": 7, "n_params": 1,
                             "task": "t", "estimator": "ed_kl", "layer": 3, "ratio": 4 / 7,
                             "ci": None},
                            {"model": "m2", "family": "f", "n_layers": 5, "n_params": 1,
                             "task": "t", "estimator": "ed_kl", "layer": 1, "ratio": 2 / 5,
                             "ci": None}],
                  "training": [], "difficulty": []}
    specs = _figure_specs(build_dashboard_html(runs, comparison))
    assert specs["comparison-compare-scale"]["data"][0]["x"] == [5, 7]
    assert "comparison-compare-difficulty" not in specs


def test_write_dashboard_and_errors(runs, tmp_path):
    out = write_dashboard([runs[0].path], tmp_path / "d.html")
    assert out == tmp_path / "d.html" and out.read_text().endswith("</html>\n")
    with pytest.raises(ConfigError, match="is a directory"):
        write_dashboard([runs[0].path], tmp_path)
    with pytest.raises(ConfigError, match="at least one run"):
        build_dashboard_html([])
    with pytest.raises(ResultsError, match="does not exist"):
        write_dashboard([tmp_path / "missing"], tmp_path / "x.html")


def test_partial_run(runs):
    """A run that finished only some measurements still gets a dashboard."""
    run = copy.copy(runs[0])
    run.results = {**run.results, "completed": ["logit_lens"], "depth": {}}
    page = build_dashboard_html([run])
    assert set(_figure_specs(page)) == {"run-0-logit_lens-lens"}
    assert "No effective-depth estimates" in page


def test_cli_dashboard(runs, tmp_path, monkeypatch):
    from effective_depth.viz.cli_dashboard import dashboard_cmd

    out = tmp_path / "both.html"
    result = CliRunner().invoke(dashboard_cmd, [str(runs[0].path), str(runs[1].path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "KB" in result.output and out.stat().st_size > len(get_plotlyjs())
    missing = CliRunner().invoke(dashboard_cmd, [str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert "Traceback" not in missing.output
    monkeypatch.setitem(sys.modules, "kaleido", None)  # kaleido not installed
    png = CliRunner().invoke(dashboard_cmd, [str(runs[0].path), "--out", str(tmp_path / "png"),
                                             "--format", "png"])
    assert png.exit_code == 1 and "pip install kaleido" in png.output
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    wrong = CliRunner().invoke(dashboard_cmd, [str(runs[0].path), "--comparison", str(bad),
                                               "--out", str(out)])
    assert wrong.exit_code == 1 and "not a comparison" in wrong.output


def test_export_without_kaleido_says_how_to_install(monkeypatch, runs, tmp_path):
    from effective_depth.viz.export import ExportError, export_runs

    monkeypatch.setitem(sys.modules, "kaleido", None)
    with pytest.raises(ExportError, match="pip install kaleido"):
        export_runs([runs[0]], tmp_path / "img", "svg")
    assert not (tmp_path / "img").exists()  # it failed before writing anything
    # the failure is a configuration mistake a caller can handle as such, also from figures
    from effective_depth.viz.export import export_figures

    with pytest.raises(ConfigError, match="pip install kaleido"):
        export_figures({"x": object()}, tmp_path / "img", "png")
    assert not (tmp_path / "img").exists()


def test_export_with_kaleido(tmp_path):
    """Real static export, where kaleido (and a browser for it) is installed."""
    pytest.importorskip("kaleido")
    from effective_depth.viz.export import export_figures
    from effective_depth.viz.figures import ed_summary_figure

    fig = ed_summary_figure({"ed_kl": {"name": "ed_kl", "layer": 1, "ratio": 0.5, "n_layers": 4,
                                       "ci": [0.25, 0.75]}})
    (path,) = export_figures({"summary": fig}, tmp_path / "img", "svg")
    assert path == tmp_path / "img" / "summary.svg"
    assert "<svg" in path.read_text()[:500]


def _toy_score_spec():
    """A measurement registered here, in a test file, with one score and how it is shown."""
    from effective_depth.metrics.registry import MetricSpec, ScoreSpec

    score = ScoreSpec("toy_score", lambda result, idx: 1.0, title="toy score", source="a test",
                      unit="step", span=lambda L: (1, L + 1),
                      description="a score that only this test registers")
    return MetricSpec(name="toy_measure", result_type=object, run=lambda ctx: None,
                      scores=(score,))


def test_a_registered_score_is_shown_by_every_renderer(runs, capsys):
    """A score registered from a test file reaches the CLI summary, the notebook views, the
    dashboard's run table, the comparison table and the comparison's scale figure, each in
    the one form its ScoreSpec declares: value 4 on a span 1..13 (L = 12) is 25% of it."""
    from effective_depth.cli import _print_summary
    from effective_depth.metrics.registry import registered, score_specs
    from effective_depth.store.compare import compare_runs
    from effective_depth.viz.compare_figures import scale_figure
    from effective_depth.viz.dashboard import summary_table
    from effective_depth.viz.reprs import estimates_html, run_html

    entry = {"value": 4.0, "ci": [3.4, 4.6], "n_boot": 10, "n_layers": 12}
    run = copy.copy(runs[0])
    run.results = {**run.results, "depth": {**run.results["depth"], "toy_score": entry}}
    with registered(_toy_score_spec()):
        assert score_specs()["toy_score"].metric == "toy_measure"
        _print_summary(run.results, "runs/x", 1.0, [])
        out = capsys.readouterr().out
        assert ("toy score (a test): 25.0% of the depth [20.0%, 30.0%] "
                "(step 4.000 [3.400, 4.600] of steps 1..13)") in out
        assert "toy_score" not in out  # not a row of the estimator table
        assert "<td>25.0% [20.0%, 30.0%] of steps 1..13</td>" in summary_table(run)
        assert "<th>toy score (step)</th><td>4</td>" in summary_table(run)
        view = estimates_html({"toy_score": entry})
        assert "toy score (a test)" in view and "25.0% [20.0%, 30.0%] of steps 1..13" in view
        assert "toy score (a test)" in run_html(run)
        comparison = compare_runs([run], n_boot=5)
        assert comparison["runs"][0]["toy_score"] == entry
        traces = {t.name: t for t in scale_figure(comparison).data}
        toy = traces["toy score (% of depth)"]
        assert (list(toy.x), list(toy.y)) == ([12], [pytest.approx(0.25)])
        assert list(toy.error_y.arrayminus) == pytest.approx([0.05])
        assert list(toy.error_y.array) == pytest.approx([0.05])
        # the depth score is rendered by the same declaration, next to it
        assert "depth score (% of depth)" in traces
    # unregistered again: nothing shows it
    _print_summary(run.results, "runs/x", 1.0, [])
    assert "toy score" not in capsys.readouterr().out
    assert "toy score" not in summary_table(run)


def test_depth_score_is_a_share_of_the_depth_everywhere(runs, capsys):
    """One unit in the CLI and the Run table: score / (L − 2), then the block; L = 2 leaves a
    single candidate block and no share."""
    from effective_depth.cli import _print_summary
    from effective_depth.viz.dashboard import summary_table

    results = {"model": {"name": "m", "n_layers": 12}, "task": {"name": "t", "params": {}},
               "depth": {"depth_score": {"value": 2.5, "ci": [2.0, 3.0], "n_layers": 12}}}
    _print_summary(results, "runs/x", 1.0, [])
    out = capsys.readouterr().out
    assert "depth score (Csordás): 25.0% of the depth [20.0%, 30.0%] " \
           "(block 2.500 [2.000, 3.000] of blocks 0..10)" in out
    run = copy.copy(runs[0])
    run.results = {**run.results, "depth": {**run.results["depth"],
                                            "depth_score": results["depth"]["depth_score"]}}
    table = summary_table(run)
    assert "<td>25.0% [20.0%, 30.0%] of blocks 0..10</td>" in table
    assert "<th>depth score CI</th><td>[2.000, 3.000]</td>" in table
    short = {**results, "model": {"name": "m", "n_layers": 2},
             "depth": {"depth_score": {"value": 0.0, "ci": [0.0, 0.0], "n_layers": 2}}}
    _print_summary(short, "runs/x", 1.0, [])  # L = 2: a single candidate block, no share
    assert "depth score (Csordás): block 0.000 [0.000, 0.000] of blocks 0..0" in capsys.readouterr().out


def test_the_summary_names_the_compute_policy(capsys):
    """The printed numbers say which policy computed them, and why auto chose it; a run from
    before policies were recorded prints no such line."""
    from effective_depth.cli import _print_summary

    source = {"precision": {"policy": "bf16-mixed", "requested": "auto",
                            "reason": "CPU flags: avx512_bf16"}}
    results = {"model": {"name": "m", "n_layers": 4, "source": source},
               "task": {"name": "t", "params": {}}, "depth": {}}
    _print_summary(results, "runs/x", 1.0, [])
    assert "compute policy: bf16-mixed (auto: CPU flags: avx512_bf16)" in capsys.readouterr().out
    source["precision"] = {"policy": "fp32", "requested": "fp32", "reason": ""}
    _print_summary(results, "runs/x", 1.0, [])
    out = capsys.readouterr().out
    assert "compute policy: fp32\n" in out and "(fp32" not in out
    del source["precision"]
    _print_summary(results, "runs/x", 1.0, [])
    assert "compute policy" not in capsys.readouterr().out
