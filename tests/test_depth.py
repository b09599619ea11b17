"""Effective-depth estimators on hand-built curves, bootstrap CIs, Spearman's rho."""

from __future__ import annotations

import math

import pytest
import torch

from effective_depth.depth import (
    Estimate,
    bootstrap_estimate,
    ed_cos,
    ed_kl,
    ed_overlap,
    ed_prune,
    ed_skip,
    ed_task,
    percentile_ci,
    spearman,
    spearman_bootstrap,
)
from effective_depth.errors import ConfigError


def test_ed_cos_last_negative_to_nonnegative_crossing():
    z = [0.0] * 4
    assert ed_cos([-1, -1, 1, 1], z, z) == (1, None)
    assert ed_cos([-1, 1, -1, 1], z, z) == (2, None)  # the last crossing wins
    assert ed_cos([-1, 1, 1, 1], z, z) == (0, None)  # at the first block
    assert ed_cos([1, 1, -1, 0], z, z) == (2, None)  # into the last block (0 counts as >= 0)
    layer, reason = ed_cos([1, 2, 3], [0, 0, 0], [0, 0, 0])
    assert layer is None and "never negative" in reason
    layer, reason = ed_cos([-1, -2, -3], [0, 0, 0], [0, 0, 0])
    assert layer is None and "never crosses" in reason
    # the mean of the three curves decides: -3+1+1 < 0 at 0, 1+1+1 >= 0 at 1
    assert ed_cos([-3, 1], [1, 1], [1, 1]) == (0, None)


def test_ed_kl_first_layer_below_tau_of_max():
    assert ed_kl([4.0, 3.0, 1.9, 0.5]) == (2, None)
    assert ed_kl([1.0, 3.0]) == (0, None)  # crossing at the first block
    assert ed_kl([4.0, 4.0, 4.0, 1.0]) == (3, None)  # at the last block
    assert ed_kl([4.0, 3.0, 1.9], tau=0.9) == (1, None)
    layer, reason = ed_kl([0.0, 0.0, 0.0])
    assert layer is None and "0 at every layer" in reason
    layer, reason = ed_kl([2.0, 2.0, 2.0])  # flat, non-zero: never falls below half the max
    assert layer is None and "never falls below 0.5" in reason


def test_ed_overlap_first_layer_above_tau():
    assert ed_overlap([0.1, 0.2, 0.5, 0.9]) == (2, None)
    assert ed_overlap([0.4, 0.2]) == (0, None)
    assert ed_overlap([0.0, 0.0, 0.31]) == (2, None)
    layer, reason = ed_overlap([0.3, 0.3, 0.3])  # flat at tau: never strictly above
    assert layer is None and "never exceeds 0.3" in reason


def test_ed_skip_last_block_above_tau_of_max():
    assert ed_skip([0.5, 0.4, 0.01, 0.0]) == (1, None)
    assert ed_skip([0.5, 0.4, 0.3, 0.2]) == (3, None)
    assert ed_skip([1.0, 0.0, 0.0]) == (0, None)
    layer, reason = ed_skip([0.0, 0.0])
    assert layer is None and "unchanged" in reason


def test_ed_task_and_ed_prune():
    assert ed_task([0.0, 0.2, 0.9, 1.0], 1.0) == (2, None)  # 3 leading blocks -> block index 2
    assert ed_task([0.0, 0.995, 1.0, 1.0], 1.0) == (0, None)
    assert ed_task([0.0, 0.5, 0.9, 1.0], 1.0, eps=0.2) == (1, None)
    layer, reason = ed_task([0, 0, 0], 0.0)
    assert layer is None and "solves none" in reason
    L = 4
    assert ed_prune([1.0, 1.0, 0.995, 0.5, 0.0], 1.0) == (L - 2 - 1, None)
    assert ed_prune([1.0, 0.2, 0.1, 0.0, 0.0], 1.0) == (L - 1, None)  # nothing can go
    layer, reason = ed_prune([1.0] * 5, 1.0)
    assert layer is None and "every block" in reason


@pytest.mark.parametrize("rule", [lambda c: ed_kl(c), lambda c: ed_overlap(c), lambda c: ed_skip(c),
                                  lambda c: ed_cos(c, c, c), lambda c: ed_task(c, 1.0)])
def test_nan_curves_are_a_clear_error(rule):
    with pytest.raises(ConfigError, match="NaN at layers \\[1\\]"):
        rule([0.1, float("nan"), 0.3])


def test_thresholds_are_checked():
    with pytest.raises(ConfigError, match="threshold must be in \\(0, 1\\)"):
        ed_kl([1.0, 0.1], tau=1.5)
    with pytest.raises(ConfigError, match="empty"):
        ed_overlap([])


def _kl_rule(per_prompt: torch.Tensor):
    def rule(idx):
        curve = per_prompt.mean(0) if idx is None else per_prompt[torch.as_tensor(idx)].mean(0)
        return ed_kl(curve)

    return rule


def test_bootstrap_ci_contains_estimate_and_is_reproducible():
    gen = torch.Generator().manual_seed(0)
    base = torch.tensor([5.0, 4.0, 3.0, 2.4, 2.0, 1.0, 0.5, 0.2])
    per_prompt = base + 0.8 * torch.randn(30, 8, generator=gen)
    est = bootstrap_estimate("ed_kl", _kl_rule(per_prompt), 30, 8, n_boot=300, seed=1)
    assert est.layer is not None and est.ci is not None
    assert est.ci[0] <= est.ratio <= est.ci[1]
    assert est.ci[0] < est.ci[1]  # noisy prompts: a real interval
    # the layer CI holds observed block indices, not interpolations
    assert all(float(v).is_integer() for v in est.layer_ci)
    again = bootstrap_estimate("ed_kl", _kl_rule(per_prompt), 30, 8, n_boot=300, seed=1)
    assert again.to_dict() == est.to_dict()
    other = bootstrap_estimate("ed_kl", _kl_rule(per_prompt), 30, 8, n_boot=300, seed=2)
    assert other.layer == est.layer


def test_identical_prompts_give_zero_width_ci():
    per_prompt = torch.tensor([[5.0, 4.0, 3.0, 1.0]]).repeat(10, 1)
    est = bootstrap_estimate("ed_kl", _kl_rule(per_prompt), 10, 4, n_boot=200)
    assert est.layer == 3 and est.ratio == 1.0
    assert est.ci == (1.0, 1.0)
    assert est.undefined_fraction == 0.0


def test_undefined_estimate_serialises_with_its_reason():
    per_prompt = torch.zeros(5, 4)
    est = bootstrap_estimate("ed_kl", _kl_rule(per_prompt), 5, 4, n_boot=20)
    d = est.to_dict()
    assert d["layer"] is None and d["ratio"] is None and "0 at every layer" in d["reason"]
    assert est.undefined_fraction == 1.0
    assert Estimate.from_dict(d).reason == est.reason


def test_spearman_known_values():
    assert spearman([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.9]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))


def test_spearman_bootstrap_over_levels():
    levels = [1, 2, 3]
    fns = [lambda idx, v=v: v for v in (0.2, 0.5, 0.9)]  # ratios that rise with difficulty
    out = spearman_bootstrap(levels, fns, [5, 5, 5], n_boot=50)
    assert out["rho"] == pytest.approx(1.0)
    assert out["ci"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert percentile_ci([1.0, 2.0, 3.0], 0.5) == (1.5, 2.5)


def test_spearman_bootstrap_undefined_for_constant_ratios():
    fns = [lambda idx: 0.5, lambda idx: 0.5, lambda idx: 0.5 if idx is None else 0.6]
    out = spearman_bootstrap([1, 2, 3], fns, [4, 4, 4], n_boot=20)
    assert out["rho"] is None and out["ci"] is None


def test_depth_score_estimate_on_a_hand_built_matrix():
    """Prompts of two kinds: skipping block 0 matters to later blocks (centre of mass 0), or
    skipping block 2 does (centre 2). With token-weighted means and one count per skipped block,
    the mean effect per skipped block is [n_A, 0, n_B] / n, so the score is 2 n_B / n."""
    import numpy as np

    from effective_depth.depth import bootstrap_indices, depth_score_estimate
    from effective_depth.metrics import SkipEffects

    L, kinds = 4, [0, 0, 1, 0, 0, 1, 0, 0]  # 1 = kind B
    P = len(kinds)
    layer = torch.zeros(P, L, L)
    for p, kind in enumerate(kinds):
        if kind:
            layer[p, 2, 3] = 1.0
        else:
            layer[p, 0, 1:] = 1.0
    skips = SkipEffects(layer, layer.clone(), torch.zeros(P, L), torch.zeros(P, L),
                        torch.ones(P, L), [[8]] * P,
                        meta={"n_prompts": P, "n_layers": L, "aggregate": "mean"})
    est = depth_score_estimate(skips, n_boot=400, seed=3)
    assert est["value"] == pytest.approx(2 * 2 / 8)  # 2 of 8 prompts are kind B
    # the interval, recomputed from the same resamples by the closed form 2 * (share of B)
    b = np.asarray(kinds)
    shares = [2 * b[idx].mean() for idx in bootstrap_indices(P, 400, 3)]
    lo, hi = np.quantile(shares, [0.025, 0.975])
    assert est["ci"] == pytest.approx([lo, hi])
    assert est["ci"][0] <= est["value"] <= est["ci"][1] and est["ci"][0] < est["ci"][1]
    assert est["n_layers"] == L and est["n_boot"] == 400
