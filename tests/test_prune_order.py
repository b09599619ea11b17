"""The pruning order of ``ed_prune`` ranks every block by a quantity defined for it (the current-
mode output effect), so an essential last block is not pruned first; ``ed_skip``'s future-mode
ceiling is stated in its notes (docs/methods.md §6)."""

from __future__ import annotations

import pytest
import torch

from effective_depth.analysis.estimation import estimate_all
from effective_depth.engine.batch import encode_batch
from effective_depth.metrics.behaviour import ORDER_BASIS, behaviour
from effective_depth.metrics.registry import StudyContext, get_metric
from effective_depth.metrics.skip_effects import skip_effects
from effective_depth.tasks import get_task
from tests.helpers import rebuilt_model


@pytest.fixture(scope="module")
def essential_last():
    """spare-2l (2-digit addition, accuracy 0.998) with a near-no-op copy of its last block
    (outputs × 1e-3) inserted before it: blocks [A0, a1/1000, A1]. The last block is essential,
    the middle one is not."""
    model = rebuilt_model("zoo/spare-2l", [(0, 1.0), (1, 1e-3), (1, 1.0)])
    examples = get_task("addition", digits=2, split="test", seed=1).examples(16)
    return model, encode_batch(model.tokenizer, examples)


@pytest.mark.slow
def test_last_block_is_essential_and_middle_is_not(essential_last):
    model, batch = essential_last
    last_first = behaviour(model, batch, order=[2, 1, 0]).accuracy_by_prune()
    middle_first = behaviour(model, batch, order=[1, 2, 0]).accuracy_by_prune()
    assert last_first[0] == 1.0 and last_first[1] == 0.0  # skipping the last block alone kills it
    assert middle_first[1] == 1.0                         # skipping the middle one costs nothing


@pytest.mark.slow
def test_prune_order_does_not_remove_an_essential_last_block_first(essential_last):
    model, batch = essential_last
    L = model.cfg.n_layers
    # a study in future mode: the last block's future effect is 0 by construction
    future = skip_effects(model, batch, mode="future", aggregate="mean", cut_start=2,
                          cut_stride=1, cut_margin=1)
    assert float(future.output_effect[L - 1]) == 0.0
    ctx = StudyContext(model, batch, config=None, done={"skip_effects": future})
    result = get_metric("behaviour").run(ctx)
    assert result.prune_order[0] == 1 and result.prune_order[0] != L - 1
    assert result.meta["prune_order_by"] == ORDER_BASIS
    assert "current mode" in result.meta["prune_order_source"]
    effect = torch.tensor(result.meta["prune_order_effect"])
    assert effect[L - 1] > 0.1 and effect[1] < 0.05
    assert result.accuracy_by_prune()[1] == 1.0
    est = estimate_all({"behaviour": result}, n_boot=0)["ed_prune"]
    assert est.layer == 1  # two of three blocks needed, not all three
    assert result.curves()["prune_order"] == result.prune_order


@pytest.mark.slow
def test_current_mode_skip_effects_are_reused(essential_last):
    model, batch = essential_last
    current = skip_effects(model, batch, mode="current", aggregate="mean")
    ctx = StudyContext(model, batch, config=None, done={"skip_effects": current})
    result = get_metric("behaviour").run(ctx)
    assert "the study's skip_effects" in result.meta["prune_order_source"]
    assert result.meta["prune_order_effect"] == pytest.approx(
        current.output_effect_of(aggregate="mean").tolist())


@pytest.mark.slow
def test_ed_skip_future_ceiling_is_noted(essential_last):
    model, batch = essential_last
    L = model.cfg.n_layers
    future = skip_effects(model, batch, mode="future", aggregate="mean", cut_start=2,
                          cut_stride=1, cut_margin=1)
    est = estimate_all({"skip_effects": future}, n_boot=0)["ed_skip"]
    assert est.layer is not None and est.layer <= L - 2
    assert any("at most block L-2 = 1" in n for n in est.notes)
    current = skip_effects(model, batch, mode="current", aggregate="mean")
    est = estimate_all({"skip_effects": current}, n_boot=0)["ed_skip"]
    assert est.layer == L - 1 and not any("L-2" in n for n in est.notes)
