"""bfloat16 and float16 models on CPU: every measurement within a stated tolerance of float32,
the same effective-depth blocks on a fixed case, and every stored reduction in float32.

Tolerances are relative to the largest value of each quantity (docs/paper_protocol.md,
"Precision"): bfloat16 keeps 8 mantissa bits, float16 11. Layer effects are ratios with small
denominators; residual erasure and integrated gradients compare near-saturated lens
distributions and gradients and move most (measured: bfloat16 6.7% / 8.5%, float16 5.4% / 0.3%).
"""

from __future__ import annotations

import pytest
import torch

import effective_depth as ed
from effective_depth import metrics as M
from effective_depth.analysis.estimation import estimate_all
from effective_depth.engine import encode_batch

#: end to end on models (the fast tier, -m 'not slow', leaves these to the full run)
pytestmark = pytest.mark.slow

#: (bfloat16, float16) tolerance, relative to max |float32 value|
TOLERANCE = {
    "contributions": (0.005, 0.001),
    "kl": (0.01, 0.001),
    "overlap": (0.02, 0.01),
    "output_effect": (0.005, 0.001),
    "layer_effect": (0.05, 0.02),
    "erasure": (0.1, 0.1),
    "integrated_gradients": (0.15, 0.02),
}


def _measure(dtype):
    model = ed.load_model("zoo/add-4l", device="cpu", dtype=dtype)
    assert next(model.parameters()).dtype == getattr(torch, dtype)
    batch = encode_batch(model.tokenizer, ed.get_task("addition", digits=3).examples(8))
    results = {
        "contributions": M.contributions(model, batch),
        "logit_lens": M.logit_lens(model, batch, k=5),
        "skip_effects": M.skip_effects(model, batch, mode="current"),
        "erasure": M.erasure(model, batch.select([0, 1]), reference=batch),
        "integrated_gradients": M.integrated_gradients(model, batch.select([0]), steps=8,
                                                       rule="riemann_left"),
    }
    quantities = {
        "contributions": torch.stack([torch.tensor(v) for k, v in results["contributions"].curves().items()
                                      if isinstance(v, list) and v and isinstance(v[0], float)]),
        "kl": results["logit_lens"].kl,
        "overlap": results["logit_lens"].overlap,
        "output_effect": results["skip_effects"].output_effect,
        "layer_effect": results["skip_effects"].layer_effect,
        "erasure": torch.cat([m.nan_to_num().flatten() for m in results["erasure"].maps]),
        "integrated_gradients": results["integrated_gradients"].maps[0],
    }
    blocks = {k: v.layer for k, v in estimate_all(results, n_boot=0).items()}
    return results, quantities, blocks


@pytest.fixture(scope="module")
def reference():
    return _measure("float32")


@pytest.mark.parametrize("dtype,column", [("bfloat16", 0), ("float16", 1)])
def test_half_precision_matches_float32(reference, dtype, column):
    _, ref_q, ref_blocks = reference
    results, quantities, blocks = _measure(dtype)
    for result in results.values():
        for name, tensor in result.tensors().items():
            if tensor.is_floating_point():
                assert tensor.dtype == torch.float32, (result.name, name, tensor.dtype)
    for name, value in quantities.items():
        ref = ref_q[name]
        scale = float(ref.abs().max())
        err = float((value.float() - ref.float()).abs().max())
        assert err <= TOLERANCE[name][column] * scale, (name, err, scale)
        assert err > 0 or name == "overlap"  # the half-precision run really ran in half precision
    assert blocks == ref_blocks
    assert ref_blocks["ed_kl"] == 2 and ref_blocks["ed_skip"] == 3  # a fixed, known case
