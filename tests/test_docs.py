"""The code blocks of the guides run as written (on the bundled zoo, offline)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _blocks(name):
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hook_scripting.md"])
def test_guide_code_runs(name, capsys):
    blocks = _blocks(name)
    assert len(blocks) >= 5
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, f"{name}", "exec"), namespace)  # noqa: S102 - our own documentation
    out = capsys.readouterr().out
    assert "hooks vs resumed" in out
    # the slow hooked forward and the fast sweep agree
    assert namespace["fast"].item() == pytest.approx(namespace["slow"].item(), abs=1e-5)


def test_docs_are_self_contained_and_name_real_tasks():
    from effective_depth.tasks import list_tasks

    root = DOCS.parent
    for path in [root / "README.md", *DOCS.glob("*.md")]:
        assert "METHODS.md" not in path.read_text(), f"{path.name} cites METHODS.md, which users never see"
    line = next(x for x in (root / "README.md").read_text().splitlines()
                if x.startswith("effective-depth tasks"))
    named = [w.strip(" .,") for w in line.split("#", 1)[1].split(",")]
    assert all(w in list_tasks() for w in named if w and w != "..."), named
    methods = (DOCS / "methods.md").read_text()
    for section in range(1, 9):
        assert f"## {section}." in methods
    for code in ("overlap_at_chance", "few_cuts", "few_prompts", "no_bootstrap",
                 "erasure_reference", "no_answers", "inputs_changed"):
        assert code in methods and code in (DOCS / "failure_modes.md").read_text()


@pytest.mark.slow
def test_extending_guide_measurement_reaches_every_consumer(tmp_path, monkeypatch, capsys):
    from effective_depth.metrics.registry import metric_names, unregister_metric

    monkeypatch.chdir(tmp_path)
    blocks = _blocks("extending.md")
    assert len(blocks) == 2
    namespace: dict = {}
    try:
        for code in blocks:
            # dont_inherit: the guide runs as a user's script would, without this file's
            # ``from __future__ import annotations``
            exec(compile(code, "extending.md", "exec", dont_inherit=True), namespace)  # noqa: S102
        assert "norm_growth" in metric_names()
        stored = namespace["result"].results
        growth = stored["metrics"]["norm_growth"]["curves"]["growth"]
        assert len(growth) == 2 and all(g > 0 for g in growth)
        layer = stored["depth"]["ed_growth"]["layer"]
        expected = max((i for i, g in enumerate(growth) if g > 1.05), default=None)
        assert layer == expected
        # its cost model reaches the planner: one clean pass, 2 blocks x (5 + 7) tokens
        from types import SimpleNamespace

        from effective_depth.study import StudyConfig
        from effective_depth.study.planner import count_work

        cfg = SimpleNamespace(n_layers=2, d_model=8, n_heads=2, d_head=4, d_vocab=10, d_mlp=32)
        planned = count_work(cfg, [5, 7], [3, 4], [[], []],
                             StudyConfig(metrics=("norm_growth",), batch_size=1))
        assert planned["norm_growth"].block_tokens == 24 and not planned["norm_growth"].note
        _check_every_consumer(namespace, tmp_path)
    finally:
        unregister_metric("norm_growth")


def _growth_centre(growth):
    """The guide's score, recomputed from a stored curve (a list), independently of its code."""
    excess = [max(g - 1.0, 0.0) for g in growth]
    return sum(i * e for i, e in enumerate(excess)) / sum(excess) if sum(excess) else None


def _check_every_consumer(namespace, tmp_path):
    """The guide's measurement, with its option and its score, reaches the CLI (help, run,
    plan, compare), the store, the estimates, the dashboard and the comparison, though no file
    of the package was touched."""
    import json

    from click.testing import CliRunner

    from effective_depth.cli import main
    from effective_depth.store.compare import compare_runs
    from effective_depth.store.results import load_run
    from effective_depth.viz.compare_figures import scale_figure

    runner = CliRunner()
    helped = runner.invoke(main, ["run", "--help"], terminal_width=200).output
    assert "norm_growth.floor" in helped and "smallest norm divided by" in helped
    bad = runner.invoke(main, ["run", "--model", "zoo/add-2l", "--metrics", "norm_growth",
                               "--set", "norm_growth.floor=-1", "-o", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "norm_growth.floor must be > 0, got -1.0" in bad.output
    planned = runner.invoke(main, ["plan", "--model", "zoo/add-2l", "--metrics", "norm_growth",
                                   "-n", "8"], terminal_width=200)
    assert planned.exit_code == 0, planned.output
    row = next(x for x in planned.output.splitlines() if "norm_growth" in x)
    assert "not modelled" not in row
    runs = []
    for digits in (1, 2):
        out = tmp_path / f"digits{digits}"
        res = runner.invoke(main, [
            "run", "--model", "zoo/add-2l", "--metrics", "norm_growth", "-n", "12",
            "--param", f"digits={digits}", "--n-boot", "60", "--set", "norm_growth.floor=1e-4",
            "-o", str(out), "-q"], terminal_width=200)
        assert res.exit_code == 0, res.output
        config = json.loads((out / "config.json").read_text())
        assert config["config"]["options"]["norm_growth"] == {"floor": 1e-4}
        run = load_run(out)  # the store rebuilds the result from tensors + meta
        growth = run.results["metrics"]["norm_growth"]["curves"]["growth"]
        assert run.metric("norm_growth").growth_of().tolist() == pytest.approx(growth)
        # the estimates: the estimator's block and the score, recomputed from the stored curve
        depth = run.results["depth"]
        expected = max((i for i, g in enumerate(growth) if g > 1.05), default=None)
        assert depth["ed_growth"]["layer"] == expected
        centre = depth["growth_centre"]
        assert centre["value"] == pytest.approx(_growth_centre(growth), abs=1e-6)
        assert centre["n_boot"] == 60 and centre["ci"][0] <= centre["value"] <= centre["ci"][1]
        assert len(run.results["per_prompt"]["ed_growth"]["layers"]) == 12
        # the CLI summary renders the score through its declaration: a share of blocks 0..1
        share = 100 * centre["value"]
        assert f"growth centre (guide): {share:.1f}% of the depth" in res.output
        assert f"(block {centre['value']:.3f}" in res.output and "ed_growth" in res.output
        html = (out / "dashboard.html").read_text()
        assert "growth centre" in html and "ed_growth" in html
        runs.append(run)
    # the comparison: a difficulty trend row for the estimator and for the score, and the score
    # on the scale figure
    comparison = compare_runs(runs, n_boot=20)
    trends = {r["estimator"]: r for r in comparison["difficulty"]}
    assert trends["ed_growth"]["levels"] == [1, 2]
    assert trends["growth_centre"]["ratios"] == [r.results["depth"]["growth_centre"]["value"]
                                                  for r in runs]
    traces = {t.name for t in scale_figure(comparison).data}
    assert "growth centre (% of depth)" in traces
    compared = runner.invoke(main, ["compare", *(str(r.path) for r in runs), "--n-boot", "20"],
                             terminal_width=200)
    assert compared.exit_code == 0 and "growth_centre" in compared.output
