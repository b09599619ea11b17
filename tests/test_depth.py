"""Effective-depth estimators on hand-built curves, bootstrap CIs, Spearman's rho."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from effective_depth.analysis.depth import spearman, spearman_bootstrap
from effective_depth.analysis.estimation import Estimate, bootstrap_estimate
from effective_depth.errors import ConfigError
from effective_depth.metrics.rules import ed_cos, ed_kl, ed_overlap, ed_prune, ed_skip, ed_task
from effective_depth.stats import percentile_ci


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
    # an independent reference for another seed: resample the 30 prompts 300 times from numpy's
    # generator seeded 2, take the first block of each mean curve below half its maximum, and
    # the 2.5% / 97.5% order statistics of those blocks
    other = bootstrap_estimate("ed_kl", _kl_rule(per_prompt), 30, 8, n_boot=300, seed=2)
    curves = per_prompt.double().numpy()
    first = [int(np.argmax(c < 0.5 * c.max())) for c in
             (curves[i].mean(0) for i in np.random.default_rng(2).integers(0, 30, size=(300, 30)))]
    lo, hi = np.quantile(first, [0.025, 0.975], method="inverted_cdf")
    full = curves.mean(0)
    assert other.layer == int(np.argmax(full < 0.5 * full.max())) == est.layer
    assert other.layer_ci == (lo, hi) and other.ci == ((lo + 1) / 8, (hi + 1) / 8)
    assert other.undefined_fraction == 0.0


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


def _spearman_reference(x, y):
    """Spearman's rho by its definition: Pearson's r of average ranks (O(n^2), no library)."""
    def ranks(v):
        return np.array([sum(w < a for w in v) + (sum(w == a for w in v) + 1) / 2 for a in v])

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / math.sqrt((rx**2).sum() * (ry**2).sum()))


def test_spearman_bootstrap_over_levels():
    """Each level's ratio is the mean of its prompts' values, recomputed on every resample; the
    CI resamples prompts within every level (numpy's generator seeded seed + 7919 × level
    index), as an independent computation here does."""
    levels = [1, 2, 3]
    values = [np.array([0.1, 0.2, 0.6]), np.array([0.3, 0.4, 0.5]), np.array([0.35, 0.6, 0.7])]
    fns = [lambda idx, v=v: float(v.mean() if idx is None else v[idx].mean()) for v in values]
    out = spearman_bootstrap(levels, fns, [3, 3, 3], n_boot=200, seed=5, level=0.9)
    assert out["rho"] == pytest.approx(1.0)  # means 0.3, 0.4, 0.55 rise with the level
    assert out["ratios"] == pytest.approx([0.3, 0.4, 0.55])
    draws = [np.random.default_rng(5 + 7919 * i).integers(0, 3, size=(200, 3)) for i in range(3)]
    rhos = [_spearman_reference(levels, [values[i][draws[i][b]].mean() for i in range(3)])
            for b in range(200)]
    defined = [r for r in rhos if not math.isnan(r)]
    assert out["ci"] == pytest.approx(list(np.quantile(defined, [0.05, 0.95])))
    assert out["undefined_fraction"] == pytest.approx(1 - len(defined) / 200)
    assert out["ci"][0] < 0 < out["ci"][1] <= 1  # three prompts a level: a wide interval
    assert percentile_ci([1.0, 2.0, 3.0], 0.5) == (1.5, 2.5)


def test_spearman_bootstrap_undefined_for_constant_ratios():
    """A constant ratio over the levels has no rho, and no interval, even where resamples vary
    (level 3 reads 0.6 on every resample: rho 0.87 there, never reported)."""
    fns = [lambda idx: 0.5, lambda idx: 0.5, lambda idx: 0.5 if idx is None else 0.6]
    out = spearman_bootstrap([1, 2, 3], fns, [4, 4, 4], n_boot=20)
    assert out["rho"] is None and out["ci"] is None
    assert out["ratios"] == [0.5, 0.5, 0.5] and out["undefined_fraction"] == 0.0


@pytest.mark.slow
def test_depth_score_estimate_on_a_hand_built_matrix():
    """Prompts of two kinds: skipping block 0 matters to later blocks (centre of mass 0), or
    skipping block 2 does (centre 2). With token-weighted means and one count per skipped block,
    the mean effect per skipped block is [n_A, 0, n_B] / n, so the score is 2 n_B / n."""
    import numpy as np

    from effective_depth.analysis.depth import depth_score_estimate
    from effective_depth.metrics import SkipEffects
    from effective_depth.stats import bootstrap_indices

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
