"""Studies and run directories: documented files, resume after a crash, corrupt files, config
changes; the CLI in-process; grids locally and on Ray."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from effective_depth.cli import main
from effective_depth.errors import ConfigError, ResultsError
from effective_depth.metrics.skip_effects import draw_cuts
from effective_depth.store.results import load_run
from effective_depth.study import METRICS, StudyConfig, run_study


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoints):
    return str(tiny_checkpoints["qwen2"])


def _config(model, **kw):
    base = {"model": model, "task": "multistep", "task_params": {"steps": 4, "format": "scratchpad"},
            "n_examples": 4, "n_boot": 40, "integrated_gradients.steps": 8,
            "integrated_gradients.map_examples": 1, "erasure.map_examples": 1,
            "erasure.n_reference": 3}
    base.update(kw)
    return StudyConfig.from_dict(base)


@pytest.mark.slow
def test_run_directory_holds_the_documented_files(tmp_path, tiny_model):
    res = run_study(_config(tiny_model), tmp_path / "run", progress=False, dashboard=False)
    path = res.path
    for name in ("config.json", "inputs.json", "results.json", "tensors.safetensors"):
        assert (path / name).is_file(), name
    results = json.loads((path / "results.json").read_text())
    L = results["model"]["n_layers"]
    assert results["completed"] == list(METRICS)
    assert len(results["metrics"]["contributions"]["curves"]["rel_attn"]) == L
    assert len(results["metrics"]["logit_lens"]["curves"]["kl"]) == L
    assert len(results["metrics"]["logit_lens"]["curves"]["overlap"]) == L
    assert len(results["metrics"]["skip_effects"]["curves"]["output_effect"]) == L
    # every measurement's wall time and peak memory (the process holds at least the weights)
    assert set(results["resources"]) == set(METRICS)
    for name, used in results["resources"].items():
        assert used["seconds"] == results["timing"][name] >= 0
        if used["rss_kind"] == "sampled":
            assert used["peak_rss_gib"] > 0.05 and used["peak_cuda_gib"] is None
    # the stored estimates are those of the stored per-prompt data (recomputed from the loaded
    # measurements with the run's bootstrap settings), with ratio = (layer + 1) / L
    from effective_depth.analysis.estimation import estimate_all

    loaded = load_run(path)
    again = estimate_all({m: loaded.metric(m) for m in loaded.completed}, n_boot=40, seed=0)
    for name in ("ed_cos", "ed_kl", "ed_overlap", "ed_skip", "ed_task", "ed_prune"):
        est = results["depth"][name]
        want = again[name].to_dict()
        assert (est["layer"], est.get("ci"), est.get("reason")) == (want["layer"], want["ci"], want["reason"])
        assert est["ratio"] == (None if est["layer"] is None else (est["layer"] + 1) / L)
    inputs = json.loads((path / "inputs.json").read_text())
    ex = inputs["examples"][0]
    assert ex["tokens"][0] == 1 and len(ex["tokens"]) == len(ex["str_tokens"])
    assert ex["cuts"] == draw_cuts(len(ex["tokens"]), 4, "0:0")  # the documented cut rule
    run = load_run(path)
    assert run.metric("skip_effects").layer_effect.shape == (L, L)
    torch.testing.assert_close(run.metric("skip_effects").layer_effect,
                               run.tensors["metrics.skip_effects.layer_effect"])
    # safetensors: an 8-byte little-endian header length, a JSON header describing every tensor,
    # then raw data; no file of the run is a pickle (b"\x80") or a torch.save zip (b"PK")
    raw = (path / "tensors.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert set(header) - {"__metadata__"} == set(run.tensors)
    assert all(set(v) == {"dtype", "shape", "data_offsets"} for k, v in header.items() if k != "__metadata__")
    assert max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__") == len(raw) - 8 - n
    for f in path.iterdir():
        if f.is_file():
            assert f.read_bytes()[:2] not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"PK"), f.name


@pytest.mark.slow
def test_killed_run_resumes_and_equals_an_uninterrupted_run(tmp_path, tiny_model):
    config = _config(tiny_model)
    full = run_study(config, tmp_path / "full", progress=False, dashboard=False)

    class Killed(Exception):
        pass

    def crash(name):
        if name == "logit_lens":
            raise Killed

    with pytest.raises(Killed):
        run_study(config, tmp_path / "partial", progress=False, dashboard=False, after_metric=crash)
    partial = json.loads((tmp_path / "partial" / "results.json").read_text())
    assert partial["completed"] == ["contributions", "logit_lens"]
    resumed = run_study(config, tmp_path / "partial", progress=False, dashboard=False)
    assert resumed.reused == ["contributions", "logit_lens"]
    assert resumed.computed == list(METRICS[2:])
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "partial" / "results.json").read_text())
    for key in ("metrics", "depth", "accuracy", "completed"):
        assert a[key] == b[key], key
    ta, tb = load_run(full.path).tensors, load_run(resumed.path).tensors
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=0, equal_nan=True)


@pytest.mark.slow
def test_changed_config_and_corrupt_results_are_clear_errors(tmp_path, tiny_model):
    path = tmp_path / "run"
    run_study(_config(tiny_model, metrics=("contributions",)), path, progress=False, dashboard=False)
    with pytest.raises(ResultsError, match="different config \\(differs in: n_examples\\)"):
        run_study(_config(tiny_model, metrics=("contributions",), n_examples=3), path,
                  progress=False, dashboard=False)
    (path / "results.json").write_text('{"completed": ["contributions"], "metr')
    with pytest.raises(ResultsError, match="results.json is corrupt.*--force"):
        run_study(_config(tiny_model, metrics=("contributions",)), path, progress=False, dashboard=False)
    redone = run_study(_config(tiny_model, metrics=("contributions",)), path, force=True,
                       progress=False, dashboard=False)
    assert redone.computed == ["contributions"]
    assert json.loads((path / "results.json").read_text())["status"] == "complete"


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown metric 'logit_lense'.*did you mean 'logit_lens'"):
        StudyConfig(metrics=("logit_lense",))
    with pytest.raises(ConfigError, match="n_examples must be >= 1"):
        StudyConfig(n_examples=0)
    with pytest.raises(ConfigError, match="threshold ed_kl must be in \\(0, 1\\)"):
        StudyConfig(thresholds={"ed_kl": 2})
    with pytest.raises(ConfigError, match="unknown study options \\['n_example'\\]"):
        StudyConfig.from_dict({"n_example": 3})
    cfg = StudyConfig(metrics=("logit_lens", "contributions"))
    assert cfg.metrics == ("contributions", "logit_lens")  # always run in the canonical order
    assert StudyConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.slow
def test_cli_run_writes_files_and_prints_the_table(tmp_path, tiny_model):
    out = tmp_path / "cli-run"
    result = CliRunner().invoke(main, [
        "run", "--model", tiny_model, "--task", "addition", "--param", "digits=3",
        "--n-examples", "4", "--n-boot", "30", "--metrics", "contributions,logit_lens,skip_effects",
        "--skip-mode", "current", "--out", str(out), "--quiet", "--no-dashboard",
    ])
    assert result.exit_code == 0, result.output
    assert "Effective depth" in result.output and "ed_kl" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["task"]["params"]["digits"] == 3
    assert results["completed"] == ["contributions", "logit_lens", "skip_effects"]
    # rerun: everything reused
    again = CliRunner().invoke(main, [
        "run", "--model", tiny_model, "--task", "addition", "--param", "digits=3",
        "--n-examples", "4", "--n-boot", "30", "--metrics", "contributions,logit_lens,skip_effects",
        "--skip-mode", "current", "--out", str(out), "--quiet", "--no-dashboard",
    ])
    assert again.exit_code == 0 and "reused" in again.output


@pytest.mark.parametrize("args,message", [
    (["run", "--model", "gtp2", "--task", "addition"], "unknown model 'gtp2'"),
    (["run", "--model", "/no/such/dir", "--task", "addition"], "does not exist"),
    (["run", "--task", "adition"], "unknown task 'adition'"),
    (["run", "--task", "addition", "--param", "digits=0"], "must be in 1..20"),
    (["run", "--task", "addition", "--param", "digits"], "expected NAME=VALUE"),
    (["run", "--metrics", "logit"], "unknown metric 'logit'"),
    (["compare", "/no/such/run"], "does not exist"),
    (["grid", "--config", "/no/such/grid.yaml"], "does not exist"),
])
def test_cli_bad_arguments_are_one_line_errors(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") <= 4
    assert not (tmp_path / "runs").exists()  # nothing written for a bad command


def test_cli_listing_commands():
    runner = CliRunner()
    tasks = runner.invoke(main, ["tasks"])
    assert tasks.exit_code == 0 and "multiplication" in tasks.output and "digits" in tasks.output
    models = runner.invoke(main, ["models"])
    assert models.exit_code == 0 and "zoo/add-4l" in models.output


def _grid(tmp_path, model):
    from effective_depth.study.grid import grid_from_dict

    return grid_from_dict({
        "out": str(tmp_path / "grid"),
        "base": {"n_examples": 3, "metrics": ["contributions", "logit_lens"], "n_boot": 20},
        "models": [model],
        "tasks": [{"name": "addition", "levels": {"digits": [2, 3]}},
                  {"name": "multiplication", "levels": {"digits": [1, 2]}}],
        "compare": True,
    })


@pytest.mark.slow
def test_local_grid_and_comparison(tmp_path, tiny_model):
    from effective_depth.study.grid import run_grid

    grid = _grid(tmp_path, tiny_model)
    assert len(grid.cells) == 4
    summaries = run_grid(grid, progress=False)
    assert all(s["computed"] == ["contributions", "logit_lens"] for s in summaries)
    comparison = json.loads((tmp_path / "grid" / "comparison" / "comparison.json").read_text())
    assert len(comparison["runs"]) == 4
    trends = [r for r in comparison["difficulty"] if r["estimator"] == "ed_kl"]
    assert {r["task"] for r in trends} == {"addition", "multiplication"}
    assert all(r["levels"] in ([2, 3], [1, 2]) for r in trends)


@pytest.mark.slow
def test_ray_grid_equals_local_grid(tmp_path, tiny_model):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
    from effective_depth.study.grid import run_grid

    local = run_grid(_grid(tmp_path / "local", tiny_model), progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_grid(_grid(tmp_path / "ray", tiny_model), executor="ray")
        # a cell that fails at run time: one line, and the other cells still finish
        from effective_depth.study.grid import grid_from_dict

        failing = grid_from_dict({
            "out": str(tmp_path / "failing"), "models": [tiny_model],
            "base": {"n_examples": 3, "metrics": ["logit_lens"], "n_boot": 10},
            "tasks": [{"name": "addition", "levels": {"digits": [2, 3]}},
                      {"name": "prompts", "params": {"path": str(tmp_path / "gone.jsonl")}}],
        })
        seen = []
        mixed = run_grid(failing, executor="ray", progress=False, on_cell=seen.append)
    finally:
        ray.shutdown()
    assert len(seen) == 3 and [("error" in s) for s in mixed] == [False, False, True]
    assert "does not exist" in mixed[2]["error"] and "\n" not in mixed[2]["error"]
    assert (tmp_path / "failing" / "comparison" / "comparison.json").is_file()
    assert len(remote) == len(local) == 4
    for a, b in zip(local, remote):
        ra = json.loads((tmp_path / "local" / "grid" / a["out"].split("/grid/")[-1] / "results.json").read_text())
        rb = json.loads((tmp_path / "ray" / "grid" / b["out"].split("/grid/")[-1] / "results.json").read_text())
        # Ray workers run with other thread counts: float reductions may differ in the last bits
        _assert_nested_close(ra["metrics"], rb["metrics"])
        _assert_nested_close(ra["depth"], rb["depth"])


def _assert_nested_close(a, b, path="", tol=1e-5):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_nested_close(a[k], b[k], f"{path}.{k}", tol)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_nested_close(x, y, f"{path}[{i}]", tol)
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= tol * max(1.0, abs(a)), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_experiment_configs_parse():
    from pathlib import Path

    from effective_depth.study.grid import load_grid

    root = Path(__file__).resolve().parent.parent / "experiments"
    expected = {"zoo_scale.yaml": 4, "zoo_training.yaml": 2, "zoo_difficulty.yaml": 4,
                "paper_scale.yaml": 4, "paper_training.yaml": 2, "paper_difficulty.yaml": 5}
    for name, n in expected.items():
        grid = load_grid(root / name)
        assert len(grid.cells) == n, name
        assert len({c.out for c in grid.cells}) == n, name  # one run directory per cell
    diff = load_grid(root / "zoo_difficulty.yaml")
    assert [c.config.task_params["digits"] for c in diff.cells] == [1, 2, 3, 4]
    assert load_grid(root / "zoo_training.yaml").pairs == [("zoo/add-4l", "zoo/add-4l-scratch")]


@pytest.mark.slow
def test_cli_run_config_file_and_set(tmp_path, tiny_model):
    cfg = tmp_path / "study.yaml"
    cfg.write_text("task: multistep\ntask_params: {steps: 4, format: scratchpad}\nn_examples: 3\n"
                   "metrics: [contributions, skip_effects]\nn_boot: 20\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--model", tiny_model, "--config", str(cfg),
                                       "--set", "skip_effects.cut_start=4",
                                       "--set", "skip_effects.cut_stride=2",
                                       "--n-examples", "2", "--out", str(out), "-q", "--no-dashboard"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["n_examples"] == 2  # the command line overrides the file
    skips = saved["options"]["skip_effects"]  # --set MEASUREMENT.OPTION lands in the options
    assert skips["cut_start"] == 4 and skips["cut_stride"] == 2 and saved["task"] == "multistep"
    cuts = [ex["cuts"] for ex in json.loads((out / "inputs.json").read_text())["examples"]]
    assert all(c and min(c) >= 4 and all((x - 4) % 2 == 0 for x in c) for c in cuts)
    bad = CliRunner().invoke(main, ["run", "--model", tiny_model, "--set", "cut_strt=4"])
    assert bad.exit_code != 0 and "unknown study options ['cut_strt']" in bad.output
    assert "did you mean 'skip_effects.cut_start'" in bad.output


@pytest.mark.slow
def test_an_integrated_gradients_gap_warning_reaches_results_json(tmp_path, tiny_model, monkeypatch):
    import importlib

    module = importlib.import_module("effective_depth.metrics.integrated_gradients")
    monkeypatch.setattr(module, "GAP_TOL", 0.0)  # every row's (nonzero) gap is above it
    config = _config(tiny_model, metrics=("integrated_gradients",),
                     **{"integrated_gradients.rule": "riemann_left", "integrated_gradients.steps": 2})
    res = run_study(config, tmp_path / "run", progress=False, dashboard=False)
    codes = [w["code"] for w in res.results["warnings"]]
    assert codes.count("ig_completeness_gap") == 1
    gaps = res.results["metrics"]["integrated_gradients"]["curves"]["completeness_gap"]
    assert len(gaps) == 1 and max(abs(g) for g in gaps[0]) > 0
    # resumed: the stored measurement's warning is kept
    again = run_study(config, tmp_path / "run", progress=False, dashboard=False)
    assert again.reused == ["integrated_gradients"]
    assert [w["code"] for w in again.results["warnings"]].count("ig_completeness_gap") == 1


def test_grid_of_chosen_models_writes_the_whole_grids_cells(tmp_path):
    """`grid --model M` keeps M's cells (same directories as the whole grid's) and the pairs
    among the chosen models; an unknown model is an error listing the grid's models."""
    import yaml

    from effective_depth.errors import ConfigError
    from effective_depth.study.grid import load_grid

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({
        "out": str(tmp_path / "grid"), "models": ["zoo/add-4l", "zoo/add-12l", "zoo/add-2l"],
        "tasks": [{"name": "addition", "levels": {"digits": [2, 3]}}],
        "pairs": [["zoo/add-4l", "zoo/add-12l"], ["zoo/add-2l", "zoo/add-4l"]]}))
    whole = load_grid(path)
    some = load_grid(path, models=["zoo/add-12l", "zoo/add-4l"])
    assert len(whole.cells) == 6 and len(some.cells) == 4
    assert {c.out for c in some.cells} < {c.out for c in whole.cells}
    assert {c.config.model for c in some.cells} == {"zoo/add-4l", "zoo/add-12l"}
    assert some.pairs == [("zoo/add-4l", "zoo/add-12l")]
    with pytest.raises(ConfigError, match="zoo/add-8l not among the models.*zoo/add-2l"):
        load_grid(path, models=["zoo/add-8l"])
