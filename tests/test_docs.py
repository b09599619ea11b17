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
def test_extending_guide_registers_and_runs_its_measurement(tmp_path, monkeypatch, capsys):
    from effective_depth.registry import metric_names, unregister_metric

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

        from effective_depth.planner import count_work
        from effective_depth.study import StudyConfig

        cfg = SimpleNamespace(n_layers=2, d_model=8, n_heads=2, d_head=4, d_vocab=10, d_mlp=32)
        planned = count_work(cfg, [5, 7], [3, 4], [[], []],
                             StudyConfig(metrics=("norm_growth",), batch_size=1))
        assert planned["norm_growth"].block_tokens == 24 and not planned["norm_growth"].note
    finally:
        unregister_metric("norm_growth")
