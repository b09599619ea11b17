"""The shared cache of fitted objects (store/fitted.py): another run of the same model, training
data and fit settings reads the tuned lens instead of training it; another fingerprint, or a
broken file, trains it again."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from effective_depth.store.fitted import shared_fit_dir
from effective_depth.study import StudyConfig, run_study


def _study(tmp_path, out, **kw):
    base = {"model": "zoo/add-2l", "metrics": ("logit_lens", "tuned_lens"), "n_examples": 6,
            "n_boot": 20, "tuned_lens.steps": 15, "tuned_lens.examples": 64, **kw}
    return run_study(StudyConfig.from_dict(base), tmp_path / out, progress=False, dashboard=False)


def _plan(**kw):
    from effective_depth.study.planner import plan_study

    base = {"model": "zoo/add-2l", "metrics": ("logit_lens", "tuned_lens"), "n_examples": 6,
            "n_boot": 20, "tuned_lens.steps": 15, "tuned_lens.examples": 64, **kw}
    plan = plan_study(StudyConfig.from_dict(base), calibration=False)
    return next(m for m in plan.measurements if m.name == "tuned_lens")


def _lens(res):
    return res.results["metrics"]["tuned_lens"]["meta"]["lens"]


def test_the_shared_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("EFFECTIVE_DEPTH_FIT_CACHE", "off")
    assert shared_fit_dir() is None
    monkeypatch.setenv("EFFECTIVE_DEPTH_FIT_CACHE", str(tmp_path / "fits"))
    assert shared_fit_dir() == tmp_path / "fits"
    monkeypatch.delenv("EFFECTIVE_DEPTH_FIT_CACHE")
    monkeypatch.setenv("EFFECTIVE_DEPTH_CACHE", str(tmp_path / "cache"))
    assert shared_fit_dir() == tmp_path / "cache" / "fitted"


@pytest.mark.slow
def test_another_run_reads_the_fit_and_another_fingerprint_trains(monkeypatch, tmp_path):
    monkeypatch.setenv("EFFECTIVE_DEPTH_FIT_CACHE", str(tmp_path / "fits"))
    first = _study(tmp_path, "a")
    assert _lens(first)["reused"] is False
    shared = sorted(p.name for p in (tmp_path / "fits").iterdir())
    assert len(shared) == 2 and shared[0].startswith("tuned_lens-")
    # the planner finds the stored fit and prices the tuned lens without its training
    planned = _plan(n_examples=4)
    assert planned.note.startswith("no training") and planned.lens_rows < _plan(
        **{"tuned_lens.steps": 10}).lens_rows / 10
    # another run directory, other analysed prompts (positions=query reads the same fit)
    second = _study(tmp_path, "b", n_examples=4)
    assert _lens(second)["reused"] is True
    a, b = (load_file(str(r.path / "fitted" / "tuned_lens.safetensors")) for r in (first, second))
    assert all((a[k] == b[k]).all() for k in a)  # copied into the second run, bit for bit
    assert (json.loads((second.path / "fitted" / "tuned_lens.json").read_text())["fingerprint"]
            == _lens(first)["fingerprint"])
    assert second.results["metrics"]["tuned_lens"]["meta"]["heldout"]["n_prompts"] == 4
    # other fit settings: trained, and kept beside the first
    third = _study(tmp_path, "c", **{"tuned_lens.steps": 10})
    assert _lens(third)["reused"] is False and len(list((tmp_path / "fits").iterdir())) == 4
    # a broken shared file is trained again, never trusted
    for f in (tmp_path / "fits").glob("*.safetensors"):
        f.write_bytes(b"truncated")
    fourth = _study(tmp_path, "d", n_examples=4)
    assert _lens(fourth)["reused"] is False
