"""The dashboard in a real browser: Debian's Chromium driven by Playwright opens a two-run
dashboard from disk, with no network, and checks that every figure renders, hover labels
appear, the run selector switches runs, hostile strings show as text and never run, and nothing
is logged to the console; and that the figures are readable as drawn: the contributions on a log
axis, the skip heatmap's colourbar spanning the data (or labelling its clip), CI bands drawn,
legend entries visible and apart, and no two tick labels of the early-exit axis overlapping (for
the run's figure and for 12- and 40-block models in a dashboard-sized panel).

Needs ``pip install playwright`` and Debian's ``chromium`` package (``apt-get install -y
chromium``); never ``playwright install``. Without them the test is skipped, unless
``EFFECTIVE_DEPTH_REQUIRE_BROWSER=1`` (set in CI), which turns the skip into a failure.
``EFFECTIVE_DEPTH_SCREENSHOT=path.png`` keeps a copy of the screenshot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from effective_depth.metrics import Behaviour
from effective_depth.store.results import load_run
from effective_depth.viz import figure_for
from effective_depth.viz.dashboard import write_dashboard
from tests.test_dashboard import HOSTILE_MODEL, HOSTILE_TOKEN, hostile, study_runs

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("EFFECTIVE_DEPTH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
INSTALL = ("install Debian's chromium package (apt-get install -y chromium) and "
           "`pip install playwright` (not `playwright install`)")


def _unavailable(reason: str) -> None:
    if os.environ.get("EFFECTIVE_DEPTH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; EFFECTIVE_DEPTH_REQUIRE_BROWSER=1 requires the browser test: {INSTALL}")
    pytest.skip(f"{reason}: {INSTALL}")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _unavailable(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Error as exc:
            _unavailable(f"Chromium at {CHROMIUM} does not start ({str(exc).splitlines()[0]})")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory) -> Path:
    from effective_depth.store.compare import compare_runs

    a, b = (load_run(p) for p in study_runs(tmp_path_factory))
    # the comparison of the genuine runs (one model, two difficulty levels) gives a figure
    comparison = compare_runs([a, b], n_boot=50)
    return write_dashboard([hostile(a), b], tmp_path_factory.mktemp("browser") / "dashboard.html",
                           comparison=comparison)


def _figure_ids(page, root: str) -> list[str]:
    return page.eval_on_selector_all(f"{root} div.figure", "divs => divs.map(d => d.id)")


def _assert_rendered(page, root: str) -> None:
    ids = _figure_ids(page, root)
    assert ids, f"no figures in {root}"
    for div in ids:
        page.wait_for_selector(f"#{div} svg.main-svg", state="attached", timeout=15_000)


def test_dashboard_in_chromium(browser, dashboard, tmp_path):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))

    page.goto(dashboard.as_uri())
    _assert_rendered(page, "#comparison")
    _assert_rendered(page, "#run-0")
    assert page.is_visible("#run-0") and not page.is_visible("#run-1")

    # hostile strings are shown as text, never executed
    assert page.inner_text("#run-0 table.summary td") == HOSTILE_MODEL
    ticks = page.eval_on_selector_all("#run-0-erasure-map-0 .xtick text",
                                      "ts => ts.map(t => t.textContent)")
    assert HOSTILE_TOKEN in ticks
    assert page.locator("img").count() == 0

    # hovering the skip-effect heatmap shows a hover label
    heat = "#run-0-skip_effects-layer_effect"
    drag = page.locator(f"{heat} .nsewdrag").first
    drag.scroll_into_view_if_needed()
    box = drag.bounding_box()
    assert box is not None
    # the top-right cell: skipped block 0, affected block 2 (L = 3, the y axis runs downwards)
    page.mouse.move(box["x"] + box["width"] * 0.85, box["y"] + box["height"] * 0.15, steps=5)
    page.wait_for_selector(f"{heat} .hoverlayer .hovertext", timeout=5_000)
    label = page.text_content(f"{heat} .hoverlayer .hovertext") or ""
    assert "skipped block 0" in label and "affected block 2" in label

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("EFFECTIVE_DEPTH_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["EFFECTIVE_DEPTH_SCREENSHOT"])

    # the selector switches runs, and the second run's figures are drawn when it is shown
    options = page.eval_on_selector_all("#run-selector option", "os => os.map(o => o.value)")
    assert options == ["run-0", "run-1"]
    page.select_option("#run-selector", "run-1")
    assert page.is_visible("#run-1") and not page.is_visible("#run-0")
    _assert_rendered(page, "#run-1")
    page.select_option("#run-selector", "run-0")
    assert page.is_visible("#run-0")

    assert problems == []
    assert dialogs == []
    offline = ("file:", "data:", "blob:", "about:")
    assert [u for u in requests if not u.startswith(offline)] == []
    page.close()


# --- readability, measured on the drawn page ----------------------------------------------------

#: the boxes of visible text elements matching a selector inside a figure div
_BOXES = """(root, sel) => Array.from(root.querySelectorAll(sel))
  .filter(e => e.textContent.trim() && getComputedStyle(e).display !== 'none')
  .map(e => { const b = e.getBoundingClientRect();
              return {text: e.textContent, x: b.x, y: b.y, w: b.width, h: b.height}; })
  .filter(b => b.w > 0 && b.h > 0)"""


def _overlaps(boxes: list[dict]) -> list[tuple[str, str]]:
    """Pairs of boxes that overlap by more than a pixel in both directions."""
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            dx = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            dy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            if dx > 1 and dy > 1:
                out.append((a["text"], b["text"]))
    return out


def _tick_boxes(page, div: str, axis: str) -> list[dict]:
    """Tick labels of every ``axis`` ("x" or "y") of a figure's subplots (x, x2, ...)."""
    sel = f"g[class^={axis}][class$=tick] text"
    return page.eval_on_selector(f"#{div}", f"r => ({_BOXES})(r, '{sel}')")


def _assert_readable_axis_and_legend(page, div: str) -> None:
    for axis in ("x", "y"):
        boxes = _tick_boxes(page, div, axis)
        assert boxes, f"{div}: no {axis} tick labels drawn"
        assert _overlaps(boxes) == [], f"{div}: overlapping {axis} tick labels"
    legend = page.eval_on_selector(f"#{div}", f"r => ({_BOXES})(r, '.legend .traces text')")
    assert legend, f"{div}: no legend entries"
    assert _overlaps(legend) == [], f"{div}: legend entries overlap"
    frame = page.eval_on_selector(f"#{div}", "d => { const b = d.getBoundingClientRect(); "
                                             "return {x: b.x, y: b.y, w: b.width, h: b.height}; }")
    for entry in legend:  # every entry inside the figure, not cut off
        assert frame["x"] <= entry["x"] and entry["x"] + entry["w"] <= frame["x"] + frame["w"] + 1
        assert frame["y"] <= entry["y"] and entry["y"] + entry["h"] <= frame["y"] + frame["h"] + 1


def _bands(page, div: str) -> int:
    """Filled CI bands drawn (plotly draws a fill as a path.js-fill with a non-empty outline)."""
    return page.eval_on_selector(
        f"#{div}", "d => Array.from(d.querySelectorAll('path.js-fill'))"
                   ".filter(p => (p.getAttribute('d') || '').length > 10).length")


def test_figures_are_readable_in_chromium(browser, dashboard):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(dashboard.as_uri())
    _assert_rendered(page, "#run-0")

    # relative contributions: a log axis, and a CI band per curve
    rel = "run-0-contributions-relative"
    assert page.eval_on_selector(f"#{rel}", "d => d._fullLayout.yaxis.type") == "log"
    assert _bands(page, rel) == 3
    for div in ("run-0-contributions-cosines", "run-0-logit_lens-lens", "run-0-behaviour-behaviour"):
        assert _bands(page, div) >= 2, f"{div}: no CI bands"

    # the skip heatmap's colourbar spans the data: its ends are the smallest and the largest
    # measured value (log scale), or its top label says where it is clipped
    heat = "run-0-skip_effects-layer_effect"
    trace = page.eval_on_selector(f"#{heat}", "d => ({zmin: d._fullData[0].zmin, "
                                              "zmax: d._fullData[0].zmax, cells: d.data[0].customdata})")
    cells = [v for row in trace["cells"] for v in row if v is not None]
    labels = [b["text"] for b in page.eval_on_selector(
        f"#{heat}", f"r => ({_BOXES})(r, '.colorbar .ytick text, .colorbar .cbaxis text')")]
    if any(label.startswith("≥") for label in labels):
        assert f"max {max(cells):.3g}" in labels[-1]
    else:
        import math

        assert trace["zmin"] == pytest.approx(math.log10(min(v for v in cells if v > 0)))
        assert trace["zmax"] == pytest.approx(math.log10(max(cells)))
        assert labels[0] == f"{min(v for v in cells if v > 0):.2g}"
        assert labels[-1] == f"{max(cells):.2g}"

    # every run figure: tick labels apart, legend entries visible and apart
    for div in ("run-0-behaviour-behaviour", "run-0-logit_lens-lens", rel,
                "run-0-skip_effects-output_effect"):
        _assert_readable_axis_and_legend(page, div)
    # the comparison's lines: every legend entry visible
    for div in _figure_ids(page, "#comparison"):
        legend = page.eval_on_selector(f"#{div}", f"r => ({_BOXES})(r, '.legend .traces text')")
        assert legend and _overlaps(legend) == [], div
    page.close()


def _behaviour(L: int) -> Behaviour:
    """Ten prompts of an L-block model that is right from block L // 2 on."""
    exit_ok = torch.zeros(10, L + 1, dtype=torch.bool)
    exit_ok[:, L // 2:] = True
    prune_ok = torch.zeros(10, L + 1, dtype=torch.bool)
    prune_ok[:, : L // 3] = True
    return Behaviour(exit_ok, prune_ok, list(range(L)), meta={"n_layers": L, "n_prompts": 10})


@pytest.mark.parametrize("L", [12, 40])
def test_early_exit_axis_has_no_overprinted_ticks(browser, tmp_path, L):
    """In a dashboard-sized panel (560 px), deep models included: the early-exit figure's tick
    labels never overlap, accuracy reads as a percentage, and the marks are in the legend."""
    from effective_depth.analysis.estimation import Estimate

    estimates = {"ed_task": Estimate("ed_task", L, L // 2 - 1), "ed_prune": Estimate("ed_prune", L, L - 3)}
    fig = figure_for(_behaviour(L), estimates=estimates)
    fig.update_layout(width=560)
    path = tmp_path / "exit.html"
    fig.write_html(path, include_plotlyjs=True, full_html=True, div_id="exit")
    page = browser.new_page(viewport={"width": 700, "height": 800})
    page.goto(path.as_uri())
    page.wait_for_selector("#exit svg.main-svg", state="attached", timeout=15_000)
    _assert_readable_axis_and_legend(page, "exit")
    yticks = [b["text"] for b in _tick_boxes(page, "exit", "y")]
    assert "100%" in yticks and "1" not in yticks
    legend = [b["text"] for b in page.eval_on_selector("#exit", f"r => ({_BOXES})(r, '.legend .traces text')")]
    assert any(t.startswith("ed_task = block") for t in legend) and "full model: 100.0%" in legend
    page.close()


def _token_maps(n_tokens: int):
    """An erasure and an integrated-gradients result of one prompt of ``n_tokens`` tokens of
    mixed lengths (words, digits, spaces, a newline), as a real prompt has."""
    from effective_depth.metrics.erasure import Erasure
    from effective_depth.metrics.integrated_gradients import IntegratedGradients

    words = [" The", " capital", " of", " France", " is", " Paris", ".", "\n", "12", "+",
             " 345", "=", " ", " international", "ization"]
    tokens = [words[i % len(words)] for i in range(n_tokens)]
    L = 6
    grid_ = torch.linspace(0, 1, (L + 1) * n_tokens).reshape(L + 1, n_tokens)
    erasure = Erasure([grid_], [tokens], torch.zeros(L + 1, 8), meta={"n_layers": L})
    ig = IntegratedGradients([grid_[:L] - 0.5], [tokens], torch.tensor([0.7]),
                             meta={"n_layers": L, "n_steps": 8})
    return {"erasure": erasure, "ig": ig}


@pytest.mark.parametrize("n_tokens", [44, 200])
@pytest.mark.parametrize("width", [560, 1100])
def test_token_map_labels_never_overlap(browser, tmp_path, n_tokens, width):
    """The erasure and integrated-gradients maps of a 44- and a 200-token prompt, drawn at a
    dashboard panel's width and a wide one: no two token labels on the x axis overlap, the
    last position (where the answer is read) is labelled, and every token is still in the
    hover data."""
    for kind, result in _token_maps(n_tokens).items():
        fig = figure_for(result)
        fig.update_layout(width=width)
        path = tmp_path / f"{kind}.html"
        fig.write_html(path, include_plotlyjs=True, full_html=True, div_id="map")
        page = browser.new_page(viewport={"width": width + 100, "height": 800})
        page.goto(path.as_uri())
        page.wait_for_selector("#map svg.main-svg", state="attached", timeout=15_000)
        boxes = _tick_boxes(page, "map", "x")
        assert len(boxes) >= min(n_tokens, 10), f"{kind}: only {len(boxes)} token labels"
        assert _overlaps(boxes) == [], f"{kind} at {n_tokens} tokens, {width} px: labels overlap"
        ticks = page.eval_on_selector("#map", "d => d._fullLayout.xaxis.tickvals")
        assert ticks[-1] == n_tokens - 1
        hover = page.eval_on_selector("#map", "d => d.data[0].customdata[0].length")
        assert hover == n_tokens
        page.close()
