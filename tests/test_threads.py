"""``--threads N`` on run, grid and plan sets torch's threads and is recorded in config.json's
environment; without it torch's own choice is recorded as such."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from effective_depth.cli import main
from effective_depth.models import devices


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    saved = dict(devices._requested)
    yield
    torch.set_num_threads(before)
    devices._requested.update(saved)


def _run(tmp_path, *extra):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "run", "--model", "zoo/add-2l", "--task", "addition", "--param", "digits=1", "-n", "2",
        "--n-boot", "0", "--metrics", "contributions", "--out", str(out), "--quiet",
        "--no-dashboard", *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "config.json").read_text())["environment"]


@pytest.mark.slow
def test_run_threads_are_set_and_recorded(tmp_path):
    torch.set_num_threads(2)
    env = _run(tmp_path, "--threads", "1")
    assert torch.get_num_threads() == 1
    assert env["torch_threads"] == 1 and env["threads_source"] == "--threads 1"


def test_without_threads_torch_default_is_recorded(tmp_path):
    env = _run(tmp_path)
    assert env["threads_source"] == "torch's default"
    assert env["torch_threads"] == torch.get_num_threads()


def test_bad_threads_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["run", "--threads", "0", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "--threads" in result.output
    assert not (tmp_path / "x").exists()
    with pytest.raises(Exception, match="threads must be a whole number >= 1"):
        devices.set_threads(0)


@pytest.mark.slow
def test_sweep_and_plan_take_threads(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({
        "out": str(tmp_path / "grid"), "compare": False,
        "base": {"n_examples": 2, "metrics": ["contributions"], "n_boot": 0},
        "models": ["zoo/add-2l"], "tasks": [{"name": "addition", "params": {"digits": 1}}]}))
    torch.set_num_threads(2)
    result = CliRunner().invoke(main, ["grid", "--config", str(grid), "--threads", "1"])
    assert result.exit_code == 0, result.output
    (config,) = (tmp_path / "grid").rglob("config.json")
    env = json.loads(config.read_text())["environment"]
    assert env["torch_threads"] == 1 and env["threads_source"] == "--threads 1"
    torch.set_num_threads(2)
    plan = CliRunner().invoke(main, ["plan", "--model", "zoo/add-2l", "-n", "2", "--metrics",
                                     "contributions", "--threads", "1"])
    assert plan.exit_code == 0, plan.output
    assert torch.get_num_threads() == 1
