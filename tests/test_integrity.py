"""No silent wrong answers: every input mistake of issue 10 is an error, a recomputation or a
warning stored with the results — never a number of something the user did not ask for."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from effective_depth.analysis.depth import reliability_warnings
from effective_depth.analysis.estimation import Estimate, estimate_all
from effective_depth.cli import main
from effective_depth.errors import ConfigError, ModelError, ResultsError
from effective_depth.metrics.skip_effects import cut_rule, draw_cuts
from effective_depth.store.results import find_runs, load_run
from effective_depth.study import StudyConfig, run_study

ZOO = "zoo/add-2l"
FAST = {"n_boot": 20, "erasure.map_examples": 1, "erasure.n_reference": 2,
        "integrated_gradients.map_examples": 1, "integrated_gradients.steps": 4}


def _prompts(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows))
    return path


def _run(out: Path, **kw):
    cfg = {"model": ZOO, "metrics": ("logit_lens", "behaviour"), **FAST, **kw}
    return run_study(StudyConfig.from_dict(cfg), out, progress=False, dashboard=False)


# --- 1. stale results ---------------------------------------------------------------------------

@pytest.mark.slow
def test_an_edited_prompts_file_is_recomputed_not_reused(tmp_path):
    data = _prompts(tmp_path / "edit.jsonl", [("12+34=", "46"), ("50+25=", "75")])
    params = {"task": "prompts", "task_params": {"path": str(data)}}
    first = _run(tmp_path / "run", **params)
    assert first.computed == ["logit_lens", "behaviour"]
    again = _run(tmp_path / "run", **params)
    assert again.reused == ["logit_lens", "behaviour"] and not again.computed

    _prompts(data, [("12+34=", "46"), ("50+25=", "75"), ("11+11=", "22")])
    third = _run(tmp_path / "run", **params)
    assert third.computed == ["logit_lens", "behaviour"] and not third.reused
    run = load_run(tmp_path / "run")
    assert len(run.inputs["examples"]) == 3
    assert run.metric("behaviour").n_prompts == 3
    assert run.results["task"]["n_examples"] == 3
    assert any(w["code"] == "inputs_changed" for w in run.results["warnings"])


@pytest.mark.slow
def test_changed_model_weights_are_recomputed(tmp_path):
    from safetensors.torch import load_file, save_file

    import effective_depth

    ckpt = tmp_path / "llama-copy"
    shutil.copytree(Path(effective_depth.__file__).parent / "zoo" / "add-2l", ckpt)
    kw = {"model": str(ckpt), "task": "addition", "task_params": {"digits": 3},
          "metrics": ("logit_lens",)}
    _run(tmp_path / "run", **kw)
    weights = load_file(ckpt / "model.safetensors")
    key = next(k for k in weights if "layers.1.mlp.down_proj" in k)
    weights[key] = weights[key] * 2
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    again = _run(tmp_path / "run", **kw)
    assert again.computed == ["logit_lens"]


# --- 3. checkpoints that do not match their config ----------------------------------------------

@pytest.fixture(scope="module")
def broken_checkpoint(tmp_path_factory):
    from safetensors.torch import load_file, save_file

    import effective_depth

    ckpt = tmp_path_factory.mktemp("llama_gemma") / "broken-llama"
    shutil.copytree(Path(effective_depth.__file__).parent / "zoo" / "add-4l", ckpt)
    weights = load_file(ckpt / "model.safetensors")
    kept = {k: v for k, v in weights.items() if ".layers.2." not in k and ".layers.3." not in k}
    kept["model.extra_head.weight"] = torch.zeros(2, 2)
    save_file(kept, ckpt / "model.safetensors", metadata={"format": "pt"})
    return ckpt


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_missing_and_unused_weights_are_a_model_error(broken_checkpoint, backend):
    from effective_depth import load_model

    with pytest.raises(ModelError) as info:
        load_model(str(broken_checkpoint), backend=backend)
    text = str(info.value)
    assert str(broken_checkpoint) in text
    assert "24 weights missing" in text and "model.layers.2.mlp.down_proj.weight" in text
    assert "1 weights unused" in text and "model.extra_head.weight" in text


def test_a_bert_checkpoint_under_the_bridge_is_a_model_error(tmp_path):
    from transformers import BertConfig, BertModel

    from effective_depth import load_model

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    BertModel(cfg).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelError, match="weights missing"):
        load_model(str(tmp_path / "bert"), backend="bridge")


# --- 4. concurrent writers ----------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_writer_gets_a_clear_error(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from filelock import FileLock
        lock = FileLock({str(out / '.lock')!r}); lock.acquire()
        print('locked', flush=True); time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ResultsError, match="being written by another effective-depth process"):
            _run(out, metrics=("logit_lens",))
        result = CliRunner().invoke(main, ["run", "-m", ZOO, "-o", str(out), "-q", "--force",
                                           "--metrics", "logit_lens", "--no-dashboard"])
        assert result.exit_code == 1 and "being written by another" in result.output
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # --force deleted nothing
    finally:
        holder.kill()
        holder.wait()
    assert _run(out, metrics=("logit_lens",)).computed == ["logit_lens"]


# --- 5. the erasure reference -------------------------------------------------------------------

@pytest.mark.slow
def test_erasure_reference_is_recorded_and_warned_when_short(tmp_path):
    rows = [(f"{a}+{a}=", str(2 * a)) for a in range(10, 16)]
    data = _prompts(tmp_path / "six.jsonl", rows)
    base = {"task": "prompts", "task_params": {"path": str(data)}, "metrics": ("erasure",)}
    enough = _run(tmp_path / "a", n_examples=3, **{"erasure.n_reference": 3}, **base)
    meta = enough.results["metrics"]["erasure"]["meta"]
    assert meta["reference"] == {"source": "task", "n": 3, "description": "examples 4..6 of the task"}
    assert not [w for w in enough.results["warnings"] if w["code"] == "erasure_reference"]

    short = _run(tmp_path / "b", n_examples=4, **{"erasure.n_reference": 3}, **base)
    assert short.results["metrics"]["erasure"]["meta"]["reference"]["n"] == 2
    assert short.results["metrics"]["erasure"]["meta"]["n_reference"] == 2
    assert any("only 2 examples beyond" in w["message"] for w in short.results["warnings"])

    none = _run(tmp_path / "c", n_examples=6, **{"erasure.n_reference": 3}, **base)
    ref = none.results["metrics"]["erasure"]["meta"]["reference"]
    assert ref["source"] == "analysed" and ref["n"] == 3
    assert any("analysed prompts themselves" in w["message"] for w in none.results["warnings"])
    inputs = json.loads((tmp_path / "c" / "inputs.json").read_text())
    assert [e["prompt"] for e in inputs["reference"]["examples"]] == [p for p, _ in rows[:3]]


# --- 6. incomplete runs -------------------------------------------------------------------------

@pytest.mark.slow
def test_incomplete_and_stub_runs_are_skipped_with_a_note(tmp_path):
    good = _run(tmp_path / "runs" / "good", metrics=("logit_lens",)).path
    stub = tmp_path / "runs" / "stub"
    stub.mkdir()
    (stub / "config.json").write_text(json.dumps({"hash": "x", "config": {"model": ZOO}}))
    partial = tmp_path / "runs" / "partial"
    shutil.copytree(good, partial)
    results = json.loads((partial / "results.json").read_text())
    results.pop("status")
    (partial / "results.json").write_text(json.dumps(results))
    (tmp_path / "runs" / "dashboard.html").write_text("<html></html>")

    found, notes = find_runs([tmp_path / "runs"])
    assert found == [good]
    assert any("stub: no results.json" in n for n in notes)
    assert any("partial: the study did not finish" in n for n in notes)

    glob = [str(p) for p in sorted((tmp_path / "runs").iterdir())]
    result = CliRunner().invoke(main, ["compare", *glob])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "stub" in result.output
    dash = CliRunner().invoke(main, ["dashboard", str(tmp_path / "runs"), "-o",
                                     str(tmp_path / "d.html")])
    assert dash.exit_code == 0, dash.output
    assert (tmp_path / "d.html").is_file() and "note: skipped" in dash.output


@pytest.mark.slow
def test_compare_rows_carry_their_run_directory(tmp_path, monkeypatch):
    from effective_depth.store.compare import compare_runs

    a = _run(tmp_path / "a").path
    b = _run(tmp_path / "b", seed=1).path
    comparison = compare_runs([a, b], n_boot=10)
    assert any(r.get("ratio") is not None for r in comparison["scale"])
    assert {r["run"] for r in comparison["scale"]} == {str(a), str(b)}
    monkeypatch.chdir(tmp_path)  # short run directories: the printed cells are not cut
    result = CliRunner().invoke(main, ["compare", "a", "b", "--n-boot", "10"])
    assert result.exit_code == 0, result.output
    # one model in both runs: the printed scale table has a column per run, headed by the run
    # directory its estimates come from, and one row per estimator
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if "Scale: effective-depth ratio" in line)
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("└"))
    header = [[c.strip() for c in line.split("┃")[1:-1]] for line in lines[start:end]
              if line.startswith("┃")]
    runs = [" ".join(h[k] for h in header) for k in range(1, len(header[0]))]
    assert [r.split()[-1] for r in runs] == ["a", "b"]
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in lines[start:end]
            if line.startswith("│")]
    estimators = [row[0] for row in rows]
    assert sorted(estimators) == sorted({r["estimator"] for r in comparison["scale"]})
    # each cell is its run's entry: a reason footnote where the scale row has no ratio
    by_run = {(Path(r["run"]).name, r["estimator"]): r for r in comparison["scale"]}
    for row in rows:
        for name, cell in zip(("a", "b"), row[1:]):
            entry = by_run[(name, row[0])]
            assert cell.startswith("—") == (entry.get("ratio") is None), (name, row[0], cell)


def test_a_failed_load_leaves_no_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["run", "-m", "nobody/no-such-model-xyz", "-t", "addition"])
    assert result.exit_code == 1 and "could not fetch model" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_results_json_holding_a_list_is_a_results_error(tmp_path):
    path = _run(tmp_path / "run", metrics=("logit_lens",)).path
    (path / "results.json").write_text("[1, 2]")
    with pytest.raises(ResultsError, match="holds a JSON list"):
        load_run(path)
    for args in (["compare", str(path)], ["dashboard", str(path), "-o", str(tmp_path / "x.html")]):
        result = CliRunner().invoke(main, args)
        assert "Traceback" not in result.output and "holds a JSON list" in result.output
    with pytest.raises(ResultsError, match="not a results mapping"):
        _run(path, metrics=("logit_lens",))


# --- 7. defaults that fit the model -------------------------------------------------------------

@pytest.mark.parametrize("length,expected", [
    (13, (3, 2, 1)),    # the zoo's prompts: evenly spread cuts
    (9, (2, 1, 1)),
    (37, (8, 8, 4)),    # long enough for the papers' rule with 4 cuts
    (300, (8, 8, 4)),
])
def test_cut_rule_fits_the_prompt_and_keeps_methods_for_long_prompts(length, expected):
    assert cut_rule(length, 4) == expected
    cuts = draw_cuts(length, 4, "0:0")
    assert len(cuts) == min(4, len(range(expected[0], length - expected[2], expected[1])))
    assert all(1 < t < length for t in cuts)
    assert cut_rule(length, 4, start=4) == (4, 8, 4)  # explicit values are used as given


@pytest.mark.slow
def test_default_run_fits_the_default_model(tmp_path):
    res = _run(tmp_path / "run", metrics=("logit_lens", "skip_effects"), n_examples=8)
    inputs = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert all(len(e["cuts"]) == 4 for e in inputs["examples"])  # every prompt has its 4 cuts
    assert res.results["metrics"]["logit_lens"]["meta"]["k"] == 1  # V = 24: top-5 is at chance
    assert not [w for w in res.results["warnings"] if w["code"] in ("overlap_at_chance", "few_cuts")]
    # a shorter task on the same model still has cuts
    two = _run(tmp_path / "two", metrics=("skip_effects",), task="addition",
               task_params={"digits": 2}, n_examples=4)
    assert two.results["completed"] == ["skip_effects"]


@pytest.mark.slow
def test_chance_level_and_missing_intervals_are_warned(tmp_path):
    res = _run(tmp_path / "run", metrics=("logit_lens",), n_boot=0, **{"logit_lens.k": 5}, n_examples=4)
    codes = {w["code"] for w in res.results["warnings"]}
    assert {"overlap_at_chance", "no_bootstrap", "few_prompts"} <= codes
    assert any("chance overlap" in n for n in res.results["depth"]["ed_overlap"]["notes"])
    out = CliRunner().invoke(main, ["run", "-m", ZOO, "--metrics", "logit_lens", "-o",
                                    str(tmp_path / "run"), "-q", "--no-dashboard",
                                    "--set", "logit_lens.k=5", "--n-boot", "0", "-n", "4",
                                    *(a for k, v in FAST.items() if "." in k
                                      for a in ("--set", f"{k}={v}"))])
    assert out.exit_code == 0, out.output
    assert "chance overlap" in out.output and "no confidence intervals" in out.output


def test_few_cuts_warning_counts_prompts_without_a_cut():
    from effective_depth.metrics.skip_effects import SkipEffects

    P, L = 4, 2
    skips = SkipEffects(torch.zeros(P, L, L), torch.zeros(P, L, L), torch.rand(P, L),
                        torch.rand(P, L), torch.ones(P, L), [[3], [], [], []],
                        meta={"mode": "future", "n_layers": L, "n_prompts": P})
    est = {"ed_skip": Estimate("ed_skip", L, 1)}
    warnings = reliability_warnings({"skip_effects": skips}, est, n_boot=10)
    assert [w["code"] for w in warnings] == ["few_cuts", "few_prompts"]
    assert "only 1 of 4 prompts" in est["ed_skip"].notes[0]


# --- 8. the reference notebook's rules ----------------------------------------------------------

def _lens(kl, overlap):
    from effective_depth.metrics.logit_lens import LogitLensResult

    # one prompt, one token: the sums are the curves; the last tap is h_L (not searched)
    return LogitLensResult(torch.tensor([kl + [0.0]]), torch.tensor([overlap + [1.0]]), torch.ones(1),
                     meta={"n_layers": len(kl), "k": 1, "n_prompts": 1})


def test_reference_rules_reproduce_the_notebook():
    # only the last block input (tap 3 of 0..3) meets both rules
    lens = _lens([4.0, 3.0, 2.5, 1.0], [0.0, 0.1, 0.2, 0.9])
    toolkit = estimate_all({"logit_lens": lens}, n_boot=0)
    reference = estimate_all({"logit_lens": lens}, n_boot=0, rules="reference")
    assert toolkit["ed_kl"].layer == 3 and toolkit["ed_kl"].ratio == 1.0
    assert toolkit["ed_overlap"].layer == 3
    for name in ("ed_kl", "ed_overlap"):
        assert reference[name].layer == -1 and reference[name].ratio == 0.0
        assert "as the notebook reports" in reference[name].notes[0]
        assert reference[name].params["rules"] == "reference"
    # an earlier crossing: both rule sets agree
    early = _lens([4.0, 1.0, 0.5, 0.2], [0.0, 0.5, 0.8, 0.9])
    a = estimate_all({"logit_lens": early}, n_boot=0)
    b = estimate_all({"logit_lens": early}, n_boot=0, rules="reference")
    assert (a["ed_kl"].layer, a["ed_overlap"].layer) == (b["ed_kl"].layer, b["ed_overlap"].layer) == (1, 1)


# --- crashes and unclear errors -----------------------------------------------------------------

@pytest.mark.slow
def test_a_txt_prompts_file_runs_and_skips_what_needs_answers(tmp_path):
    data = tmp_path / "p.txt"
    data.write_text("12+34=\n50+25=\n")
    res = _run(tmp_path / "run", task="prompts", task_params={"path": str(data)},
               metrics=StudyConfig().metrics)
    assert res.results["completed"] == ["contributions", "logit_lens", "skip_effects"]
    assert res.results["settings"]["skipped_metrics"] == ["behaviour", "erasure",
                                                           "integrated_gradients", "tuned_lens"]
    assert any(w["code"] == "no_answers" for w in res.results["warnings"])
    with pytest.raises(ConfigError, match="behaviour need answers"):
        _run(tmp_path / "run2", task="prompts", task_params={"path": str(data)},
             metrics=("behaviour",))


def test_an_example_longer_than_the_context_is_an_error(tmp_path):
    data = _prompts(tmp_path / "long.jsonl", [("12+34=", "46"), ("1+" * 40 + "1=", "41")])
    with pytest.raises(ConfigError, match="example 2 is 85 tokens long .* reads at most 64"):
        _run(tmp_path / "run", task="prompts", task_params={"path": str(data)})
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting,message", [
    ("n_examples=abc", "n_examples must be an integer, got 'abc'"),
    ("n_boot=1.5", "n_boot must be an integer, got 1.5"),
    ("logit_lens.k=2.5", "logit_lens.k must be int|none, got '2.5'"),
    ("batch_size=true", "batch_size must be an integer, got True"),
    ("ci_level=high", "ci_level must be a number"),
    ("rules=paper", "rules must be one of toolkit, reference"),
])
def test_every_option_is_type_checked_before_anything_runs(setting, message, tmp_path):
    result = CliRunner().invoke(main, ["run", "-o", str(tmp_path / "run"), "--set", setting])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_negative_seed_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["run", "-o", str(tmp_path / "run"), "--seed", "-1"])
    assert result.exit_code != 0 and "seed must be a non-negative integer" in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_model_without_a_task_names_the_model_first():
    result = CliRunner().invoke(main, ["run", "--model", "gpt9"])
    assert result.exit_code != 0
    assert "unknown model 'gpt9'" in result.output and "did you mean" in result.output


def test_grid_cells_are_validated_before_the_first_runs(tmp_path):
    from effective_depth.study.grid import grid_from_dict

    with pytest.raises(ConfigError, match="levels must map one parameter to a list"):
        grid_from_dict({"out": str(tmp_path / "g"), "models": [ZOO],
                        "tasks": [{"name": "addition", "levels": [0, 1]}]})
    with pytest.raises(ConfigError, match="grid cell 3 of 3 .*digits.*must be in 1..20"):
        grid_from_dict({"out": str(tmp_path / "g"), "models": [ZOO],
                        "tasks": [{"name": "addition", "levels": {"digits": [1, 2, 0]}}]})
    with pytest.raises(ConfigError, match="grid cell 2 of 2 .*unknown zoo model"):
        grid_from_dict({"out": str(tmp_path / "g"), "models": [ZOO, "zoo/add-5l"],
                        "tasks": ["addition"]})
    assert not (tmp_path / "g").exists()


@pytest.mark.slow
def test_a_failing_grid_cell_is_reported_and_the_rest_compared(tmp_path):
    from effective_depth.study.grid import grid_from_dict, run_grid

    good = _prompts(tmp_path / "good.jsonl", [("12+34=", "46"), ("50+25=", "75")])
    grid = grid_from_dict({
        "out": str(tmp_path / "g"), "models": [ZOO, "zoo/add-4l"],
        "base": {"metrics": ["logit_lens"], "n_boot": 10},
        "tasks": [{"name": "prompts", "params": {"path": str(good)}},
                  {"name": "prompts", "params": {"path": str(tmp_path / "missing.jsonl")}}],
    })
    seen = []
    summaries = run_grid(grid, progress=False, on_cell=seen.append)
    assert len(summaries) == len(seen) == 4
    failed = [s for s in summaries if "error" in s]
    assert len(failed) == 2 and all("does not exist" in s["error"] for s in failed)
    assert all("\n" not in s["error"] for s in failed)
    comparison = json.loads((tmp_path / "g" / "comparison" / "comparison.json").read_text())
    assert len(comparison["runs"]) == 2


@pytest.mark.slow
def test_erasure_progress_bar_reaches_its_total(tmp_path, monkeypatch):
    # the module (effective_depth.metrics.erasure is the function, as for every measurement)
    erasure_mod = importlib.import_module("effective_depth.metrics.erasure")
    from effective_depth import load_model
    from effective_depth.engine import encode_batch
    from effective_depth.tasks import get_task

    bars = []

    class Bar:
        def __init__(self, total, **kw):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def close(self):
            pass

    monkeypatch.setattr(erasure_mod, "tqdm", Bar)
    model = load_model(ZOO)
    batch = encode_batch(model.tokenizer, get_task("addition", digits=3).examples(2))
    erasure_mod.erasure(model, batch, reference=batch, progress=True)
    assert bars and bars[0].n == bars[0].total


@pytest.mark.slow
def test_config_records_the_installed_transformer_lens_version(tmp_path):
    path = _run(tmp_path / "run", metrics=("logit_lens",)).path
    env = json.loads((path / "config.json").read_text())["environment"]
    assert env["transformer_lens"] == version("transformer-lens")


def test_no_possible_cut_is_an_error_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="no example is long enough for future skip effects"):
        _run(tmp_path / "run", metrics=("skip_effects",), **{"skip_effects.cut_start": 60})
    assert not (tmp_path / "run").exists()
