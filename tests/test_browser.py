"""The dashboard in a real browser: Debian's Chromium driven by Playwright opens a two-run
dashboard from disk, with no network, and checks that every figure renders, hover labels
appear, the run selector switches runs, hostile strings show as text and never run, and nothing
is logged to the console.

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

from effective_depth.results import load_run
from effective_depth.viz.dashboard import write_dashboard
from tests.test_dashboard import HOSTILE_MODEL, HOSTILE_TOKEN, hostile, study_runs

pytestmark = pytest.mark.browser

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
    from effective_depth.compare import compare_runs

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
