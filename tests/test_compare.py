"""Comparisons on hand-built runs whose answers are known.

* The training-type comparison: the difference of ratios between a base run and its trained
  twin, with a bootstrap CI that resamples the *same* prompts in both runs when they are paired.
* Difficulty told apart from failure: each estimator per level on the prompts the model answers
  and on those it fails, too small a part in words and without a number.
* Scale trends only within a model family, and the terminal table (one row per estimator,
  footnotes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from effective_depth.store.compare import compare_runs
from effective_depth.store.results import Run

L = 4
# per-prompt top-k overlap curves: alone, kind A first exceeds 0.3 at block 2, kind B at block 1;
# the trained model does everything one block later
BASE = {"A": [0.0, 0.0, 1.0, 1.0], "B": [0.0, 1.0, 1.0, 1.0]}
TRAINED = {"A": [0.0, 0.0, 0.0, 1.0], "B": [0.0, 0.0, 1.0, 1.0]}
KINDS = ["A", "B", "A", "A", "B", "A", "A", "B", "A", "A"]  # 3 of 10: the mean is 0.3 at the edge


def _run(model: str, curves: dict[str, list[float]], kinds: list[str], prompts: list[str]) -> Run:
    """A run with only a logit lens, whose ed_overlap on a resample is known: the first block
    where the share of prompts whose curve is 1 there exceeds 0.3."""
    P = len(kinds)
    overlap = torch.tensor([curves[k] for k in kinds])
    layer = 1 if sum(k == "B" for k in kinds) / P > 0.3 else 2
    if curves is TRAINED:
        layer += 1
    results = {
        "model": {"name": model, "n_layers": L},
        "task": {"name": "addition", "params": {}, "n_examples": P},
        "completed": ["logit_lens"], "status": "complete",
        "metrics": {"logit_lens": {"meta": {"n_prompts": P, "n_layers": L, "k": 5}, "curves": {}}},
        "depth": {"ed_overlap": {"name": "ed_overlap", "layer": layer, "ratio": (layer + 1) / L}},
    }
    tensors = {"metrics.logit_lens.kl_sums": torch.zeros(P, L),
               "metrics.logit_lens.overlap_sums": overlap,
               "metrics.logit_lens.counts": torch.ones(P)}
    inputs = {"examples": [{"prompt": p} for p in prompts]}
    return Run(Path(model), {"config": {"model": model}}, inputs, results, tensors)


@pytest.mark.slow
def test_paired_training_difference_on_a_hand_built_pair():
    prompts = [f"{i}+{i}=" for i in range(len(KINDS))]
    base = _run("base", BASE, KINDS, prompts)
    trained = _run("trained", TRAINED, KINDS, prompts)
    assert base.metric("logit_lens").overlap.tolist() == pytest.approx([0, 0.3, 1, 1])
    out = compare_runs([base, trained], estimators=["ed_overlap"], pairs=[("base", "trained")],
                       n_boot=300, seed=1)
    (row,) = out["training"]
    assert row["paired"] is True
    assert (row["ratio_base"], row["ratio_trained"]) == (0.75, 1.0)
    assert row["diff"] == pytest.approx(0.25)
    # paired: every resample shifts both runs by exactly one block, so every difference is 1/4
    assert row["diff_ci"] == pytest.approx([0.25, 0.25])


def test_unpaired_runs_resample_independently():
    """The same data with different prompt lists is not a pair: the two runs are resampled
    independently, and the differences spread over 0, 1/4 and 1/2."""
    base = _run("base", BASE, KINDS, [f"a{i}" for i in range(len(KINDS))])
    trained = _run("trained", TRAINED, KINDS, [f"b{i}" for i in range(len(KINDS))])
    out = compare_runs([base, trained], estimators=["ed_overlap"], pairs=[("base", "trained")],
                       n_boot=300, seed=1)
    (row,) = out["training"]
    assert row["paired"] is False and row["diff"] == pytest.approx(0.25)
    assert row["diff_ci"][0] == pytest.approx(0.0) and row["diff_ci"][1] == pytest.approx(0.5)


# --- difficulty told apart from failure, and scale trends within a family --------------------

A1, A2, A3 = [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]


def _lens_run(model: str, overlap: list[list[float]], level: int | None = None,
              correct: list[bool] | None = None, architecture: str | None = None) -> Run:
    """A run with a logit lens (top-1 overlap curves ``overlap``, one per prompt) and, when
    ``correct`` is given, a behaviour measurement whose full model answers exactly those
    prompts."""
    from effective_depth.analysis.estimation import estimate_all
    from effective_depth.metrics.behaviour import Behaviour
    from effective_depth.metrics.logit_lens import LogitLensResult

    n, P = len(overlap[0]), len(overlap)
    o = torch.tensor(overlap)
    lens = LogitLensResult(torch.zeros_like(o), o, torch.ones(P),
                           meta={"n_prompts": P, "n_layers": n, "k": 1})
    metrics: dict = {"logit_lens": lens}
    tensors = {f"metrics.logit_lens.{k}": v for k, v in lens.tensors().items()}
    if correct is not None:
        by_exit = torch.zeros(P, n + 1, dtype=torch.bool)
        by_exit[:, -1] = torch.tensor(correct)
        metrics["behaviour"] = Behaviour(by_exit, by_exit.clone(), list(range(n)),
                                         meta={"n_prompts": P, "n_layers": n,
                                               "prune_order": list(range(n))})
        tensors.update({f"metrics.behaviour.{k}": v
                        for k, v in metrics["behaviour"].tensors().items()})
    est = estimate_all(metrics, n_boot=0)
    results = {
        "model": {"name": model, "n_layers": n, "architecture": architecture},
        "task": {"name": "addition", "params": {} if level is None else {"digits": level},
                 "difficulty": level, "n_examples": P},
        "completed": list(metrics), "status": "complete",
        "metrics": {k: {"meta": v.meta, "curves": {}} for k, v in metrics.items()},
        "depth": {k: v.to_dict() for k, v in est.items()},
    }
    inputs = {"examples": [{"prompt": f"q{i}", "answer": "1"} for i in range(P)]}
    return Run(Path(f"{model}-{level}"), {"config": {"model": model, "metrics": list(metrics)}},
               inputs, results, tensors)


def _split_runs() -> list[Run]:
    # level 1: 5 answered prompts settle at block 1, 15 failed ones at block 3 (so the run's
    # own estimate, from all 20, is block 3: 5/20 = 0.25 is not above 0.3 at block 1); level 2:
    # 5 answered settle at block 2, 2 failed at block 3
    easy = _lens_run("m", [A1] * 5 + [A3] * 15, 1, [True] * 5 + [False] * 15)
    hard = _lens_run("m", [A2] * 5 + [A3] * 2, 2, [True] * 5 + [False] * 2)
    return [easy, hard]


def test_difficulty_split_by_correctness_on_known_prompts(tmp_path):
    import csv

    from effective_depth.store.compare import write_comparison

    out = compare_runs(_split_runs(), estimators=["ed_overlap"], n_boot=100)
    (whole,) = out["difficulty"]
    assert whole["ratios"] == [1.0, 0.75]  # all prompts: the failures decide level 1
    rows = {r["subset"]: r for r in out["difficulty_by_correctness"]}
    correct, failed = rows["correct"], rows["failed"]
    assert correct["levels"] == [1, 2] and correct["n_prompts"] == [20, 7]
    # the rule on the answered prompts alone: block 1 and block 2, every resample alike
    assert correct["n_subset"] == [5, 5] and correct["ratios"] == [0.5, 0.75]
    assert correct["cis"] == [[0.5, 0.5], [0.75, 0.75]] and correct["reasons"] == [None, None]
    # per prompt, within the answered prompts: 0.5 at level 1, 0.75 at level 2
    assert correct["rho"] == pytest.approx(1.0) and correct["rho_ci"] == pytest.approx([1, 1])
    assert correct["rho_n"] == 10 and correct["rho_reason"] is None
    # the failed prompts: 15 at level 1 (block 3), 2 at level 2: too few for a number
    assert failed["n_subset"] == [15, 2] and failed["ratios"] == [1.0, None]
    assert failed["cis"][0] == [1.0, 1.0] and failed["cis"][1] is None
    assert failed["reasons"] == [None, "too few failed prompts (n=2, need ≥5)"]
    # 17 failed prompts with a depth, all at block 3: rho is undefined, and says why
    assert failed["rho"] is None and "same at every level" in failed["rho_reason"]
    write_comparison(out, tmp_path)
    with open(tmp_path / "difficulty_by_correctness.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["subset"], r["level"], r["n_subset"], r["ratio"]) for r in table] == [
        ("correct", "1", "5", "0.5"), ("correct", "2", "5", "0.75"),
        ("failed", "1", "15", "1"), ("failed", "2", "2", "")]
    assert table[3]["reason"] == "too few failed prompts (n=2, need ≥5)"
    assert {"ci_lo", "ci_hi", "rho", "rho_ci_lo", "rho_ci_hi", "rho_n"} <= set(table[0])
    assert not any(v.startswith("[") for r in table for v in r.values())  # no list cells


def test_a_too_small_part_gives_words_and_no_number():
    # 2 answered prompts at each level: neither an estimate nor a rho
    runs = [_lens_run("m", [A1] * 2 + [A3] * 6, 1, [True] * 2 + [False] * 6),
            _lens_run("m", [A2] * 2 + [A3] * 6, 2, [True] * 2 + [False] * 6)]
    out = compare_runs(runs, estimators=["ed_overlap"], n_boot=20)
    correct = next(r for r in out["difficulty_by_correctness"] if r["subset"] == "correct")
    assert correct["ratios"] == [None, None] and correct["cis"] == [None, None]
    assert correct["reasons"] == ["too few correct prompts (n=2, need ≥5)"] * 2
    assert correct["rho"] is None and correct["rho_ci"] is None
    assert correct["rho_reason"] == ("too few correct prompts with a per-prompt depth "
                                     "(n=4, need ≥5)")


def test_without_behaviour_the_split_is_not_available():
    bare = [_lens_run("m", [A1] * 5, 1), _lens_run("m", [A2] * 5, 2)]
    out = compare_runs(bare, estimators=["ed_overlap"], n_boot=20)
    assert out["difficulty_by_correctness"] == []
    (why,) = out["difficulty_by_correctness_reasons"]
    assert why.startswith("m on addition: not available: behaviour not run")
    # one level measured, the other not: that level says so, and there is no rho
    half = [_lens_run("m", [A1] * 5, 1, [True] * 5), _lens_run("m", [A2] * 5, 2)]
    out = compare_runs(half, estimators=["ed_overlap"], n_boot=20)
    correct = next(r for r in out["difficulty_by_correctness"] if r["subset"] == "correct")
    assert correct["ratios"] == [0.5, None] and correct["n_subset"] == [5, None]
    assert correct["reasons"][1] == "not available: behaviour not run"
    assert correct["rho"] is None and "not available: behaviour not run" in correct["rho_reason"]


def test_correctness_figure_draws_parts_with_enough_prompts():
    from effective_depth.viz.per_prompt import correctness_figure

    out = compare_runs(_split_runs(), estimators=["ed_overlap"], n_boot=20)
    fig = correctness_figure(out)
    boxes = {t.legendgroup: t for t in fig.data if t.type == "box"}
    assert list(boxes["correct"].y) == [0.5] * 5 + [0.75] * 5
    # the 2 failed prompts of level 2 are not drawn; the label gives each part's count
    assert list(boxes["failed"].y) == [1.0] * 15
    assert set(boxes["failed"].x) == {"level 1 (5/15)"}
    assert "ρ = 1.00" in boxes["correct"].name


def test_families_of_checkpoints_and_of_the_zoo():
    from effective_depth.store.families import family_of, not_joined_reason

    qwen = {family_of(f"Qwen/Qwen2.5-{s}", "Qwen2ForCausalLM").key for s in ("0.5B", "1.5B", "7B")}
    assert qwen == {("qwen2.5", "qwen2")}
    smol = family_of("real/smollm2-135m-instruct", "LlamaForCausalLM")
    gemma = family_of("real/gemma-3-270m", "Gemma3ForCausalLM")
    assert smol.key != gemma.key
    assert not_joined_reason([smol, gemma]) == ("different families: smollm2-instruct (llama) "
                                                "vs gemma-3 (gemma3)")
    assert {family_of(f"zoo/add-{n}l").name for n in (2, 4, 8, 12)} == {"zoo/add"}
    assert family_of("zoo/add-4l-scratch").name != family_of("zoo/add-4l").name
    assert family_of("zoo/spare-4l").name == "zoo/spare"
    assert family_of("mine-a", named={"mine-a": "mine"}).key == ("mine", None)


def _overlap_at(first: int, n: int, P: int = 5) -> list[list[float]]:
    return [[0.0] * first + [1.0] * (n - first)] * P


def test_runs_of_different_families_get_no_trend_and_say_why():
    from effective_depth.viz.compare_figures import scale_figure

    runs = [_lens_run("real/smollm2-135m-instruct", _overlap_at(10, 30), 1, None,
                      "LlamaForCausalLM"),
            _lens_run("real/gemma-3-270m", _overlap_at(9, 18), 1, None, "Gemma3ForCausalLM")]
    out = compare_runs(runs, estimators=["ed_overlap"], n_boot=20)
    assert {r["family"] for r in out["scale"]} == {"smollm2-instruct (llama)", "gemma-3 (gemma3)"}
    why = "different families: smollm2-instruct (llama) vs gemma-3 (gemma3)"
    assert len(out["scale_trend"]) == 2  # one row per family, never one across them
    for row in out["scale_trend"]:
        assert row["rho"] is None and row["rho_ci"] is None and len(row["runs"]) == 1
        assert row["not_joined"] == why and "no trend" in row["rho_reason"]
    assert out["scale_reasons"] == [f"addition at difficulty 1: not joined: {why}; each family "
                                    "is its own trend"]
    fig = scale_figure(out)
    ratio_traces = [t for t in fig.data if t.xaxis == "x"]
    assert len(ratio_traces) == 2 and all(len(t.y) == 1 and t.mode == "markers"
                                          for t in ratio_traces)
    assert any(why in a.text for a in fig.layout.annotations)


def test_a_zoo_depth_family_still_has_its_trend():
    from effective_depth.viz.compare_figures import scale_figure

    runs = [_lens_run("zoo/add-2l", _overlap_at(1, 2), 3, None, "Qwen2ForCausalLM"),
            _lens_run("zoo/add-8l", _overlap_at(3, 8), 3, None, "Qwen2ForCausalLM")]
    out = compare_runs(runs, estimators=["ed_overlap"], n_boot=20)
    (row,) = out["scale_trend"]
    assert row["family"] == "zoo/add" and row["depths"] == [2, 8] and row["not_joined"] is None
    assert row["ratios"] == [1.0, 0.5] and row["rho"] == pytest.approx(-1.0)
    assert row["rho_ci"] == pytest.approx([-1.0, -1.0])
    (trace,) = [t for t in scale_figure(out).data if t.xaxis == "x"]
    assert trace.mode == "lines+markers" and list(trace.y) == [1.0, 0.5]
    # a family a user names joins runs whose names say nothing
    other = [_lens_run("alpha", _overlap_at(1, 2), 3), _lens_run("beta", _overlap_at(3, 8), 3)]
    assert all(r["rho"] is None for r in compare_runs(other, estimators=["ed_overlap"],
                                                      n_boot=5)["scale_trend"])
    named = compare_runs(other, estimators=["ed_overlap"], n_boot=5,
                         families={"mine": ["alpha", "beta"]})
    (row,) = named["scale_trend"]
    assert row["family"] == "mine" and row["rho"] == pytest.approx(-1.0)


def test_terminal_comparison_is_one_row_per_estimator_with_footnotes(monkeypatch):
    from click.testing import CliRunner

    import effective_depth.store.compare as compare_mod
    from effective_depth.cli import main

    runs = [_lens_run("real/smollm2-135m-instruct", _overlap_at(10, 30), 1, None,
                      "LlamaForCausalLM"),
            _lens_run("real/gemma-3-270m", _overlap_at(9, 18), 1, None, "Gemma3ForCausalLM")]
    seen = {}
    real = compare_mod.compare_runs

    def fake(paths, **kw):
        seen.update(kw)
        return real(runs, **{**kw, "n_boot": 10})

    monkeypatch.setattr(compare_mod, "compare_runs", fake)
    monkeypatch.setattr("effective_depth.cli._run_dirs", lambda paths: list(paths))
    result = CliRunner().invoke(main, ["compare", "a", "b", "--estimator", "ed_overlap",
                                       "--estimator", "ed_cos", "--estimator", "ed_task",
                                       "--family", "x=p,q"])
    assert result.exit_code == 0, result.output
    assert seen["families"] == {"x": ["p", "q"]}
    lines = result.output.splitlines()
    scale = lines[:next(i for i, x in enumerate(lines) if x.startswith("(1)"))]
    # one row per estimator, one column per run
    assert [sum(x.startswith(f"│ {e} ") for x in scale) for e in ("ed_overlap", "ed_cos",
                                                                    "ed_task")] == [1, 1, 1]
    (row,) = [x for x in scale if x.startswith("│ ed_cos ")]
    assert row.count("— (1)") == 2  # both runs: the same footnote, not the sentence twice
    assert any("1. real/gemma-3-270m" in x for x in scale)
    text = result.output
    assert text.count("not run: contributions was not among the run's measurements") == 1
    assert "(1) not run: contributions" in text and "(2) not run: behaviour" in text
    assert "not joined: different families: " in " ".join(text.split())


def test_a_grid_file_names_families_for_its_comparison():
    from effective_depth.errors import ConfigError
    from effective_depth.study.grid import grid_from_dict

    grid = grid_from_dict({"models": ["zoo/add-2l"], "base": {"metrics": ["logit_lens"]},
                           "families": {"mine": ["zoo/add-2l", "my/other-model"]}})
    assert grid.families == {"mine": ["zoo/add-2l", "my/other-model"]}
    with pytest.raises(ConfigError, match="grid families map a family name to a list"):
        grid_from_dict({"models": ["zoo/add-2l"], "families": {"mine": "zoo/add-2l"}})
