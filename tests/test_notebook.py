"""Notebooks: examples/notebook.ipynb executed in a real kernel (nbclient) shows HTML tables for
measurement results, a study, a run, an estimate and the tidy frames, with no "IProgress"
warning; the views escape what they show; measurement functions take strings and token tensors;
the study and sweep progress labels."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import effective_depth as ed
from effective_depth.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    return ed.load_model("zoo/add-2l")


def _outputs(cell):
    html = "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.outputs)
    return html, text


@pytest.mark.slow
def test_example_notebook_executes_and_shows_tables(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "examples" / "notebook.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the example notebook without outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = {c.source.splitlines()[-1]: c for c in nb.cells if c.cell_type == "code"}
    everything = ""
    for cell in code.values():
        html, text = _outputs(cell)
        everything += html + text
        assert not any(o.get("output_type") == "error" for o in cell.outputs), text
    lens_html, _ = _outputs(code["lens"])
    assert "<table" in lens_html and "LogitLensResult (logit_lens): 3 prompts" in lens_html
    assert re.search(r">kl<.*>overlap<", lens_html)
    contrib_html, _ = _outputs(code["contributions"])
    assert "<table" in contrib_html and ">rel_attn<" in contrib_html
    study_html, _ = _outputs(code["study"])
    assert "Effective depth" in study_html and ">ed_skip<" in study_html
    assert "computed: contributions, logit_lens, skip_effects, behaviour" in study_html
    est_html, _ = _outputs(code['run.estimates()["ed_skip"]'])
    assert "<table" in est_html and ">ed_skip<" in est_html
    frame_html, _ = _outputs(code['curves[curves.measurement == "logit_lens"]'])
    assert "<table" in frame_html and "ci_lo" in frame_html
    assert "step 3/5: skip effects" in everything  # the study's progress, as text
    assert "IProgress" not in everything
    assert (tmp_path / "runs" / "notebook" / "results.json").is_file()


@pytest.mark.slow
def test_views_escape_and_stay_compact(model, tmp_path):
    from effective_depth.viz.reprs import result_html

    lens = ed.logit_lens(model, ["1+2=", "3+4="])
    html = lens._repr_html_()
    assert html.count("<tr>") == 3  # header, kl, overlap
    for value in lens.kl.tolist():
        assert f">{value:.4g}<" in html
    lens.meta["note"] = "<script>alert(1)</script>"
    assert "<script>" not in result_html(lens) and "&lt;script&gt;" in result_html(lens)
    est = ed.Estimate("ed_x", 4, None, reason="never <crosses>")
    assert "never &lt;crosses&gt;" in est._repr_html_()
    cfg = ed.StudyConfig(model="zoo/add-2l", metrics=("logit_lens",), n_examples=3, n_boot=10)
    study = ed.run_study(cfg, tmp_path / "r", progress=False, dashboard=False)
    assert len(repr(study)) < 300 and len(repr(ed.load_run(study.path))) < 300
    html = study._repr_html_()
    assert "computed: logit_lens" in html and ">ed_kl<" in html and ">ed_overlap<" in html


@pytest.mark.slow
def test_measurements_take_strings_lists_and_token_tensors(model):
    batch = ed.encode_batch(model.tokenizer, [ed.Example("12+34=", ""), ed.Example("5+6=", "")])
    want = ed.logit_lens(model, batch)
    got = ed.logit_lens(model, ["12+34=", "5+6="])
    torch.testing.assert_close(got.kl_sums, want.kl_sums)
    one = ed.contributions(model, "12+34=")
    torch.testing.assert_close(one.sums["rel_block"], ed.contributions(model, batch.select([0])).sums["rel_block"])
    ids = batch.tokens[0, : int(batch.lengths[0])]
    from_tensor = ed.logit_lens(model, ids)  # a [pos] tensor: one prompt, read as given
    torch.testing.assert_close(from_tensor.kl_sums, want.kl_sums[:1])
    for bad, said in ((3, "got int"), ([], "got an empty list"), ([1, 2], "got a list of int"),
                      (torch.zeros(4), "integer token ids"), (torch.tensor([10**6]), "token ids must lie")):
        with pytest.raises(ConfigError, match=said) as info:
            ed.logit_lens(model, bad)
        assert "logit_lens" in str(info.value)
    with pytest.raises(ConfigError, match="needs an answer"):
        ed.behaviour(model, "1+1=", order=[0, 1])


def test_progress_without_ipywidgets_is_the_text_bar(monkeypatch):
    import importlib.util
    import sys
    import types

    from tqdm.std import tqdm as std_tqdm

    from effective_depth import progress

    class Shell:
        config = {"IPKernelApp": {}}

    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: Shell()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    assert progress.tqdm_class() is std_tqdm


@pytest.mark.slow
def test_study_steps_name_each_measurement(tmp_path):
    labels: list[str] = []
    cfg = ed.StudyConfig(model="zoo/add-2l", metrics=("contributions", "logit_lens"),
                         n_examples=3, n_boot=10)
    ed.run_study(cfg, tmp_path / "r", progress=False, dashboard=False, on_step=labels.append)
    assert labels == ["loading zoo/add-2l", "step 1/3: contributions", "step 2/3: logit lens",
                      "step 3/3: estimates (10 bootstrap resamples)"]
    labels.clear()
    ed.run_study(cfg, tmp_path / "r", progress=False, dashboard=False, on_step=labels.append)
    assert labels[1:3] == ["step 1/3: contributions (reused)", "step 2/3: logit lens (reused)"]


def test_sweep_eta_uses_the_finished_computed_cells():
    from effective_depth.study.grid import CellClock, GridCell

    cell = GridCell(ed.StudyConfig(model="zoo/add-2l"), Path("runs/g/zoo_add-2l__addition"))
    clock = CellClock(6)
    assert clock.label(1, cell) == "cell 1/6: zoo/add-2l -> zoo_add-2l__addition"
    clock.finished(0.2, computed=False)  # reused: in moments, not counted
    clock.finished(120.0, computed=True)
    clock.finished(148.0, computed=True)
    assert clock.per_cell() == pytest.approx(134.0)
    assert clock.eta() == pytest.approx(3 * 134.0)
    assert clock.label(4, cell) == ("cell 4/6: zoo/add-2l -> zoo_add-2l__addition | "
                                    "2.2 min/cell, ETA 6.7 min")


@pytest.mark.slow
def test_sweep_bar_labels_name_the_running_cell(tmp_path):
    from effective_depth.study.grid import _run_local, grid_from_dict

    grid = grid_from_dict({"out": str(tmp_path), "models": ["zoo/add-2l"], "compare": False,
                           "base": {"n_examples": 3, "n_boot": 5, "metrics": ["logit_lens"]},
                           "tasks": [{"name": None, "levels": {"digits": [1, 2]}}]})
    labels: list[str] = []
    summaries = _run_local(grid, False, None, labels.append)
    assert [s["computed"] for s in summaries] == [["logit_lens"], ["logit_lens"]]
    assert labels[0] == f"cell 1/2: zoo/add-2l -> {grid.cells[0].out.name}"
    assert labels[1].startswith(f"cell 2/2: zoo/add-2l -> {grid.cells[1].out.name} | ")
    assert "/cell, ETA" in labels[1]
