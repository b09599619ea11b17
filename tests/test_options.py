"""A measurement's options live with the measurement: nested in StudyConfig and config.json,
set with ``--set MEASUREMENT.OPTION=VALUE``; a config.json of an earlier version (flat options)
is still read; the study and the planner make the same decisions from one function."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pytest
import torch
from click.testing import CliRunner

import effective_depth as ed
from effective_depth.cli import _settings, main
from effective_depth.errors import ConfigError, ResultsError
from effective_depth.metrics.base import MetricResult
from effective_depth.metrics.integrated_gradients import IntegratedGradientsOptions
from effective_depth.metrics.options import FLAT_OPTIONS, MetricOptions
from effective_depth.metrics.registry import MetricSpec, dependency_order, metric_names, registered
from effective_depth.metrics.skip_effects import SkipEffectsOptions
from effective_depth.store.results import config_hash, load_run
from effective_depth.study import StudyConfig

#: the config.json fields of a run written before options were nested (the flat format)
FLAT_FIELDS = ("model", "task", "task_params", "metrics", "n_examples", "seed", "thresholds",
               "rules", "skip_front", "include_front", "lens_k", "tuned_lens_steps",
               "tuned_lens_ridge", "tuned_lens_examples", "tuned_lens_data", "skip_mode", "skip_component",
               "aggregate", "n_cuts", "cut_start", "cut_stride", "cut_margin", "map_examples",
               "ig_steps", "ig_rule", "n_reference", "n_boot", "ci_level", "device", "dtype",
               "backend", "process_weights", "batch_size", "allow_lossy_tokenization",
               "chat_template", "system_prompt")


def flat_dict(config: StudyConfig) -> dict:
    """``config`` as the earlier version wrote it in config.json: every option at the top."""
    d = config.to_dict()
    d.pop("precision")  # options added after the flat format
    d.pop("positions")
    options = d.pop("options")
    for name, ((measurement, option), *_) in FLAT_OPTIONS.items():
        d[name] = options[measurement][option]
    assert set(d) == set(FLAT_FIELDS)
    return {k: d[k] for k in FLAT_FIELDS}


def test_options_are_nested_and_round_trip():
    cfg = StudyConfig(model="zoo/add-2l", options={
        "skip_effects": {"mode": "current", "cut_start": 4},
        "integrated_gradients": IntegratedGradientsOptions(steps=8, rule="trapezoid")})
    assert cfg.options["skip_effects"] == SkipEffectsOptions(mode="current", cut_start=4)
    assert cfg.options["logit_lens"].k is None  # a measurement not given takes its defaults
    d = cfg.to_dict()
    assert d["options"]["skip_effects"]["mode"] == "current"
    assert d["options"]["integrated_gradients"] == {"steps": 8, "rule": "trapezoid",
                                                    "map_examples": 3}
    assert not set(FLAT_OPTIONS) & set(d)
    back = StudyConfig.from_dict(json.loads(json.dumps(d)))
    assert back == cfg and config_hash(back.to_dict()) == config_hash(d)


def test_dotted_keys_are_read_into_the_options():
    nested = StudyConfig(options={"skip_effects": {"mode": "current", "n_cuts": 2},
                                  "integrated_gradients": {"steps": 4, "map_examples": 2},
                                  "erasure": {"map_examples": 2}, "logit_lens": {"k": 1}})
    dotted = StudyConfig.from_dict({"skip_effects.mode": "current", "skip_effects.n_cuts": 2,
                                    "integrated_gradients.steps": 4,
                                    "integrated_gradients.map_examples": 2,
                                    "erasure.map_examples": 2, "logit_lens.k": 1})
    assert nested == dotted
    # a dotted key given beside a nested one wins (the command line merges --set in as such keys)
    assert StudyConfig.from_dict({"options": {"skip_effects": {"mode": "future"}},
                                  "skip_effects.mode": "current"}).options["skip_effects"].mode == "current"
    # an option without its measurement is no study option: the error names the full name
    with pytest.raises(ConfigError, match=r"unknown study options \['cut_strt'\]; did you mean "
                                          "'skip_effects.cut_start'"):
        StudyConfig.from_dict({"cut_strt": 4})


@pytest.mark.slow
def test_the_experiment_files_still_read():
    from pathlib import Path

    from effective_depth.study.grid import load_grid

    grid = load_grid(Path(__file__).parent.parent / "experiments" / "zoo_difficulty.yaml")
    cfg = grid.cells[0].config
    assert cfg.options["skip_effects"].cut_start == 4 and cfg.options["skip_effects"].cut_margin == 2
    assert cfg.options["logit_lens"].k == 1 and cfg.options["integrated_gradients"].steps == 128
    assert cfg.options["erasure"].map_examples == cfg.options["integrated_gradients"].map_examples == 2


def test_sweep_files_take_nested_options(tmp_path):
    from effective_depth.study.grid import grid_from_dict

    grid = grid_from_dict({"out": str(tmp_path), "models": ["zoo/add-2l"],
                           "base": {"n_examples": 3,
                                    "options": {"skip_effects": {"mode": "current"}}}})
    assert grid.cells[0].config.options["skip_effects"].mode == "current"
    with pytest.raises(ConfigError, match="skip_effects.*mode.*one of future, current"):
        grid_from_dict({"models": ["zoo/add-2l"],
                        "base": {"options": {"skip_effects": {"mode": "sideways"}}}})


def test_options_are_validated_by_their_measurement():
    with pytest.raises(ConfigError, match="mode must be one of future, current, got 'sideways'"):
        StudyConfig(options={"skip_effects": {"mode": "sideways"}})
    with pytest.raises(ConfigError, match="skip_effects.n_cuts must be >= 1, got 0"):
        SkipEffectsOptions(n_cuts=0)
    # a rule that involves the study's core options
    with pytest.raises(ConfigError, match=r"skip_effects.cut_start must be > skip_front \(2\)"):
        StudyConfig(skip_front=2, options={"skip_effects": {"cut_start": 2}})
    with pytest.raises(ConfigError, match="no measurement with options named 'skip_efects'.*"
                                          "skip_effects"):
        StudyConfig(options={"skip_efects": {"mode": "current"}})
    with pytest.raises(ConfigError, match="unknown skip_effects options \\['mdoe'\\].*mode"):
        StudyConfig(options={"skip_effects": {"mdoe": "current"}})


def test_set_parses_typed_values_and_names_what_is_wrong():
    got = _settings(("skip_effects.mode=current", "integrated_gradients.steps=8",
                     "skip_effects.cut_start=none", "n_boot=50"))
    assert got == {"skip_effects.mode": "current", "integrated_gradients.steps": 8,
                   "skip_effects.cut_start": None, "n_boot": 50}
    assert type(got["integrated_gradients.steps"]) is int
    with pytest.raises(ConfigError, match=r"logit_lens.k must be int\|none, got '2.5'"):
        _settings(("logit_lens.k=2.5",))
    # a string option stays a string even when it looks like a number
    assert _settings(("tuned_lens.data=123",)) == {"tuned_lens.data": "123"}
    with pytest.raises(ConfigError, match="'skip_efects'.*did you mean.*skip_effects"):
        _settings(("skip_efects.mode=current",))
    with pytest.raises(ConfigError, match="skip_effects has no option 'mdoe'.*mode.*"
                                          "Options of skip_effects: mode, component"):
        _settings(("skip_effects.mdoe=current",))
    with pytest.raises(ConfigError, match=r"skip_effects.mode must be future\|current, got "
                                          "'sideways'"):
        _settings(("skip_effects.mode=sideways",))
    with pytest.raises(ConfigError, match=r"integrated_gradients.steps must be int, got 'many'"):
        _settings(("integrated_gradients.steps=many",))


def test_run_help_lists_every_option_and_the_old_flags_still_work():
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0, result.output
    for text in ("skip_effects.mode=future|current", "skip_effects.component=block|attn|mlp|local",
                 "integrated_gradients.steps=int", "logit_lens.k=int|none",
                 "erasure.n_reference=int", "tuned_lens.data=str|none"):
        assert text in result.output
    bad = CliRunner().invoke(main, ["run", "--skip-mode", "sideways", "--model", "zoo/add-2l"])
    assert bad.exit_code != 0 and "skip_effects.mode must be future|current" in bad.output


# --- an old run directory ----------------------------------------------------------------------
def _study(tmp_path, **kw):
    # fp32: what runs of the flat format computed, so that their results are reused
    cfg = StudyConfig(model="zoo/add-2l", metrics=("contributions", "skip_effects"),
                      n_examples=3, n_boot=10, precision="fp32", **kw)
    return cfg


@pytest.mark.slow
def test_a_run_directory_of_the_flat_format_loads_and_resumes_without_recomputing(tmp_path):
    cfg = _study(tmp_path, options={"skip_effects": {"n_cuts": 2}})
    out = tmp_path / "run"
    first = ed.run_study(cfg, out, progress=False, dashboard=False)
    assert first.computed == ["contributions", "skip_effects"]
    # rewrite it as the earlier version wrote it: flat options, their hash; interrupted after
    # the first measurement
    stored = json.loads((out / "config.json").read_text())
    flat = flat_dict(cfg)
    assert flat["n_cuts"] == 2 and flat["skip_mode"] == "future"
    stored.update({"config": flat, "hash": config_hash(flat)})
    (out / "config.json").write_text(json.dumps(stored))
    results = json.loads((out / "results.json").read_text())
    effect = results["metrics"]["skip_effects"]["curves"]
    results["completed"] = ["contributions"]
    results["status"] = "running"
    (out / "results.json").write_text(json.dumps(results))

    run = load_run(out)  # read with its options nested
    assert run.config["config"]["options"]["skip_effects"]["n_cuts"] == 2
    assert "n_cuts" not in run.config["config"]

    again = ed.run_study(cfg, out, progress=False, dashboard=False)
    assert again.reused == ["contributions"] and again.computed == ["skip_effects"]
    assert again.results["metrics"]["skip_effects"]["curves"] == effect  # same cuts, same numbers
    done = ed.run_study(cfg, out, progress=False, dashboard=False)
    assert done.computed == []

    # the same directory with another option is refused, naming the option
    other = cfg.replace(options={"skip_effects": {"n_cuts": 3}})
    with pytest.raises(ResultsError, match="differs in: skip_effects.n_cuts"):
        ed.run_study(other, out, progress=False, dashboard=False)


# --- the study and the planner decide alike -----------------------------------------------------
@pytest.mark.slow
def test_plan_does_not_count_what_the_study_skips(tmp_path):
    from effective_depth.study import resolve_task
    from effective_depth.study.planner import plan_study
    from effective_depth.study.prepare import prepare_study
    from effective_depth.tasks import get_task

    prompts = tmp_path / "p.txt"  # prompts only: no answers, no training split
    prompts.write_text("12+34=\n56+78=\n11+22=\n")
    cfg = StudyConfig(model="zoo/add-2l", task="prompts", task_params={"path": str(prompts)},
                      n_examples=3, n_boot=10, options={"skip_effects": {"mode": "current"}})
    task = get_task(*resolve_task(cfg)[:1], **resolve_task(cfg)[1])
    prep = prepare_study(cfg, task, task.examples(3))
    assert set(prep.skipped) == {"tuned_lens", "behaviour", "erasure", "integrated_gradients"}
    assert "training" in prep.skipped["tuned_lens"] or "train" in prep.skipped["tuned_lens"]

    plan = plan_study(cfg, calibration=False)
    by_name = {m.name: m for m in plan.measurements}
    for name in prep.skipped:
        m = by_name[name]
        assert m.skipped and m.block_tokens == m.lens_rows == m.grad_block_tokens == 0
        assert m.seconds == 0 and m.peak_bytes == 0 and "skipped by the study" in m.note
    assert plan.total.block_tokens == sum(by_name[n].block_tokens for n in
                                          ("contributions", "logit_lens", "skip_effects"))
    assert by_name["logit_lens"].block_tokens > 0

    res = ed.run_study(cfg, tmp_path / "run", progress=False, dashboard=False)
    assert sorted(res.results["settings"]["skipped_metrics"]) == sorted(prep.skipped)
    assert res.computed == [n for n in metric_names() if n not in prep.skipped]


# --- a measurement with options of its own -------------------------------------------------------
@dataclass(frozen=True)
class PowerOptions(MetricOptions):
    power: int = field(default=2, metadata={"help": "exponent of the norm"})
    where: Literal["last", "first"] = field(default="last", metadata={"help": "which token"})

    def validate(self):
        self.require_positive("power")


@dataclass
class PowerNorm(MetricResult):
    name: ClassVar[str] = "toy_power"
    values: torch.Tensor

    def curves(self):
        return {"value": self.values.mean(0).tolist()}

    def tensors(self):
        return {"values": self.values}

    @classmethod
    def from_tensors(cls, tensors, meta):
        return cls(tensors["values"], meta=meta)


def _power_run(ctx):
    from effective_depth.engine import get_adapter

    adapter = get_adapter(ctx.model)
    resid = adapter.clean(ctx.batch.tokens).resid.float()
    pos = (ctx.batch.lengths - 1) if ctx.options.where == "last" else torch.zeros_like(ctx.batch.lengths)
    values = torch.stack([resid[:-1, b, int(pos[b])].norm(p=ctx.options.power, dim=-1)
                          for b in range(ctx.batch.size)])
    return PowerNorm(values.cpu(), meta={"n_prompts": ctx.batch.size, "power": ctx.options.power,
                                         "where": ctx.options.where})


POWER = MetricSpec(name="toy_power", result_type=PowerNorm, run=_power_run, options=PowerOptions,
                   requires=("logit_lens",), description="a norm of one token's residual")


@pytest.mark.slow
def test_a_measurement_registered_here_gets_its_options_on_the_command_line(tmp_path):
    with registered(POWER):
        assert _settings(("toy_power.power=3",)) == {"toy_power.power": 3}
        with pytest.raises(ConfigError, match="toy_power.where must be last\\|first"):
            _settings(("toy_power.where=middle",))
        with pytest.raises(ConfigError, match="toy_power.power must be >= 1"):
            StudyConfig(options={"toy_power": {"power": 0}})
        help_text = CliRunner().invoke(main, ["run", "--help"]).output
        assert "toy_power.power=int" in help_text and "toy_power.where=last|first" in help_text
        out = tmp_path / "run"
        result = CliRunner().invoke(main, [
            "run", "--model", "zoo/add-2l", "--metrics", "toy_power,contributions", "-n", "2",
            "--n-boot", "0", "--set", "toy_power.power=1", "--set", "toy_power.where=first",
            "--precision", "fp32",  # recomputed below in float32
            "--no-dashboard", "-q", "--out", str(out)])
        assert result.exit_code == 0, result.output
        stored = json.loads((out / "config.json").read_text())
        assert stored["config"]["options"]["toy_power"] == {"power": 1, "where": "first"}
        meta = json.loads((out / "results.json").read_text())["metrics"]["toy_power"]["meta"]
        assert meta["power"] == 1 and meta["where"] == "first"
        # an independent computation: the L1 norm of the first token's residual at every block
        model = ed.load_model("zoo/add-2l")
        tokens = json.loads((out / "inputs.json").read_text())["examples"][0]["tokens"]
        _, cache = model.run_with_cache(torch.tensor([tokens]))
        want = [float(cache[f"blocks.{i}.hook_resid_pre"][0, 0].abs().sum())
                for i in range(model.cfg.n_layers)]
        got = load_run(out).metric("toy_power").values[0].tolist()
        assert got == pytest.approx(want, rel=1e-5)


def test_requires_orders_the_study():
    names = metric_names()
    assert names == ("contributions", "logit_lens", "tuned_lens", "skip_effects", "behaviour",
                     "erasure", "integrated_gradients")
    a = MetricSpec(name="a", result_type=object, run=lambda ctx: None, requires=("c",))
    b = MetricSpec(name="b", result_type=object, run=lambda ctx: None)
    c = MetricSpec(name="c", result_type=object, run=lambda ctx: None, requires=("b",))
    assert [s.name for s in dependency_order([a, b, c])] == ["b", "c", "a"]
    cyc = MetricSpec(name="b", result_type=object, run=lambda ctx: None, requires=("a",))
    with pytest.raises(ConfigError, match="cycle: a -> c -> b -> a"):
        dependency_order([a, cyc, c])
