"""The training-type comparison: the difference of ratios between a base run and its trained
twin, with a bootstrap CI that resamples the *same* prompts in both runs when they are paired."""

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
