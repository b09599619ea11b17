"""The measurement registry: a measurement registered from a test file runs in a study, is
stored, loaded back, estimated with a bootstrap CI and offered by the CLI — nothing else names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner

import effective_depth as ed
from effective_depth.cli import main
from effective_depth.engine import get_adapter
from effective_depth.errors import ConfigError
from effective_depth.metrics.base import MetricResult
from effective_depth.metrics.registry import (
    EstimatorSpec,
    MetricSpec,
    estimator_specs,
    metric_names,
    register_metric,
    registered,
)


@dataclass
class LastTokenNorm(MetricResult):
    """Per prompt and block: the norm of the last token's residual entering the block."""

    name: ClassVar[str] = "toy_norm"
    norms: torch.Tensor  # [prompt, L]

    def norm_of(self, idx=None):
        norms = self.norms if idx is None else self.norms[torch.as_tensor(idx)]
        return norms.mean(0)

    def curves(self):
        return {"norm": self.norm_of().tolist()}

    def tensors(self):
        return {"norms": self.norms}

    @classmethod
    def from_tensors(cls, tensors, meta):
        return cls(tensors["norms"], meta=meta)


def _toy_run(ctx):
    adapter = get_adapter(ctx.model)
    resid = adapter.clean(ctx.batch.tokens).resid.float()  # [L+1, batch, pos, d]
    last = (ctx.batch.lengths - 1).to(resid.device)
    norms = torch.stack([resid[:-1, b, last[b]].norm(dim=-1) for b in range(ctx.batch.size)])
    return LastTokenNorm(norms.cpu(), meta={"n_prompts": ctx.batch.size,
                                            "n_layers": adapter.n_layers})


def _largest_norm(result, tau, rules):
    return lambda idx: (int(result.norm_of(idx).argmax()), None)


TOY = MetricSpec(name="toy_norm", result_type=LastTokenNorm, run=_toy_run,
                 description="last-token residual norm per block",
                 estimators=(EstimatorSpec("ed_toy", "toy_norm", _largest_norm, threshold=0.5),))


@pytest.mark.slow
def test_a_measurement_registered_here_runs_in_a_study(tmp_path):
    with registered(TOY):
        assert metric_names()[-1] == "toy_norm" and "ed_toy" in estimator_specs()
        cfg = ed.StudyConfig(model="zoo/add-2l", metrics=("logit_lens", "toy_norm"),
                             n_examples=6, n_boot=50, precision="fp32")  # recomputed in fp32
        res = ed.run_study(cfg, tmp_path / "run", progress=False, dashboard=False)
        assert res.computed == ["logit_lens", "toy_norm"]

        # an independent computation of the same numbers through the model's own cache
        model = ed.load_model("zoo/add-2l")
        inputs = json.loads((tmp_path / "run" / "inputs.json").read_text())["examples"]
        norms = []
        for ex in inputs:  # one prompt at a time, no padding
            _, cache = model.run_with_cache(torch.tensor([ex["tokens"]]))
            norms.append(torch.stack([cache[f"blocks.{b}.hook_resid_pre"][0, -1].norm()
                                      for b in range(2)]))
        expected = torch.stack(norms).mean(0)
        stored = json.loads((tmp_path / "run" / "results.json").read_text())
        torch.testing.assert_close(torch.tensor(stored["metrics"]["toy_norm"]["curves"]["norm"]),
                                   expected, atol=1e-4, rtol=1e-4)
        est = stored["depth"]["ed_toy"]
        assert est["layer"] == int(expected.argmax()) and est["params"]["threshold"] == 0.5
        assert est["ci"] is not None and est["n_boot"] == 50

        run = ed.load_run(tmp_path / "run")
        torch.testing.assert_close(run.metric("toy_norm").norm_of(), expected, atol=1e-4, rtol=1e-4)
        again = ed.run_study(cfg, tmp_path / "run", progress=False, dashboard=False)
        assert again.reused == ["logit_lens", "toy_norm"]

        cli = CliRunner().invoke(main, ["metrics"])
        assert "toy_norm" in cli.output and "ed_toy" in cli.output
        help_text = CliRunner().invoke(main, ["run", "--help"]).output
        assert "toy_norm" in help_text.replace("\n", " ").replace("  ", " ")
    assert "toy_norm" not in metric_names()


def test_duplicate_names_are_refused():
    with registered(TOY), pytest.raises(ConfigError, match="already registered"):
        register_metric(TOY)
    clash = MetricSpec(name="other", result_type=LastTokenNorm, run=_toy_run,
                       estimators=(EstimatorSpec("ed_kl", "other", _largest_norm),))
    with pytest.raises(ConfigError, match="estimator named 'ed_kl' is already registered"):
        register_metric(clash)


def test_study_code_names_no_measurement():
    """study, results, depth and compare read the registry: no built-in name appears there."""
    from pathlib import Path

    root = Path(ed.__file__).parent
    for module in ("study/run.py", "store/results.py", "analysis/depth.py", "store/compare.py",
                   "study/grid.py"):
        text = (root / module).read_text()
        for name in ("\"contributions\"", "\"logit_lens\"", "\"behaviour\"", "\"erasure\"",
                     "\"integrated_gradients\"", "\"skip_effects\""):
            assert name not in text, f"{module} names {name}"
