"""The typed run record (effective_depth.store.record): results.json, config.json and inputs.json
read by attribute, written back to the same bytes; unknown keys kept; malformed files named."""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from effective_depth.errors import ResultsError
from effective_depth.store.record import (
    EstimateEntry,
    ExampleEntry,
    PerPromptEntry,
    ResourceEntry,
    RunConfig,
    RunInputs,
    RunRecord,
    ScoreEntry,
    StudyFields,
    WarningEntry,
)
from effective_depth.store.results import RunDir, dumps, load_run
from effective_depth.study.run import StudyConfig, run_study

#: run directories written by earlier versions of main (see tests/data/run_dirs/README.md)
RUN_DIRS = Path(__file__).parent / "data" / "run_dirs"
FIXTURES = sorted(p.name for p in RUN_DIRS.iterdir() if p.is_dir())
FILES = {"results.json": RunRecord, "config.json": RunConfig, "inputs.json": RunInputs}


def _round_trip(path: Path) -> list[str]:
    """Every JSON file of ``path`` read as its record and written back: the files that differ."""
    differ = []
    for name, cls in FILES.items():
        file = path / name
        if not file.is_file():
            continue
        text = file.read_text()
        data = json.loads(text)
        back = cls.from_json(data, str(file)).to_json()
        if back != data or list(back) != list(data) or dumps(back) != text:
            differ.append(name)
    return differ


def test_the_committed_run_directories_are_there():
    assert FIXTURES == ["v1_flat_options", "v1_interrupted", "v1_resources"]


@pytest.mark.parametrize("name", FIXTURES)
def test_committed_run_directories_round_trip_byte_for_byte(name):
    assert _round_trip(RUN_DIRS / name) == []


def test_a_run_of_today_reads_by_attribute():
    run = load_run(RUN_DIRS / "v1_resources")
    rec, raw = run.record, run.results
    assert rec.format == 1 and rec.status == "complete" and rec.complete
    assert rec.completed == ("contributions", "logit_lens", "tuned_lens", "skip_effects",
                             "behaviour", "erasure", "integrated_gradients")
    assert rec.model.n_layers == raw["model"]["n_layers"] == 3
    assert rec.model.d_vocab == raw["model"]["d_vocab"] and rec.model.d_vocab > 0
    assert rec.task.name == "multistep" and rec.task.params["steps"] == 4
    assert rec.task.difficulty == 4 == run.difficulty and rec.task.difficulty_source == "steps"
    assert rec.task.n_examples == 4 == len(run.inputs_record.examples)
    assert isinstance(rec.resources["contributions"], ResourceEntry)
    assert rec.resources["contributions"].rss_kind == raw["resources"]["contributions"]["rss_kind"]
    assert rec.timing["skip_effects"] == raw["timing"]["skip_effects"]
    overlap = rec.depth["ed_overlap"]
    assert isinstance(overlap, EstimateEntry) and overlap.kind == "estimator"
    assert overlap.layer == 2 and overlap.ratio == 1.0 and overlap.ci == (2 / 3, 1.0)
    assert overlap.threshold == raw["depth"]["ed_overlap"]["params"]["threshold"]
    kl = rec.depth["ed_kl"]
    assert not kl.defined and kl.ci is None and kl.ratio is None
    assert kl.reason == "the KL never falls below 0.5 x its maximum"
    score = rec.depth["depth_score"]
    assert isinstance(score, ScoreEntry) and score.kind == "score"
    assert score.value == raw["depth"]["depth_score"]["value"] and 0 < score.value < 2
    assert score.ci == tuple(raw["depth"]["depth_score"]["ci"]) and score.n_layers == 3
    assert set(rec.estimates()) | set(rec.scores()) == set(rec.depth)
    assert "depth_score" not in rec.estimates()
    pp = rec.per_prompt["ed_kl"]
    assert isinstance(pp, PerPromptEntry) and list(pp.layers) == raw["per_prompt"]["ed_kl"]["layers"]
    assert all(isinstance(w, WarningEntry) and w.message for w in rec.warnings)
    assert rec.accuracy == raw["accuracy"]
    # the measurement's own keys stay plain JSON, extra keys (cuts) kept
    assert rec.metrics["skip_effects"].extra["cuts"] == raw["metrics"]["skip_effects"]["cuts"]
    ex = run.inputs_record.examples[0]
    assert isinstance(ex, ExampleEntry) and ex.prompt == run.inputs["examples"][0]["prompt"]
    assert list(ex.tokens) == run.inputs["examples"][0]["tokens"]
    cfg = run.config_record.config
    assert cfg.n_boot == 40 and cfg.metrics == rec.completed
    assert cfg.options_of("integrated_gradients")["steps"] == 8
    # the estimates of the record and those rebuilt as Estimate objects agree
    assert {k: e.ratio for k, e in run.estimates().items()} == \
        {k: e.ratio for k, e in rec.estimates().items()}


def test_a_run_of_the_flat_config_format_reads_nested():
    run = load_run(RUN_DIRS / "v1_flat_options")
    raw = json.loads((RUN_DIRS / "v1_flat_options" / "config.json").read_text())
    assert raw["config"]["skip_mode"] == "future" and "options" not in raw["config"]
    cfg = run.config_record.config
    assert cfg.options_of("skip_effects")["mode"] == raw["config"]["skip_mode"]
    assert cfg.options_of("integrated_gradients")["steps"] == raw["config"]["ig_steps"]
    assert "skip_mode" not in cfg.extra and "ig_steps" not in cfg.extra
    assert run.record.resources == {}  # written before resources were recorded
    assert "resources" not in run.record.to_json()


def test_an_interrupted_run_reads_with_what_it_has():
    run = load_run(RUN_DIRS / "v1_interrupted")
    rec = run.record
    assert rec.status is None and not rec.complete and not run.complete
    assert rec.depth == {} and rec.warnings == () and rec.accuracy is None
    assert rec.completed and set(rec.completed) == set(rec.metrics)
    assert rec.model.n_layers == 30 and rec.model.name == "real/smollm2-135m-instruct"
    assert run.inputs_record.examples == ()  # the fixture keeps no inputs.json
    reason = run.incomplete_reason()
    assert reason is not None and "did not finish" in reason
    stand_in = run.estimate_entry("ed_kl")
    assert isinstance(stand_in, EstimateEntry) and stand_in.layer is None
    assert stand_in.to_json() == {"layer": None, "ratio": None, "ci": None,
                                  "reason": stand_in.reason}


@pytest.mark.slow
def test_a_study_written_now_round_trips_and_returns_its_record(tmp_path):
    cfg = StudyConfig(model="zoo/add-2l", metrics=("contributions", "logit_lens", "skip_effects",
                                                   "behaviour"),
                      n_examples=4, n_boot=20)
    res = run_study(cfg, tmp_path / "run", progress=False, dashboard=False)
    assert _round_trip(res.path) == []
    text = (res.path / "results.json").read_text()
    assert res.record == RunRecord.from_json(json.loads(text))
    assert dumps(res.record.to_json()) == text  # what run_study returns is what it wrote
    assert res.record.model.n_layers == 2 and res.record.model.name == "zoo/add-2l"
    assert res.record.complete and set(res.record.resources) == set(cfg.metrics)
    run = load_run(res.path)
    assert run.record == res.record
    # a resumed run rewrites the same file
    again = run_study(cfg, tmp_path / "run", progress=False, dashboard=False)
    assert again.computed == [] and again.record.metrics == res.record.metrics


# --- unknown and absent keys ------------------------------------------------------------------

def test_unknown_keys_are_kept_and_written_back_in_place():
    data = json.loads((RUN_DIRS / "v1_resources" / "results.json").read_text())
    data = {"new_first": 1, **data, "new_last": {"a": [1, 2]}}
    data["model"]["new_field"] = "x"
    data["depth"]["ed_kl"]["new_field"] = [1]
    data["warnings"].append({"code": "c", "message": "m", "new": True})
    rec = RunRecord.from_json(copy.deepcopy(data))
    assert rec.extra == {"new_first": 1, "new_last": {"a": [1, 2]}}
    assert rec.model.extra == {"new_field": "x"} and rec.depth["ed_kl"].extra == {"new_field": [1]}
    assert rec.warnings[-1].extra == {"new": True}
    back = rec.to_json()
    assert back == data and list(back) == list(data) and dumps(back) == dumps(data)


def test_absent_keys_read_as_defaults_and_stay_absent():
    rec = RunRecord.from_json({})
    assert rec.to_json() == {}
    assert rec.model.name is None and rec.completed == () and rec.depth == {}
    assert rec.status is None and not rec.complete
    partial = {"completed": [], "format": 1}
    assert RunRecord.from_json(partial).to_json() == partial
    # a null is not an absence: it is written back as null
    assert RunRecord.from_json({"accuracy": None}).to_json() == {"accuracy": None}
    cfg = RunConfig.from_json({"hash": "x", "config": {"model": "m"}})
    assert cfg.config.n_boot == 1000 and cfg.config.metrics is None
    assert cfg.to_json() == {"hash": "x", "config": {"model": "m"}}


def test_records_built_in_code_write_what_was_set():
    rec = RunRecord(completed=("a",), status="complete",
                    depth={"ed_x": EstimateEntry(layer=None, reason="why")})
    assert rec.to_json() == {"completed": ["a"], "depth": {"ed_x": {"layer": None,
                                                                    "reason": "why"}},
                             "status": "complete"}
    changed = RunRecord.from_json({"completed": [], "format": 1}).replace(status="complete")
    assert changed.to_json() == {"completed": [], "format": 1, "status": "complete"}


def test_study_fields_mirror_study_config():
    """config.json's typed fields are StudyConfig's, with its defaults (but model, task and
    metrics: None when the file does not say)."""
    ours = {f.name: f for f in dataclasses.fields(StudyFields) if f.name not in ("extra", "_keys")}
    theirs = {f.name: f for f in dataclasses.fields(StudyConfig)}
    assert set(ours) == set(theirs)
    default = StudyConfig().to_dict()
    fresh = StudyFields()
    for name in ours:
        if name in ("model", "task", "metrics", "options"):
            continue
        assert getattr(fresh, name) == default[name], name


# --- typos and malformed files ----------------------------------------------------------------

def test_a_misspelt_attribute_is_an_error_not_none():
    rec = load_run(RUN_DIRS / "v1_resources").record
    with pytest.raises(AttributeError):
        rec.model.n_layer  # noqa: B018
    with pytest.raises(AttributeError):
        rec.depth["ed_kl"].ration  # noqa: B018
    with pytest.raises(AttributeError):
        rec.statuss  # noqa: B018
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.status = "x"  # type: ignore[misc]


@pytest.mark.parametrize("change, key", [
    (lambda d: d["depth"]["ed_kl"].update(ci="wide"), "depth.ed_kl.ci"),
    (lambda d: d["depth"]["ed_kl"].pop("layer"), "depth.ed_kl.layer"),
    (lambda d: d.update(completed="contributions"), "completed"),
    (lambda d: d["model"].update(n_layers="2"), "model.n_layers"),
    (lambda d: d["warnings"].append({"code": "x"}), "warnings[9].message"),
    (lambda d: d["per_prompt"]["ed_kl"].update(layers=[0, "x", 1, 1]), "per_prompt.ed_kl.layers[1]"),
    (lambda d: d["resources"]["logit_lens"].update(seconds=[1]), "resources.logit_lens.seconds"),
    (lambda d: d.update(depth=[1, 2]), "depth"),
])
def test_a_malformed_results_json_names_the_file_and_the_key(tmp_path, change, key):
    run_dir = tmp_path / "run"
    shutil.copytree(RUN_DIRS / "v1_resources", run_dir)
    data = json.loads((run_dir / "results.json").read_text())
    assert len(data["warnings"]) == 9
    change(data)
    (run_dir / "results.json").write_text(json.dumps(data))
    with pytest.raises(ResultsError) as err:
        load_run(run_dir)
    message = str(err.value)
    assert str(run_dir / "results.json") in message
    assert re.search(rf"(^|\s){re.escape(key)}(\s|$)", message), message


def test_a_malformed_config_json_names_the_file_and_the_key(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(RUN_DIRS / "v1_resources", run_dir)
    data = json.loads((run_dir / "config.json").read_text())
    data["config"]["n_boot"] = "many"
    (run_dir / "config.json").write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=r"config\.json is malformed: config\.n_boot holds a "
                                           r"string, expected an integer"):
        load_run(run_dir)


def test_the_writer_checks_what_it_writes(tmp_path):
    rd = RunDir(tmp_path)
    good = json.loads((RUN_DIRS / "v1_resources" / "results.json").read_text())
    record = rd.write_results(good)
    assert (tmp_path / "results.json").read_text() == \
        (RUN_DIRS / "v1_resources" / "results.json").read_text()
    assert record.model.n_layers == 3
    bad = {**good, "timing": {"contributions": "slow"}}
    with pytest.raises(ResultsError, match="timing.contributions holds a string"):
        rd.write_results(bad)
    assert json.loads((tmp_path / "results.json").read_text()) == good  # nothing written


def _raw_reads(tree: ast.AST) -> list[int]:
    """Lines of ``X.results.get(...)``, ``X.config.get(...)``, ``X.inputs.get(...)`` (but a
    class's own ``self.config``)."""
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get" and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr in ("results", "config", "inputs")
            and not (isinstance(node.func.value.value, ast.Name)
                     and node.func.value.value.id == "self")]


def test_consumers_read_the_run_files_by_attribute():
    """No module reads a run's raw mappings with ``.get(...)`` (``run.results.get("depth")``,
    ``run.config.get("config")``): they read the records, where a typo is an error."""
    package = Path(__file__).parent.parent / "effective_depth"
    found = [f"{path.relative_to(package)}:{line}" for path in sorted(package.rglob("*.py"))
             for line in _raw_reads(ast.parse(path.read_text()))]
    assert found == []
    assert _raw_reads(ast.parse('x = 1\ny = self.run.results.get("depth", {})')) == [2]
    assert _raw_reads(ast.parse('y = run.config.get("config")')) == [1]
    assert _raw_reads(ast.parse('y = self.inputs.get("cuts")')) == []


def test_a_run_of_another_format_version_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(RUN_DIRS / "v1_resources", run_dir)
    data = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps({**data, "format": 2}))
    with pytest.raises(ResultsError, match=r"results\.json was written in format version 2; "
                                           r"this version of effective_depth reads version 1"):
        load_run(run_dir)
    no_version = {k: v for k, v in data.items() if k != "format"}  # before the key existed
    assert RunRecord.from_json(no_version).format is None


def test_a_run_without_results_is_labelled_by_its_config():
    """The label's fallback is config.json's model (the old dict read asked a key that
    config.json never has, and always printed "?")."""
    from effective_depth.store.results import Run

    stub = Run(Path("stub"), {"hash": "x", "config": {"model": "zoo/add-2l"}}, {}, {})
    assert stub.label == "zoo/add-2l | ?" and stub.completed == [] and not stub.complete
    named = Run(Path("r"), {"config": {"model": "a"}}, {}, {"model": {"name": "b"},
                                                             "task": {"name": "t",
                                                                      "params": {"seed": 0,
                                                                                 "digits": 3}}})
    assert named.label == "b | t(digits=3)"
    named.results = {"model": {"name": "c"}}  # assigning a mapping remakes its record
    assert named.record.model.name == "c" and named.label == "c | ?"
