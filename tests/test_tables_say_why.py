"""Tables that say why: empty cells carry their reason, prompts files give a difficulty table
(or compare says why not), the tidy CSVs hold no lists, export names the task's parameters."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from effective_depth.analysis.estimation import estimate_all
from effective_depth.metrics.logit_lens import LogitLensResult
from effective_depth.store.compare import compare_runs, write_comparison
from effective_depth.store.results import Run
from effective_depth.store.tables import estimate_rows

L = 4


def _lens(overlap):
    o = torch.tensor(overlap)
    return LogitLensResult(torch.zeros_like(o), o, torch.ones(len(overlap)),
                     meta={"n_prompts": len(overlap), "n_layers": L, "k": 1})


def _prompts_run(name: str, overlap, level, metrics=("logit_lens",), skipped=(), warnings=()):
    """A run of a prompts file whose records carry ``difficulty: level`` (None: no field)."""
    lens = _lens(overlap)
    est = estimate_all({"logit_lens": lens}, n_boot=0)
    P = len(overlap)
    results = {
        "model": {"name": "m", "n_layers": L},
        "task": {"name": "prompts", "params": {"path": f"/data/{name}.jsonl"}, "difficulty": None,
                 "n_examples": P},
        "completed": ["logit_lens"], "status": "complete",
        "metrics": {"logit_lens": {"meta": lens.meta, "curves": {}}},
        "depth": {k: v.to_dict() for k, v in est.items()},
        "settings": {"skipped_metrics": list(skipped)}, "warnings": list(warnings),
    }
    tensors = {f"metrics.logit_lens.{k}": v for k, v in lens.tensors().items()}
    inputs = {"examples": [{"prompt": f"q{i}", "meta": {"difficulty": level}} for i in range(P)]}
    return Run(Path(name), {"config": {"model": "m", "n_boot": 100, "metrics": list(metrics)}},
               inputs, results, tensors)


EASY = [[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
HARD = [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]


def test_prompts_files_with_a_difficulty_field_give_the_difficulty_table():
    easy, hard = _prompts_run("easy", EASY, 1), _prompts_run("hard", HARD, 2)
    assert easy.difficulty == 1 and easy.difficulty_from_examples
    out = compare_runs([easy, hard], estimators=["ed_overlap"], n_boot=50)
    (row,) = out["difficulty"]
    assert row["levels"] == [1, 2] and row["task"] == "prompts"
    # mean overlap first above 0.3 at block 1 (easy) and block 2 (hard: 1/3 at block 2)
    assert row["ratios"] == [0.5, 0.75] and row["rho"] == pytest.approx(1.0)
    assert out["difficulty_reasons"] == []


def test_compare_says_why_there_is_no_difficulty_table():
    a, b = _prompts_run("a", EASY, None), _prompts_run("b", HARD, None)
    out = compare_runs([a, b], estimators=["ed_overlap"], n_boot=20)
    assert out["difficulty"] == []
    assert len(out["difficulty_reasons"]) == 2
    assert all("no difficulty level" in r and "'difficulty' field" in r
               for r in out["difficulty_reasons"])
    same = compare_runs([_prompts_run("x", EASY, 2), _prompts_run("y", HARD, 2)],
                        estimators=["ed_overlap"], n_boot=20)
    assert same["difficulty"] == []
    assert "all at difficulty 2" in same["difficulty_reasons"][0]


def test_empty_cells_say_not_run_or_skipped():
    asked = _prompts_run("a", EASY, 1, metrics=("logit_lens", "contributions"))
    skipped = _prompts_run("b", HARD, 2, metrics=("logit_lens", "behaviour"),
                           skipped=("behaviour",),
                           warnings=[{"code": "no_answers", "message": "skipped behaviour: they "
                                      "need answers and the examples have none"}])
    out = compare_runs([asked, skipped], estimators=["ed_cos", "ed_task"], n_boot=20)
    reasons = {(r["run"], r["estimator"]): r["reason"] for r in out["scale"]}
    assert reasons[("a", "ed_cos")].startswith("not run: contributions did not finish")
    assert reasons[("a", "ed_task")].startswith("not run: behaviour was not among the run's "
                                                "measurements (--metrics logit_lens,contributions)")
    assert reasons[("b", "ed_task")] == ("skipped: skipped behaviour: they need answers and the "
                                         "examples have none")
    assert reasons[("b", "ed_cos")].startswith("not run: contributions was not among")
    (row,) = [r for r in out["difficulty"] if r["estimator"] == "ed_task"]
    assert row["rho"] is None and "defined at 0 of 2 levels" in row["rho_reason"]
    assert row["reasons"][1].startswith("skipped: ")


def test_prompt_difficulty_csv_is_tidy(tmp_path):
    easy, hard = _prompts_run("easy", EASY, 1), _prompts_run("hard", HARD, 2)
    out = compare_runs([easy, hard], estimators=["ed_overlap"], n_boot=50)
    write_comparison(out, tmp_path)
    with open(tmp_path / "prompt_difficulty.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["level"] for r in rows] == ["1", "2"]  # one row per level
    assert {"model", "task", "estimator", "level", "n_prompts", "n_defined", "median", "rho",
            "rho_ci_lo", "rho_ci_hi"} <= set(rows[0])
    assert [r["median"] for r in rows] == ["0.5", "1"]
    assert [r["n_prompts"] for r in rows] == ["3", "3"]
    assert not any(v.startswith("[") for r in rows for v in r.values())  # no list cells
    assert rows[0]["runs"] == "easy; hard"


def test_export_names_the_task_with_its_parameters():
    (row, *_) = estimate_rows(_prompts_run("easy", EASY, 1))
    assert row["task"] == "prompts" and row["task_params"] == "path=/data/easy.jsonl"
    assert row["difficulty"] == 1


def test_compare_command_prints_the_reasons(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import effective_depth.store.compare as compare_mod
    from effective_depth.cli import main

    runs = [_prompts_run("a", EASY, None, metrics=("logit_lens", "behaviour")),
            _prompts_run("b", HARD, None, metrics=("logit_lens", "behaviour"))]
    real = compare_mod.compare_runs
    monkeypatch.setattr(compare_mod, "compare_runs",
                        lambda paths, **kw: real(runs, **{**kw, "n_boot": 20}))
    monkeypatch.setattr("effective_depth.cli._run_dirs", lambda paths: list(paths))
    result = CliRunner().invoke(main, ["compare", "a", "b", "--estimator", "ed_task"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "no difficulty table" in text and "no difficulty level" in text
    # the empty cells hold a footnote mark; the reason is written once below the table
    assert text.count("(1) not run: behaviour did not finish") == 1 and "— (1)" in text
