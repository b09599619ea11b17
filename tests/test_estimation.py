"""The one estimation module: run-level and per-prompt estimates share one binding of each
estimator (threshold, parameters, the reference-rule variant it declares), and curve bands come
from one function."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from effective_depth.analysis.estimation import bound_estimators, estimate_all, per_prompt_estimates
from effective_depth.metrics.registry import EstimatorSpec, MetricSpec, registered
from effective_depth.stats import bootstrap_indices, curve_band, curve_bands


@dataclass
class _Toy:
    """Three prompts; prompt i's depth is block i (of 4)."""

    meta: dict = field(default_factory=lambda: {"n_layers": 4, "n_prompts": 3})
    n_prompts: int = 3


def _median_rule(result, tau, rules):
    def apply(idx):
        idx = list(range(result.n_prompts)) if idx is None else idx
        return int(np.median(idx)), None
    return apply


def _spec():
    return MetricSpec(name="toy_estimation", result_type=_Toy, run=lambda ctx: None, estimators=(
        EstimatorSpec("ed_toy_ref", "toy_estimation", _median_rule, 0.5, reference_rules=True),
        EstimatorSpec("ed_toy_plain", "toy_estimation", _median_rule),
    ))


def test_the_reference_variant_is_a_property_of_the_estimator():
    with registered(_spec()):
        metrics = {"toy_estimation": _Toy()}
        ref = estimate_all(metrics, rules="reference", n_boot=0)
        assert ref["ed_toy_ref"].params == {"threshold": 0.5, "rules": "reference"}
        assert ref["ed_toy_plain"].params == {}
        assert estimate_all(metrics, n_boot=0)["ed_toy_ref"].params == {"threshold": 0.5}
        per = per_prompt_estimates(metrics, rules="reference")
        assert per["ed_toy_ref"].params == {"threshold": 0.5, "rules": "reference"}
        assert per["ed_toy_plain"].params == {}
        # the same binding: run-level on all prompts (median of 0,1,2), per prompt its own block
        assert ref["ed_toy_ref"].layer == 1 and per["ed_toy_ref"].layers == [0, 1, 2]
        bound = {b.name: b for b in bound_estimators(metrics, {"ed_toy_ref": 0.25})}
        assert bound["ed_toy_ref"].threshold == 0.25 and bound["ed_toy_plain"].threshold is None
        with pytest.raises(Exception, match="rules must be one of"):
            bound_estimators(metrics, rules="notebook")


def test_curve_bands_come_from_one_set_of_resamples():
    """Two curves banded together equal each banded alone, and both equal the percentiles of the
    resampled means computed by hand."""
    values = np.array([[0.0, 1.0, np.nan], [2.0, 3.0, np.nan], [4.0, 9.0, np.nan], [6.0, 5.0, np.nan]])

    def curves(idx):
        return {"a": values[idx].mean(0), "b": -values[idx].mean(0)}

    bands = curve_bands(curves, 4, n_boot=50, seed=3, level=0.9)
    a_lo, a_hi = curve_band(lambda idx: curves(idx)["a"], 4, n_boot=50, seed=3, level=0.9)
    np.testing.assert_array_equal(bands["a"][0], a_lo)
    np.testing.assert_array_equal(bands["a"][1], a_hi)
    means = np.stack([values[i].mean(0) for i in bootstrap_indices(4, 50, 3)])
    np.testing.assert_allclose(a_lo[:2], np.quantile(means[:, :2], 0.05, axis=0))
    np.testing.assert_allclose(bands["b"][1][:2], -np.quantile(means[:, :2], 0.05, axis=0))
    assert np.isnan(a_lo[2]) and np.isnan(a_hi[2])  # NaN in every resample: no band there
    assert curve_bands(curves, 1, n_boot=50) is None and curve_bands(curves, 4, n_boot=0) is None
    assert curve_bands(lambda idx: None, 4, n_boot=5) is None  # cannot resample: no band
