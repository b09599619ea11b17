"""Per-prompt effective depth, the prompt-level difficulty test and estimator agreement, on
hand-built results whose answers are known (docs/methods.md: "Per-prompt effective depth",
"Estimator agreement")."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from effective_depth.analysis.depth import prompt_spearman_bootstrap
from effective_depth.analysis.estimation import PerPrompt, estimate_all, per_prompt_estimates
from effective_depth.analysis.per_prompt import prompt_agreement, rank_agreement, run_per_prompt
from effective_depth.metrics.behaviour import Behaviour
from effective_depth.metrics.logit_lens import LogitLensResult
from effective_depth.metrics.registry import EstimatorSpec, MetricSpec, registered
from effective_depth.metrics.rules import ed_kl
from effective_depth.metrics.skip_effects import SkipEffects
from effective_depth.store.compare import compare_runs, estimator_agreement
from effective_depth.store.results import Run

L = 4


def _lens(overlap: list[list[float]], kl: list[list[float]] | None = None) -> LogitLensResult:
    P = len(overlap)
    n = len(overlap[0])
    kl_t = torch.tensor(kl if kl is not None else [[1.0, 0.2] + [0.0] * (n - 2)] * P)
    return LogitLensResult(kl_t, torch.tensor(overlap), torch.ones(P),
                     meta={"n_prompts": P, "n_layers": len(overlap[0]), "k": 1})


def _ranks(x: list[float]) -> np.ndarray:
    """Average ranks, written independently of effective_depth.analysis.depth._rank."""
    x = np.asarray(x, float)
    return np.array([np.sum(x < v) + (np.sum(x == v) + 1) / 2 for v in x])


def _pearson_of_ranks(x: list[float], y: list[float]) -> float:
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / math.sqrt((rx**2).sum() * (ry**2).sum()))


def _prompt_rho_ci(levels, values, n_boot, seed, level=0.95):
    """The prompt-level test's CI, computed here from its definition: resample the prompts of
    level i with numpy's generator seeded ``seed + 7919 i``, pool (level, value) pairs of the
    defined prompts, take Spearman's rho of every resample (undefined with fewer than two pairs
    or a constant side), and the percentile interval of the defined ones."""
    draws = [np.random.default_rng(seed + 7919 * i).integers(0, len(v), size=(n_boot, len(v)))
             for i, v in enumerate(values)]
    rhos = []
    for b in range(n_boot):
        x, y = [], []
        for lv, v, d in zip(levels, values, draws):
            for j in d[b]:
                if v[j] is not None:
                    x.append(lv)
                    y.append(v[j])
        rhos.append(float("nan") if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2
                    else _pearson_of_ranks(x, y))
    alpha = (1 - level) / 2
    defined = [r for r in rhos if not math.isnan(r)]
    return list(np.quantile(defined, [alpha, 1 - alpha]))


def test_lens_estimators_per_prompt_on_hand_built_curves():
    # ed_overlap (tau 0.3): the first block input above 0.3; ed_kl (tau 0.5): the first below
    # half the prompt's own maximum
    overlap = [[0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    kl = [[2.0, 1.5, 0.9, 0.0], [4.0, 1.0, 0.5, 0.0], [1.0, 0.6, 0.4, 0.0]]
    pp = per_prompt_estimates({"logit_lens": _lens(overlap, kl)})
    assert pp["ed_overlap"].layers == [1, 3, 2]
    assert pp["ed_kl"].layers == [2, 1, 2]
    assert pp["ed_overlap"].ratios == [0.5, 1.0, 0.75]
    assert pp["ed_kl"].params == {"threshold": 0.5}


def test_per_prompt_is_computed_per_prompt_not_broadcast_from_the_mean_curve():
    # alone, the prompts settle at blocks 1, 3, 3: median 3. Their mean curve is
    # [0, 1/3, 1/3, 1], above 0.3 already at block 1: the run's estimate is 1.
    overlap = [[0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]
    lens = _lens(overlap)
    run_level = estimate_all({"logit_lens": lens}, n_boot=0)["ed_overlap"]
    pp = per_prompt_estimates({"logit_lens": lens})["ed_overlap"]
    assert run_level.layer == 1
    assert pp.layers == [1, 3, 3]
    assert pp.summary()["median"] == 1.0  # ratio of block 3
    assert pp.summary()["n_defined"] == 3


def test_undefined_prompts_say_why_and_do_not_stop_the_others():
    overlap = [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0], [0.0, float("nan"), 1.0, 1.0]]
    pp = per_prompt_estimates({"logit_lens": _lens(overlap)}, only=["ed_overlap"])["ed_overlap"]
    assert pp.layers == [None, 1, None]
    assert pp.reasons[0] == "the top-k overlap never exceeds 0.3"
    assert "NaN" in pp.reasons[2]
    assert pp.summary()["undefined"] == {pp.reasons[0]: 1, pp.reasons[2]: 1}
    back = PerPrompt.from_dict("ed_overlap", pp.to_dict())
    assert back.layers == pp.layers and back.reasons == pp.reasons


def test_ed_skip_per_prompt_reads_each_prompt_own_output_effects():
    P = 3
    out = torch.tensor([[1.0, 0.5, 0.05, 0.0], [1.0, 0.5, 0.4, 0.2], [0.0, 0.0, 0.0, 0.0]])
    counts = torch.tensor([[1.0] * L, [1.0] * L, [0.0] * L])  # prompt 2 has no cut position
    skips = SkipEffects(torch.zeros(P, L, L), torch.zeros(P, L, L), out, out.clone(), counts,
                        [[4], [4], []], meta={"n_prompts": P, "n_layers": L, "aggregate": "max",
                                              "mode": "future"})
    pp = per_prompt_estimates({"skip_effects": skips})["ed_skip"]
    # the last block above 0.1 x the prompt's own largest effect
    assert pp.layers == [1, 3, None]
    assert pp.reasons[2] == "no prompt in the sample has a cut position"


def test_early_exit_per_prompt_and_a_prompt_the_model_gets_wrong():
    # exits n = 0..L; prompt 0 is solved from 2 blocks on (block index 1), prompt 1 only by the
    # full model (3), prompt 2 never
    by_exit = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    by_prune = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    beh = Behaviour(by_exit, by_prune, [3, 2, 1, 0], meta={"n_prompts": 3, "n_layers": L,
                                                            "prune_order": [3, 2, 1, 0]})
    pp = per_prompt_estimates({"behaviour": beh})
    assert pp["ed_task"].layers == [1, 3, None]
    assert pp["ed_task"].reasons[2] == "the full model answers this prompt wrongly"
    # prune: prompt 0 survives 2 blocks skipped (L - 2 - 1 = 1), prompt 1 none (3)
    assert pp["ed_prune"].layers == [1, 3, None]


def test_a_new_measurement_gets_per_prompt_depths_without_other_changes():
    """A registered estimator whose rule reads a prompt sample is per-prompt by default;
    ``per_prompt=False`` opts out and a callable replaces the rule."""

    class Toy(LogitLensResult):
        name = "toy_lens"

    def rule(result, tau, rules):
        return lambda idx: ed_kl(result.kl_of(idx), tau)

    spec = MetricSpec("toy_lens", Toy, run=lambda ctx: None, estimators=(
        EstimatorSpec("ed_toy_kl", "toy_lens", rule, 0.5),
        EstimatorSpec("ed_toy_off", "toy_lens", rule, 0.5, per_prompt=False),
        EstimatorSpec("ed_toy_own", "toy_lens", rule, 0.5,
                      per_prompt=lambda r, tau, rules: lambda i: (i, None)),
    ))
    kl = [[1.0, 0.9, 0.1, 0.0], [1.0, 0.1, 0.0, 0.0]]
    toy = Toy(torch.tensor(kl), torch.zeros(2, L), torch.ones(2), meta={"n_prompts": 2, "n_layers": L})
    with registered(spec):
        pp = per_prompt_estimates({"toy_lens": toy})
    assert pp["ed_toy_kl"].layers == [2, 1]
    assert "ed_toy_off" not in pp
    assert pp["ed_toy_own"].layers == [0, 1]


def test_prompt_level_spearman_on_a_hand_built_case():
    levels = [1, 2, 3]
    values = [[0.25, 0.5, None], [0.5, 0.75], [0.75, 1.0, 1.0]]
    out = prompt_spearman_bootstrap(levels, values, n_boot=300, seed=0)
    x = [1, 1, 2, 2, 3, 3, 3]
    y = [0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0]
    assert out["rho"] == pytest.approx(_pearson_of_ranks(x, y))
    # by hand: ranks x = [1.5,1.5,3.5,3.5,6,6,6], y = [1,2.5,2.5,4.5,4.5,6.5,6.5]
    assert out["rho"] == pytest.approx(22.75 / math.sqrt(25 * 26.5))
    assert out["n_prompts"] == [3, 2, 3] and out["n_defined"] == [2, 2, 3]
    assert out["ratios"] == [0.375, 0.625, 1.0]  # medians per level
    assert out["ci"] == pytest.approx(_prompt_rho_ci(levels, values, 300, 0))
    assert out["ci"][0] < out["rho"] < out["ci"][1]  # resamples of 2-3 prompts vary


def test_prompt_level_spearman_is_negative_when_harder_prompts_are_shallower():
    out = prompt_spearman_bootstrap([2, 3], [[1.0, 0.75, 1.0], [0.25, 0.5, 0.25]], n_boot=200)
    assert out["rho"] == pytest.approx(_pearson_of_ranks([2, 2, 2, 3, 3, 3],
                                                         [1.0, 0.75, 1.0, 0.25, 0.5, 0.25]))
    assert out["rho"] < 0 and out["ci"][1] < 0  # levels never mix: every resample is negative


def _pp(name: str, layers: list[int | None]) -> PerPrompt:
    return PerPrompt(name, L, layers, [None if x is not None else "undefined" for x in layers])


def test_agreement_over_prompts_on_a_hand_built_case():
    a = _pp("ed_a", [0, 1, 2, 3, 1, 2])
    same_order = _pp("ed_b", [1, 2, 3, 3, 2, 3])          # a monotone map of a: rho 1
    reverse = _pp("ed_c", [3, 2, 1, 0, 2, 1])             # reversed: rho -1
    constant = _pp("ed_d", [2, 2, 2, 2, 2, None])          # no ranking at all
    rows = {(r["a"], r["b"]): r for r in prompt_agreement(
        {"ed_a": a, "ed_b": same_order, "ed_c": reverse, "ed_d": constant}, n_boot=200)}
    assert rows[("ed_a", "ed_b")]["rho"] == pytest.approx(_pearson_of_ranks(a.ratios, same_order.ratios))
    assert rows[("ed_a", "ed_c")]["rho"] == pytest.approx(-1.0)
    assert rows[("ed_a", "ed_c")]["ci"] == pytest.approx([-1.0, -1.0])
    assert rows[("ed_a", "ed_d")]["rho"] is None
    assert rows[("ed_a", "ed_d")]["n"] == 5
    assert "same on every prompt" in rows[("ed_a", "ed_d")]["reason"]


def test_rank_agreement_needs_three_common_points():
    assert math.isnan(rank_agreement([1, 2, np.nan], [2, 1, 3]))
    assert rank_agreement([1, 2, 3], [2, 4, 9]) == pytest.approx(1.0)


def _lens_run(model: str, n_layers: int, overlap: list[list[float]], difficulty: int = 3,
              with_per_prompt: bool = False) -> Run:
    """A run with only a logit lens (and its estimates), as compare reads it."""
    lens = _lens(overlap)
    est = estimate_all({"logit_lens": lens}, n_boot=0)
    P = len(overlap)
    results = {
        "model": {"name": model, "n_layers": n_layers},
        "task": {"name": "addition", "params": {"digits": difficulty}, "difficulty": difficulty,
                 "n_examples": P},
        "completed": ["logit_lens"], "status": "complete",
        "metrics": {"logit_lens": {"meta": lens.meta, "curves": {}}},
        "depth": {k: v.to_dict() for k, v in est.items()},
    }
    if with_per_prompt:
        results["per_prompt"] = {k: v.to_dict() for k, v in per_prompt_estimates({"logit_lens": lens}).items()}
    tensors = {f"metrics.logit_lens.{k}": v for k, v in lens.tensors().items()}
    inputs = {"examples": [{"prompt": f"{i}+{difficulty}=", "meta": {"difficulty": difficulty}}
                           for i in range(P)]}
    return Run(Path(f"{model}-{difficulty}"), {"config": {"model": model, "n_boot": 100}},
               inputs, results, tensors)


def test_run_per_prompt_reads_stored_blocks_and_recomputes_missing_ones():
    overlap = [[0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    stored = _lens_run("m", L, overlap, with_per_prompt=True)
    stored.results["per_prompt"]["ed_overlap"]["layers"] = [0, 0, 0]  # proves it is read, not redone
    stored.refresh()
    assert run_per_prompt(stored)["ed_overlap"].layers == [0, 0, 0]
    old = _lens_run("m", L, overlap)  # a run written before per-prompt depths existed
    assert run_per_prompt(old)["ed_overlap"].layers == [1, 3, 2]


@pytest.mark.slow
def test_compare_has_the_prompt_level_difficulty_test():
    easy = _lens_run("m", L, [[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]], 2)
    hard = _lens_run("m", L, [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]], 3)
    out = compare_runs([easy, hard], estimators=["ed_overlap"], n_boot=200)
    (row,) = out["prompt_difficulty"]
    x, y = [2, 2, 2, 3, 3, 3], [0.5, 0.5, 0.75, 0.75, 1.0, 1.0]
    assert row["levels"] == [2, 3]
    assert row["rho"] == pytest.approx(_pearson_of_ranks(x, y))
    assert row["medians"] == [0.5, 1.0]
    assert row["n_defined"] == [3, 3]
    # the per-prompt ratios of the two runs, pooled by level, resampled within levels
    assert row["rho_ci"] == pytest.approx(_prompt_rho_ci([2, 3], [y[:3], y[3:]], 200, 0))


def test_agreement_over_models_of_a_grid():
    # three models; alone, every prompt's overlap passes 0.3 at block `first` and its KL falls
    # below half its maximum at block `first + 1`
    runs, firsts, sizes = [], (1, 3, 6), (4, 6, 8)
    for first, n in zip(firsts, sizes):
        overlap = [[0.0] * first + [1.0] * (n - first) for _ in range(5)]
        kl = [[4.0] * (first + 1) + [0.0] * (n - first - 1) for _ in range(5)]
        lens = LogitLensResult(torch.tensor(kl), torch.tensor(overlap), torch.ones(5),
                         meta={"n_prompts": 5, "n_layers": n, "k": 1})
        run = _lens_run(f"m{n}", n, overlap)
        run.tensors = {f"metrics.logit_lens.{k}": v for k, v in lens.tensors().items()}
        run.results["depth"] = {k: v.to_dict() for k, v in estimate_all({"logit_lens": lens}, n_boot=0).items()}
        run.refresh()
        runs.append(run)
    rows = [r for r in estimator_agreement(runs, estimators=["ed_kl", "ed_overlap"], n_boot=50)
            if r["scope"] == "models"]
    (row,) = rows
    ratios_overlap = [(f + 1) / n for f, n in zip(firsts, sizes)]  # 0.5, 0.667, 0.875
    ratios_kl = [(f + 2) / n for f, n in zip(firsts, sizes)]  # 0.75, 0.833, 1.0
    assert [r.results["depth"]["ed_kl"]["ratio"] for r in runs] == pytest.approx(ratios_kl)
    assert row["n"] == 3
    assert row["rho"] == pytest.approx(_pearson_of_ranks(ratios_kl, ratios_overlap)) == 1.0
    assert row["ci"] == pytest.approx([1.0, 1.0])  # identical prompts: every resample agrees
    # two models only: no rank correlation is claimed
    assert not [r for r in estimator_agreement(runs[:2], estimators=["ed_kl", "ed_overlap"], n_boot=10)
                if r["scope"] == "models"]


@pytest.mark.slow
def test_a_study_stores_per_prompt_depths_and_the_cli_reports_agreement(tmp_path):
    import json

    from click.testing import CliRunner

    from effective_depth.cli import main
    from effective_depth.store.results import load_run
    from effective_depth.study import StudyConfig, run_study

    config = StudyConfig(model="zoo/add-4l", n_examples=8, n_boot=50,
                         options={"logit_lens": {"k": 1}}, metrics=("logit_lens", "behaviour"))
    res = run_study(config, tmp_path / "run", progress=False, dashboard=False)
    stored = res.results["per_prompt"]
    assert set(stored) == {"ed_kl", "ed_overlap", "ed_task", "ed_prune"}
    run = load_run(tmp_path / "run")
    lens = run.metric("logit_lens")
    for i in range(8):  # each prompt's block is the rule on that prompt's own curve
        assert stored["ed_kl"]["layers"][i] == ed_kl(lens.kl_of([i]), 0.5)[0]
    assert {k: v.layers for k, v in run_per_prompt(run).items()} == \
        {k: v["layers"] for k, v in stored.items()}
    out = CliRunner().invoke(main, ["agreement", str(tmp_path / "run"), "--n-boot", "20",
                                    "--out", str(tmp_path / "agree")])
    assert out.exit_code == 0, out.output
    assert "ed_kl" in out.output and "prompts" in out.output
    rows = json.loads((tmp_path / "agree" / "agreement.json").read_text())["agreement"]
    assert len(rows) == 6 and {r["scope"] for r in rows} == {"prompts"}
    assert (tmp_path / "agree" / "agreement.csv").read_text().startswith("scope,over,run,a,b,")


@pytest.mark.slow
def test_figures_show_the_per_prompt_values_and_the_agreement_matrix():
    from effective_depth.viz.compare_figures import COMPARISON_FIGURES
    from effective_depth.viz.per_prompt import agreement_figure, per_prompt_figure

    pp = {"ed_overlap": _pp("ed_overlap", [1, 3, None, 3]), "ed_kl": _pp("ed_kl", [0, 1, 2, 3])}
    fig = per_prompt_figure(pp, {"ed_overlap": {"ratio": 0.5}, "ed_kl": {"layer": None}})
    boxes = [t for t in fig.data if t.type == "box"]
    assert list(boxes[0].y) == [0.5, 1.0, 1.0] and list(boxes[0].customdata) == [0, 1, 3]
    assert boxes[0].x[0] == "ed_overlap (3/4)"
    (diamond,) = [t for t in fig.data if t.type == "scatter"]
    assert list(diamond.x) == ["ed_overlap (3/4)"] and list(diamond.y) == [0.5]
    rows = prompt_agreement(pp, n_boot=20)
    heat = agreement_figure(rows).data[0]
    rho = rows[0]["rho"]
    assert rho == pytest.approx(_pearson_of_ranks([0.5, 1.0, 1.0], [0.25, 0.5, 1.0]))
    assert [list(r) for r in heat.z] == [[1.0, rho], [rho, 1.0]]
    assert {"prompt_difficulty", "agreement"} <= set(COMPARISON_FIGURES)
